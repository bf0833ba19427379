"""Roles: one markdown file each, YAML front matter + the role's prompt.

Looked up in `<colony>/roles/<name>.md` first (per-repo overrides, may be committed), then in the
roles shipped with the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from harness.errors import UsageError


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    prompt: str


def _parse(text: str, source: str) -> Role:
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise UsageError(f"{source}: a role file starts with '---' YAML front matter, then '---', then the prompt")
    head, body = text[4:].split("\n---\n", 1)
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{source}: front matter is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise UsageError(f"{source}: front matter needs `name: <role>`")
    return Role(meta["name"], str(meta.get("description", "")), body.strip())


def shipped() -> list[str]:
    return sorted(p.name[:-3] for p in resources.files("harness").joinpath("roles").iterdir()
                  if p.name.endswith(".md"))


def load_role(name: str, home: Path) -> Role:
    override = home / "roles" / f"{name}.md"
    if override.is_file():
        return _parse(override.read_text(), str(override))
    packaged = resources.files("harness").joinpath("roles", f"{name}.md")
    if packaged.is_file():
        return _parse(packaged.read_text(), f"role {name}")
    raise UsageError(f"unknown role {name!r}: use one of {', '.join(shipped())} or add {override}")


def known(home: Path) -> list[str]:
    """Every role name this colony has: the shipped ones and its overrides in ``<home>/roles/*.md``."""
    return sorted({*shipped(), *(p.name[:-3] for p in (home / "roles").glob("*.md"))})
