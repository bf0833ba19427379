"""Prompt templates (jinja2): `<colony>/prompts/<name>.j2` overrides the one shipped in the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2


class Prompts:
    def __init__(self, home: Path) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(home / "prompts")),
                                        jinja2.PackageLoader("harness", "prompts")]),
            undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not silently empty
            keep_trailing_newline=True,
            autoescape=False,
        )

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(f"{name}.j2").render(**context)
