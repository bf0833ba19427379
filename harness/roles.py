"""Roles: one markdown file each, YAML front matter + the role's prompt.

Looked up in `<colony>/roles/<name>.md` first (per-repo overrides, may be committed), then in the
roles shipped with the harness (`roles/` at the top of its repository, see harness/shipped.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import shipped as shipped_files
from harness.errors import UsageError


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    prompt: str
    source: Path  # the file it was read from


def _parse(text: str, source: Path) -> Role:
    fix = ("a role file starts with a line '---', YAML front matter (name:, description:), a line '---', "
           "then the prompt")
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise UsageError(f"{source}:1: no front matter: {fix}")
    head, body = text[4:].split("\n---\n", 1)
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 2}" if mark is not None else ""  # +1: 1-based, +1: the opening '---'
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{source}{line}: front matter is not valid YAML ({problem}): {fix}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise UsageError(f"{source}:2: front matter needs `name: <role>`: {fix}")
    return Role(meta["name"], str(meta.get("description", "")), body.strip(), source)


def shipped() -> list[str]:
    return sorted(p.name[:-3] for p in shipped_files.folder("roles").glob("*.md"))


def source(name: str, home: Path) -> Path | None:
    """The file role ``name`` is read from: the colony's override, else the shipped one (None: no such role)."""
    for path in (home / "roles" / f"{name}.md", shipped_files.folder("roles") / f"{name}.md"):
        if path.is_file():
            return path
    return None


def load_role(name: str, home: Path) -> Role:
    path = source(name, home)
    if path is None:
        raise UsageError(f"unknown role {name!r}: use one of {', '.join(known(home))} or add "
                         f"{home / 'roles' / (name + '.md')}")
    return _parse(path.read_text(encoding="utf-8"), path)


def known(home: Path) -> list[str]:
    """Every role name this colony has: the shipped ones and its overrides in ``<home>/roles/*.md``."""
    return sorted({*shipped(), *(p.name[:-3] for p in (home / "roles").glob("*.md"))})


def load_all(home: Path) -> list[Role]:
    """Every role, parsed: a bad file raises UsageError naming it and the line."""
    return [load_role(name, home) for name in known(home)]
