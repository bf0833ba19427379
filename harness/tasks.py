"""The task: schema, validation, ids, YAML.

A task file is small YAML whose folder is its status (tasks/pending/<id>.yaml, ...). Everything a
file says is checked here, and every message names the file and the field, because task files are
written by people, scripts and models alike.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import yaml

from harness.errors import InvalidId, InvalidTask

ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
PRIORITIES = {"low": 20, "normal": 50, "high": 80, "critical": 95}
KINDS = ("task", "merge_conflict", "verify_failure", "review", "idea")
MAX_TASK_BYTES = 256 * 1024
# libyaml's parser is ~10x faster than the pure-Python one: a claim parses one task file.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass
class Task:
    id: str
    title: str
    kind: str = "task"
    priority: int = PRIORITIES["normal"]
    role: str | None = None
    depends_on: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    verify: str | None = None
    body: str = ""
    created_by: str = "human"
    discovered_from: str | None = None
    discovered_by: str | None = None  # the agent whose idle sweep found it (sweep.py)
    resolves: str | None = None  # a merge_conflict task names the task whose work it lands
    skip_count: int = 0
    not_before: float | None = None  # epoch before which nobody claims it: it just failed (back-off)
    created_at: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)  # machine data, e.g. a conflict's refs

    def to_dict(self) -> dict[str, Any]:
        # Drop empty optional fields so hand-written and generated files look alike.
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {}, "") or k in ("id", "title")}

    def to_yaml(self) -> str:
        return str(yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True))


_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "title": (str,), "kind": (str,), "priority": (int, str), "role": (str, type(None)),
    "depends_on": (list,), "inputs": (list,), "outputs": (list,), "verify": (str, type(None)),
    "body": (str, type(None)), "created_by": (str,), "discovered_from": (str, type(None)),
    "discovered_by": (str, type(None)), "resolves": (str, type(None)), "skip_count": (int,),
    "not_before": (int, float, type(None)), "created_at": (int, float), "meta": (dict,),
}


class Schedulable(Protocol):
    """A task file or an index entry: what "ready" looks at."""

    @property
    def depends_on(self) -> Sequence[str]: ...

    @property
    def not_before(self) -> float | None: ...


def readiness(task: Schedulable, done: Callable[[str], bool], now: float) -> tuple[list[str], float]:
    """"Ready", defined once (a claim checking the file, the pick index, `task list`): every
    dependency done and no back-off left. Returns the dependencies not done (asked of ``done``,
    which each caller answers from what it knows) and the seconds of back-off left (0 for none);
    the task is ready when both are empty."""
    left = task.not_before - now if task.not_before is not None and task.not_before > now else 0.0
    return [d for d in task.depends_on if not done(d)], left


def back_off(task: Task, step: float, cap: float, now: float) -> None:
    """A counted failure: the task waits ``step * 2^(skips-1)`` seconds (at most ``cap``) before
    anyone claims it again, so a repeatable error cannot spend its attempts in a second."""
    wait = min(step * 2 ** max(task.skip_count - 1, 0), cap) if step > 0 else 0
    task.not_before = round(now + wait, 3) if wait > 0 else None


def check_id(value: object, where: str = "id", what: str = "task id") -> str:
    """The one check of an id (a task's, an agent's, a token's): each becomes a file name, a
    branch or ref name component and part of a lock name, so it must be safe as all of them."""
    if not isinstance(value, str) or not ID_RE.match(value) or ".." in value or value.endswith(".lock"):
        raise InvalidId(
            f"{where}: {value!r} is not a valid {what}: use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit (no uppercase, '/', '..', control characters or a '.lock' ending)"
        )
    return value


def parse_priority(value: object, where: str = "priority") -> int:
    if isinstance(value, str):
        if value in PRIORITIES:
            return PRIORITIES[value]
        if value.strip().isdigit():
            value = int(value)
        else:
            raise InvalidTask(f"{where}: {value!r} is not a priority: use 0-100 or one of {', '.join(PRIORITIES)}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidTask(f"{where}: {value!r} is not a priority: use 0-100 or one of {', '.join(PRIORITIES)}")
    return value


def from_dict(data: object, source: str) -> Task:
    """Validate a mapping into a Task; `source` (a file name) starts every error message."""
    if not isinstance(data, dict):
        raise InvalidTask(f"{source}: a task must be a YAML mapping, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(_TYPES))
    if unknown:
        raise InvalidTask(f"{source}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_TYPES)}")
    for key in ("id", "title"):
        if key not in data:
            raise InvalidTask(f"{source}: missing required field '{key}'")
    for key, value in data.items():
        if not isinstance(value, _TYPES[key]) or (isinstance(value, bool) and key in ("priority", "skip_count")):
            want = " or ".join(t.__name__ for t in _TYPES[key])
            raise InvalidTask(f"{source}: field '{key}' must be {want}, got {type(value).__name__}")
    check_id(data["id"], f"{source}: field 'id'")
    if not data["title"].strip() or "\n" in data["title"]:
        raise InvalidTask(f"{source}: field 'title' must be one non-empty line")
    kind = data.get("kind", "task")
    if kind not in KINDS:
        raise InvalidTask(f"{source}: field 'kind' is {kind!r}; use one of {', '.join(KINDS)}")
    for key in ("depends_on", "inputs", "outputs"):
        for item in data.get(key, []):
            if not isinstance(item, str) or not item:
                raise InvalidTask(f"{source}: field '{key}' must be a list of non-empty strings")
    for dep in data.get("depends_on", []):
        check_id(dep, f"{source}: field 'depends_on'")
    if data.get("skip_count", 0) < 0:
        raise InvalidTask(f"{source}: field 'skip_count' must be >= 0")
    fields = dict(data)
    fields["priority"] = parse_priority(data.get("priority", "normal"), f"{source}: field 'priority'")
    fields["body"] = data.get("body") or ""
    return Task(**fields)


def parse(text: str, source: str) -> Task:
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise InvalidTask(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    return from_dict(data, source)


def load(path: Path) -> Task:
    """Read one task file, refusing what should never be there: symlinks, huge or binary files.
    One descriptor, opened without following a link and without blocking (a FIFO is refused,
    not waited on): every claim reads its task, and pathlib's checks were a dozen syscalls."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise InvalidTask(f"{path.name}: not a regular file (symlinks are refused)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidTask(f"{path.name}: not a regular file (symlinks are refused)")
        _check_size(st.st_size, path.name)  # before reading: a huge file is never read into memory
        chunks, left = [], MAX_TASK_BYTES + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return check_bytes(b"".join(chunks), path.name)


def _check_size(size: int, name: str) -> None:
    if size > MAX_TASK_BYTES:
        raise InvalidTask(f"{name}: {size} bytes is too large for a task (limit {MAX_TASK_BYTES})")


def check_bytes(raw: bytes, name: str) -> Task:
    """The task a file named ``name`` holding ``raw`` is, by the rules every read applies."""
    _check_size(len(raw), name)
    if b"\0" in raw:
        raise InvalidTask(f"{name}: binary content")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InvalidTask(f"{name}: not UTF-8 text") from None
    task = parse(text, name)
    if f"{task.id}.yaml" != name:
        raise InvalidTask(f"{name}: its id {task.id!r} does not match the file name")
    return task


def serialise(task: Task) -> bytes:
    """The file for ``task``, refused (InvalidTask) unless a read would accept it: a file every read
    quarantines must never be written, or its id is printed and then the task vanishes."""
    try:
        raw = task.to_yaml().encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from an argument that was not UTF-8
        raise InvalidTask(f"task {task.id!r}: its text is not valid UTF-8") from None
    try:
        check_bytes(raw, f"{task.id}.yaml")
    except InvalidTask as e:
        fix = (": shorten it; a long text belongs in a file of the repository, named in its inputs"
               if len(raw) > MAX_TASK_BYTES else "")
        raise InvalidTask(f"task {task.id!r} would be quarantined when read back ({e}){fix}") from None
    return raw


def slug(title: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:limit].strip("-")
    return s or "task"


def new_id(title: str) -> str:
    """A slug of the title plus a random suffix: ids never collide across hosts and never count."""
    return f"{slug(title)}-{secrets.token_hex(2)}"
