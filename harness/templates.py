"""Prompt templates (jinja2): `<colony>/prompts/<name>.j2` overrides the shipped one (top-level
`prompts/` of the harness's repository, see harness/shipped.py)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from harness import shipped
from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.roles import Role


class Templates:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(home / "prompts")),
                                        jinja2.FileSystemLoader(str(shipped.folder("prompts")))]),
            undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not silently empty
            keep_trailing_newline=True,
            autoescape=False,
        )

    def source(self, name: str) -> Path:
        """The file template ``name`` is read from: the colony's override, else the shipped one."""
        override = self.home / "prompts" / f"{name}.j2"
        return override if override.is_file() else shipped.folder("prompts") / f"{name}.j2"

    def render(self, name: str, **context: Any) -> str:
        """Render ``name``; a broken template raises UsageError naming its file and line."""
        try:
            return self.env.get_template(f"{name}.j2").render(**context)
        except jinja2.TemplateSyntaxError as e:
            where = f"{e.filename or self.source(name)}:{e.lineno}"
            raise UsageError(f"{where}: template syntax error: {(e.message or '').rstrip('.')}. Fix the template, or delete the "
                             f"override to use the shipped one") from None
        except jinja2.TemplateError as e:  # UndefinedError and friends, raised while rendering
            raise UsageError(f"{self._line(e, name)}: {e.message or type(e).__name__} (the variables a "
                             f"template may use are those of the shipped {name}.j2). Fix the template, or "
                             "delete the override to use the shipped one") from None

    def role_prompt(self, of: Role, **context: Any) -> str:
        """A role file's body rendered (jinja2, StrictUndefined, the system prompt's variables); an
        error in it raises UsageError naming the role file and line."""
        fix = f"Fix the prompt in {of.source}"
        try:
            return self.env.from_string(of.prompt).render(**context)
        except jinja2.TemplateSyntaxError as e:
            raise UsageError(f"{of.source}:{of.prompt_line + (e.lineno or 1) - 1}: template syntax error in the "
                             f"role's prompt: {(e.message or '').rstrip('.')}. {fix}") from None
        except jinja2.TemplateError as e:
            lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == "<template>"]
            line = of.prompt_line + (lines[-1] if lines and lines[-1] else 1) - 1
            raise UsageError(f"{of.source}:{line}: {e.message or type(e).__name__} in the role's prompt (it may "
                             f"use {', '.join(sorted(context))}). {fix}") from None

    def _line(self, e: Exception, name: str) -> str:
        # jinja2 rewrites the traceback so that template frames carry the template's file and line;
        # the innermost one is where it failed (in an {% include %}d template, that one's line).
        folders = {str(self.home / "prompts"), str(shipped.folder("prompts"))}
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if f.filename.endswith(".j2") and str(Path(f.filename).parent) in folders]
        return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else str(self.source(name))
