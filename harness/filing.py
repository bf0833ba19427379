"""What an agent may file: the fields of a task a model (create_task) or an agent CLI (`stigmergy
task add` with STIGMERGY_AGENT set) files, checked before anything reaches the pool.

A model once filed seven tasks in one attempt with a sentence for a role ("function that will
create a task with...") and prose for outputs, one of them after the stop had begun. Each check
here refuses with a message that names the field and what is accepted, so the model can fix its
call; tasks.from_dict still checks the schema after these.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import tasks
from harness.errors import FilingCapped, FilingRefused
from harness.tasks import Task

if TYPE_CHECKING:
    from harness.environment import Environment

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


def check_caps(env: Environment, agent: str, task_id: str | None) -> None:
    """Raise FilingCapped when ``agent`` may file no more tasks now: it filed
    max_new_tasks_per_attempt since it claimed ``task_id``, or max_new_tasks_per_hour in the
    last hour. The first refusal of an attempt leaves a note on the task, so the next claimant
    (and the morning report) sees that the model kept filing."""
    now, claimed, capped = time.time(), 0.0, False
    adds: list[float] = []
    for e in env.events():
        if e.get("agent") == agent and e.get("task") == task_id and e.get("event") == "claim":
            claimed, capped = float(e["ts"]), False
        elif e.get("event") == "add" and e.get("created_by") == agent:
            adds.append(float(e["ts"]))
        elif e.get("event") == "filing_capped" and e.get("agent") == agent and e.get("task") == task_id:
            capped = True
    in_attempt = sum(1 for ts in adds if ts >= claimed) if task_id else 0
    in_hour = sum(1 for ts in adds if ts >= now - 3600)
    cfg = env.config
    if task_id and in_attempt >= cfg.max_new_tasks_per_attempt:
        why = (f"{in_attempt} tasks filed in this attempt "
               f"(max_new_tasks_per_attempt: {cfg.max_new_tasks_per_attempt})")
    elif in_hour >= cfg.max_new_tasks_per_hour:
        why = f"{in_hour} tasks filed in the last hour (max_new_tasks_per_hour: {cfg.max_new_tasks_per_hour})"
    else:
        return
    message = (f"task not filed: agent {agent} has {why}. Finish the task at hand and put what is left "
               "in a note, or raise the limit in .stigmergy/config.yaml")
    if task_id and not capped:
        env.add_note(task_id, agent, message, kind="filing_capped")
        env.event("filing_capped", task_id, agent=agent, reason=why)
    raise FilingCapped(message)


def refusal(env: Environment, agent: str, task_id: str | None, refused: FilingRefused) -> FilingRefused:
    """Record that ``agent``, at work on ``task_id``, tried to file a task that was refused: a note
    on that task for the next claimant (and the report), once per attempt and reason, however
    often the model retries. Refusals file nothing, so they never count against the caps of
    check_caps. Returns ``refused``, for the caller to raise."""
    if task_id is None:
        return refused
    noted = False
    for e in env.events():
        if e.get("agent") == agent and e.get("task") == task_id:
            if e.get("event") == "claim":
                noted = False  # a new attempt: its first refusal is news again
            elif e.get("event") == "filing_refused" and e.get("reason") == refused.reason:
                noted = True
    if not noted:
        env.add_note(task_id, agent, f"task not filed: {refused}", kind="filing_refused")
        env.event("filing_refused", task_id, agent=agent, reason=refused.reason)
    return refused
