"""Roles: one markdown file each, YAML front matter + the role's prompt (a jinja2 body).

Looked up in `<colony>/roles/<name>.md` first (per-repo overrides, may be committed), then in the
roles shipped with the harness (`roles/` at the top of its repository, see harness/shipped.py).

    ---
    name: tester
    description: "Writes the tests that are missing."
    prefers:                     # what picking boosts for this role (pool.py): all optional
      kinds: [test]              #   task kinds
      titles: ["\\btests?\\b"]   #   regexes searched in the title (case-insensitive)
      paths: ["tests/**"]        #   globs matched against the task's inputs and outputs
    model: claude-haiku-4-5      # optional: this role's model instead of the colony's
    tools: [bash, str_replace_based_edit_tool, add_note]   # optional: the tools it may call
    max_steps: 40                # optional: its tool-loop step limit instead of the config's
    when_idle: |                 # optional: what it looks for when nothing is ready (sweeps)
      Find code that has no test ...
    ---
    You write tests. ...
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import shipped as shipped_files
from harness.errors import UsageError
from harness.tasks import Task
from harness.tools import ADD_NOTE, BASH, CREATE_TASK, EDIT, FINISH

TOOLS = (BASH, EDIT, CREATE_TASK, ADD_NOTE)  # finish is always allowed: an attempt must be able to end
ANY = "any"  # not a role: an agent that takes each task's role (agent_role, for_task)
FALLBACK = "coder"  # an `any` agent's role for a task that no role prefers
FIELDS = ("name", "description", "prefers", "model", "tools", "max_steps", "when_idle")
FIX = ("a role file starts with a line '---', YAML front matter (name:, description:, and optionally "
       "prefers:, model:, tools:, max_steps:, when_idle:), a line '---', then the prompt")


@dataclass(frozen=True)
class Prefers:
    """What a role is drawn to: a task suits it when any of these matches (empty: nothing does)."""
    kinds: tuple[str, ...] = ()
    titles: tuple[re.Pattern[str], ...] = ()
    paths: tuple[str, ...] = ()

    def match(self, kind: str, title: str, paths: list[str]) -> bool:
        return (kind in self.kinds or any(p.search(title) for p in self.titles)
                or any(fnmatch.fnmatchcase(path, glob) for glob in self.paths for path in paths))


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    prompt: str
    source: Path  # the file it was read from
    prefers: Prefers = field(default_factory=Prefers)
    model: str | None = None  # None: the colony's model
    tools: tuple[str, ...] = TOOLS + (FINISH,)  # what the model is offered
    max_steps: int | None = None  # None: the config's limit
    when_idle: str | None = None  # None: the role sleeps when nothing is ready; else it sweeps


def _line(head: str, key: str) -> int:
    """The file line of front matter key ``key`` (2: the line after the opening '---')."""
    for i, text in enumerate(head.splitlines()):
        if re.match(rf"{re.escape(key)}\s*:", text):
            return i + 2
    return 2


def _strings(value: Any) -> list[str] | None:
    return value if isinstance(value, list) and all(isinstance(v, str) and v for v in value) else None


def _prefers(value: Any, bad: Any) -> Prefers:
    if value is None:
        return Prefers()
    if not isinstance(value, dict) or set(value) - {"kinds", "titles", "paths"}:
        raise bad("prefers", "prefers: is a mapping of kinds:, titles: and paths:, each a list of strings")
    lists = {}
    for key in ("kinds", "titles", "paths"):
        items = _strings(value.get(key, []))
        if items is None:
            raise bad("prefers", f"prefers.{key} must be a list of non-empty strings")
        lists[key] = items
    patterns = []
    for text in lists["titles"]:
        try:
            patterns.append(re.compile(text, re.IGNORECASE))
        except re.error as e:
            raise bad("prefers", f"prefers.titles: {text!r} is not a valid regex ({e})") from None
    return Prefers(tuple(lists["kinds"]), tuple(patterns), tuple(lists["paths"]))


def _parse(text: str, source: Path) -> Role:
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise UsageError(f"{source}:1: no front matter: {FIX}")
    head, body = text[4:].split("\n---\n", 1)
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 2}" if mark is not None else ""  # +1: 1-based, +1: the opening '---'
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{source}{line}: front matter is not valid YAML ({problem}): {FIX}") from None

    def bad(key: str, problem: str) -> UsageError:
        return UsageError(f"{source}:{_line(head, key)}: {problem}")

    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise UsageError(f"{source}:2: front matter needs `name: <role>`: {FIX}")
    unknown = sorted(set(meta) - set(FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown front matter field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")
    for key in ("model", "when_idle"):
        if meta.get(key) is not None and not (isinstance(meta[key], str) and meta[key].strip()):
            raise bad(key, f"{key}: must be a non-empty string (or left out)")
    tools = meta.get("tools")
    if tools is not None:
        names = _strings(tools)
        wrong = sorted(set(names or ["?"]) - set(TOOLS) - {FINISH})
        if names is None or wrong:
            raise bad("tools", f"tools: must be a list of tool names from {', '.join(TOOLS)} "
                               f"({FINISH} is always allowed){f'; unknown: {wrong[0]!r}' if names else ''}")
        tools = tuple(t for t in TOOLS if t in names) + (FINISH,)
    steps = meta.get("max_steps")
    if steps is not None and (type(steps) is not int or steps < 1):
        raise bad("max_steps", f"max_steps: must be a whole number >= 1, got {steps!r}")
    return Role(meta["name"], str(meta.get("description", "")), body.strip(), source,
                prefers=_prefers(meta.get("prefers"), bad), model=meta.get("model"),
                tools=tools if tools is not None else TOOLS + (FINISH,), max_steps=steps,
                when_idle=meta["when_idle"].strip() if meta.get("when_idle") else None)


def shipped() -> list[str]:
    return sorted(p.name[:-3] for p in shipped_files.folder("roles").glob("*.md"))


def source(name: str, home: Path) -> Path | None:
    """The file role ``name`` is read from: the colony's override, else the shipped one (None: no such role)."""
    for path in (home / "roles" / f"{name}.md", shipped_files.folder("roles") / f"{name}.md"):
        if path.is_file():
            return path
    return None


def load_role(name: str, home: Path) -> Role:
    if name == ANY:
        raise UsageError(f"{ANY!r} is no role file: it names an agent that takes each task's role (agent_role, for_task)")
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
    if (home / "roles" / f"{ANY}.md").exists():
        raise UsageError(f"{home / 'roles' / (ANY + '.md')}:1: {ANY!r} is reserved for agents that take each "
                         "task's role (--roles any=N): rename the file and its `name:`")
    return [load_role(name, home) for name in known(home)]


def agent_role(name: str, home: Path) -> Role:
    """The role an agent runs as: a role file, or ``any`` (no file, no preferences, never sweeps),
    whose agents take each task's role from for_task."""
    if name == ANY:
        return Role(ANY, "takes each task's role: its hint, else the first role that prefers it, else coder",
                    "", Path(ANY))
    return load_role(name, home)


def for_task(agent: Role, task: Task, home: Path) -> Role:
    """The role whose prompt an agent of role ``agent`` works ``task`` with: its own, except for an
    ``any`` agent, which takes the task's role hint, else the first role (by name) whose ``prefers``
    matches the task's kind, title, inputs and outputs, else coder."""
    if agent.name != ANY:
        return agent
    if task.role is not None:
        return load_role(task.role, home)
    paths = [*task.inputs, *task.outputs]
    suited = (r for r in load_all(home) if r.prefers.match(task.kind, task.title, paths))
    return next(suited, None) or load_role(FALLBACK, home)
