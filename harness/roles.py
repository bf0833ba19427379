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
    model: anthropic/claude-haiku-4-5   # optional: this role's model instead of the colony's
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
from harness import tasks
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
        return self.strength(kind, title, paths) > 0

    def strength(self, kind: str, title: str, paths: list[str]) -> int:
        """2: its title or a path matches; 1: only its kind does (a kind like `task` is broad); 0: no match."""
        if any(p.search(title) for p in self.titles) or any(
                fnmatch.fnmatchcase(path, glob) for glob in self.paths for path in paths):
            return 2
        return 1 if kind in self.kinds else 0


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    prompt: str  # the body: jinja2, rendered into the system prompt (Templates.role_prompt)
    source: Path  # the file it was read from
    prompt_line: int = 1  # the file line the body starts on, for errors in it
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
    wrong = [k for k in lists["kinds"] if k not in tasks.KINDS]
    if wrong:
        raise bad("prefers", f"prefers.kinds: {wrong[0]!r} is no task kind; the kinds are {', '.join(tasks.KINDS)} "
                             "(match other work by titles: or paths:)")
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
    if meta.get("model") is not None:
        from harness.models.registry import check_spec  # the model layer: not loaded by every `task claim`

        try:
            check_spec(meta["model"])
        except UsageError as e:
            raise bad("model", f"model: {e}") from None
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
    # '---' on line 1, the head's lines, '---', then the body, whose leading blank lines strip() drops.
    first = len(head.splitlines()) + 3 + body[:len(body) - len(body.lstrip())].count("\n")
    return Role(meta["name"], str(meta.get("description", "")), body.strip(), source, prompt_line=first,
                prefers=_prefers(meta.get("prefers"), bad), model=meta.get("model"),
                tools=tools if tools is not None else TOOLS + (FINISH,), max_steps=steps,
                when_idle=meta["when_idle"].strip() if meta.get("when_idle") else None)


def summary(role: Role) -> dict[str, Any]:
    """The front matter as read (defaults filled in): for `roles list --json`."""
    p = role.prefers
    return {"name": role.name, "description": role.description,
            "prefers": {"kinds": list(p.kinds), "titles": [t.pattern for t in p.titles], "paths": list(p.paths)},
            "model": role.model, "tools": list(role.tools), "max_steps": role.max_steps,
            "when_idle": role.when_idle}


def traits(role: Role) -> str:
    """One line of what the front matter makes of a role: for `roles list` and `roles show`."""
    p = role.prefers
    likes = [*([f"kinds {', '.join(p.kinds)}"] if p.kinds else []),
             *([f"{len(p.titles)} title pattern{'s' * (len(p.titles) != 1)}"] if p.titles else []),
             *([f"{len(p.paths)} path glob{'s' * (len(p.paths) != 1)}"] if p.paths else [])]
    tools = "all tools" if role.tools == TOOLS + (FINISH,) else f"tools {', '.join(role.tools)}"
    model = f"model {role.model}" if role.model else "the colony's model"
    steps = f"max_steps {role.max_steps}" if role.max_steps else "the config's max_steps"
    return "; ".join([f"prefers {', '.join(likes)}" if likes else "prefers nothing", model, tools, steps,
                      "sweeps when idle" if role.when_idle else "sleeps when idle"])


def suits(role: Role | None, hint: str | None, kind: str, title: str, paths: list[str]) -> bool:
    """Whether picking boosts a task for ``role``: the task names it (its role hint), or names no
    role and the role's ``prefers`` matches its kind, title, inputs or outputs. A task hinted for
    another role gets no boost, but any agent may still take it: preferences order, never exclude."""
    return role is not None and (hint == role.name or (hint is None and role.prefers.match(kind, title, paths)))


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


def may_work_as(names: set[str], home: Path) -> list[Role]:
    """The roles that agents of these roles may work tasks as: their own, and every role for ``any``."""
    return load_all(home) if ANY in names else [load_role(n, home) for n in sorted(names)]


def for_task(agent: Role, task: Task, home: Path) -> Role:
    """The role whose prompt an agent of role ``agent`` works ``task`` with: its own, except for an
    ``any`` agent, which takes the task's role hint, else the role whose ``prefers`` matches the
    task best (a title or path over a kind alone; ties go to the first by name), else coder."""
    if agent.name != ANY:
        return agent
    if task.role is not None:
        return load_role(task.role, home)
    paths = [*task.inputs, *task.outputs]
    scored = [(r.prefers.strength(task.kind, task.title, paths), r) for r in load_all(home)]
    best = max((n for n, _ in scored), default=0)
    return next(r for n, r in scored if n == best) if best else load_role(FALLBACK, home)
