"""What an agent may file: the fields of a task a model (create_task) or an agent CLI (`stigmergy
task add` with STIGMERGY_AGENT set) files, checked before anything reaches the pool.

A model once filed seven tasks in one attempt with a sentence for a role ("function that will
create a task with...") and prose for outputs, one of them after the stop had begun. Each check
here refuses with a message that names the field and what is accepted, so the model can fix its
call; tasks.from_dict still checks the schema after these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import tasks
from harness.errors import FilingRefused
from harness.tasks import Task

MAX_TITLE = 200
MAX_PATH = 200
MAX_PATHS = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Two titles name the same task when this share of their words is common (Jaccard of the word sets,
# small words left out, plurals folded): "Add tests for the parser" and "Add parser tests" are one.
SIMILAR = 0.6
_SMALL = frozenset("a an and as at be by for from in into is it its of on or that the this to with".split())

PATHS_ACCEPTED = (f"paths relative to the repository root, such as src/app.py, docs/ or tests/*.py (globs are "
                  f"fine), at most {MAX_PATH} characters each and {MAX_PATHS} entries, with no '..', no absolute "
                  "paths and no control characters; a path with spaces only if it exists")

STOPPING = ("the colony is stopping, so no task is filed now: finish the task at hand, or put what is left in a "
            "note (add_note) for whoever comes next")


def check_role(role: object, known: Sequence[str]) -> None:
    """A role a task names must be one this colony has (people's `task add` too: a typo would
    otherwise leave the task without the role bonus of any agent, unnoticed)."""
    if role is not None and role not in known:
        raise FilingRefused("role", f"field 'role' is {role!r}, not a role of this colony: use one of "
                            f"{', '.join(known)}, or leave it out")


def check(fields: Mapping[str, Any], known_roles: Sequence[str], worktree: Path | None) -> None:
    """Refuse (FilingRefused) fields an agent may not file; ``worktree`` is where a path with
    spaces must exist to be believed (None: no such path is)."""
    title = fields.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE or "\n" in title:
        shown = len(title) if isinstance(title, str) else type(title).__name__
        raise FilingRefused("title", f"field 'title' must be one line of 1-{MAX_TITLE} characters (got {shown}); "
                            "put the detail in body")
    check_role(fields.get("role"), known_roles)
    kind = fields.get("kind", "task")
    if kind not in tasks.KINDS:
        raise FilingRefused("kind", f"field 'kind' is {kind!r}: use one of {', '.join(tasks.KINDS)}, or leave it "
                            "out (task)")
    for key in ("inputs", "outputs"):
        _check_paths(key, fields.get(key, []), worktree)


def _check_paths(key: str, items: object, worktree: Path | None) -> None:
    if not isinstance(items, list):
        raise FilingRefused(key, f"field '{key}' must be a list of {PATHS_ACCEPTED}")
    if len(items) > MAX_PATHS:
        raise FilingRefused(key, f"field '{key}' has {len(items)} entries: name at most {MAX_PATHS} "
                            "(a directory or a glob covers many files)")
    for item in items:
        why = _path_problem(item, worktree)
        if why:
            raise FilingRefused(key, f"field '{key}': {item!r} is not a repository path ({why}); accepted: "
                                f"{PATHS_ACCEPTED}")


def _path_problem(item: object, worktree: Path | None) -> str | None:
    if not isinstance(item, str) or not item.strip():
        return "empty"
    if len(item) > MAX_PATH:
        return f"{len(item)} characters"
    if _CONTROL.search(item):
        return "control characters"
    if item.startswith(("/", "~")):
        return "absolute"
    if ".." in item.split("/"):
        return "a '..' component"
    # Prose for a path ("the function that parses args") has spaces; a real path with a space
    # is believed once it is there to be seen.
    if any(c.isspace() for c in item) and not (worktree is not None and (worktree / item).exists()):
        return "spaces, and no such path in the worktree"
    return None


def words(title: str) -> frozenset[str]:
    """A title's words for comparing: lower case, small words left out, a plural 's' folded."""
    found = re.findall(r"[a-z0-9]+", title.lower())
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in found if w not in _SMALL)


def similarity(a: str, b: str) -> float:
    """How alike two titles are: the Jaccard index of their word sets (1.0: the same words)."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa and wb else 0.0


def check_duplicate(fields: Mapping[str, Any], existing: Iterable[tuple[str, Task]]) -> None:
    """Refuse (FilingRefused, reason "duplicate") a task that repeats one of ``existing`` (status,
    task): a title at least SIMILAR alike, or the same non-empty set of outputs. An idle sweep files
    through this, so agents that look at the same repository do not file the same finding twice."""
    title, outputs = str(fields.get("title", "")), set(fields.get("outputs") or [])
    for status, task in existing:
        alike = similarity(title, task.title)
        if alike >= SIMILAR or (outputs and outputs == set(task.outputs)):
            why = (f"its title is {alike:.0%} alike" if alike >= SIMILAR
                   else f"it has the same outputs ({', '.join(sorted(outputs))})")
            raise FilingRefused("duplicate", f"not filed: it repeats task {task.id} ({status}: {task.title!r}); "
                                f"{why}. File only what no open or recently done task covers, or finish")
