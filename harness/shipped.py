"""Where the shipped roles and prompt templates are: ``roles/`` and ``prompts/`` at the top of the
repository in a source checkout (or an editable install), ``harness/_shipped/`` in a wheel.

pyproject.toml maps the two folders into the package at build time, so the wheel needs no symlink
and the source tree keeps them where a user looks for them.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("roles", "prompts")


def folder(kind: str) -> Path:
    """The shipped folder of ``kind`` (roles or prompts)."""
    if kind not in KINDS:
        raise ValueError(f"no shipped folder {kind!r}")
    package = Path(__file__).resolve().parent
    built = package / "_shipped" / kind  # an installed wheel
    if built.is_dir():
        return built
    # A source checkout: the folder beside harness/, recognised by the pyproject.toml there, so a
    # stray `roles/` next to some site-packages can never be taken for ours.
    if (package.parent / "pyproject.toml").is_file() and (package.parent / kind).is_dir():
        return package.parent / kind
    raise FileNotFoundError(f"the shipped {kind}/ folder is missing from {package} (a broken install: reinstall "
                            "stigmergy-harness)")
