"""A deterministic model that plays back a YAML script: for tests and the demo (``scripted:PATH``).

    - match: "greeting"            # regex, searched in the task id, then in the task title
      actions:                     # each action is ONE tool call, one per reply
        - bash: "echo hello > greeting.txt"
        - write: {path: src/app.py, content: "..."}               # edit tool: create
        - replace: {path: src/app.py, old: "...", new: "..."}     # edit tool: str_replace
        - create_task: {title: "...", priority: 60}               # any create_task fields
        - note: "..."                                             # add_note
        - sleep: 2.5               # not a tool call: the model sleeps this long before its next
                                   # reply (lets tests SIGKILL/SIGSTOP an agent mid-task)
        - meet: {name: pair, parties: 2, timeout: 30}
                                   # not a tool call either: before its next reply the model waits
                                   # until `parties` different tasks have reached a meet of this
                                   # name (or `timeout` seconds pass), so that two agents hold
                                   # their tasks at the same time however slowly each one started
        - finish: "summary"
        - stuck: "what was tried"  # finish with stuck: true (the model cannot do the task)
      on_verify_failure:           # optional: played instead of ``actions`` after the harness
        - replace: {...}           # sends verify-failure feedback (every such round starts over)
        - finish: "fixed"

The first entry that matches wins; a task matching none raises NoScriptMatch. The model keeps
no state: the step is the number of assistant messages already in the request (counted from
the latest verify-failure message in a verify round), so one instance serves any number of
conversations. When a list runs out the reply is ``finish("scripted actions exhausted")``.
Usage is estimated as characters / 4 so cost accounting has numbers to count; cost is 0.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import NoScriptMatch, UsageError
from harness.models.base import Reply, Request, ToolCall, Usage
from harness.toolspec import ADD_NOTE, BASH, CREATE_TASK, EDIT, FINISH, TOOL_SPECS, VERIFY_FAILURE_MARKER, schema_problem

EXHAUSTED = "scripted actions exhausted"

_ENTRY_KEYS = {"match", "actions", "on_verify_failure"}
_CREATE_TASK_SCHEMA = next(spec.input_schema for spec in TOOL_SPECS if spec.name == CREATE_TASK)


@dataclass(frozen=True)
class _Meet:
    name: str
    parties: int
    timeout: float

    def wait(self, folder: Path, task_id: str) -> None:
        """Arrive (one directory per task, so a retried task counts once), then wait for the rest."""
        here = folder / self.name
        (here / (task_id or str(os.getpid()))).mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while sum(1 for _ in here.iterdir()) < self.parties and time.monotonic() < deadline:
            time.sleep(0.05)


@dataclass(frozen=True)
class _Step:
    name: str
    input: dict[str, Any]
    sleep: float = 0.0  # seconds to sleep before replying with this call
    meet: _Meet | None = None  # then wait for the other parties of this meet


@dataclass
class _Entry:
    pattern: re.Pattern[str]
    actions: list[_Step]
    on_verify_failure: list[_Step] = field(default_factory=list)


class ScriptedModel:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"scripted:{self.path}"
        self.entries = load_script(self.path)

    def complete(self, request: Request) -> Reply:
        entry = self._entry_for(request)
        assistant_turns = [i for i, m in enumerate(request.messages) if m.get("role") == "assistant"]
        feedback_at = _last_verify_failure(request.messages)
        if feedback_at is None:
            steps, step = entry.actions, len(assistant_turns)
        else:
            steps, step = entry.on_verify_failure, sum(1 for i in assistant_turns if i > feedback_at)
        chosen = steps[step] if step < len(steps) else _Step(FINISH, {"summary": EXHAUSTED})
        if chosen.sleep:
            time.sleep(chosen.sleep)
        if chosen.meet:  # the meeting place sits beside the script, which every agent reads
            chosen.meet.wait(self.path.with_name(self.path.name + ".meet"), request.task_id)
        call = ToolCall(id=f"scripted-{len(assistant_turns) + 1}", name=chosen.name, input=dict(chosen.input))
        prompt_chars = len(request.system) + len(json.dumps(request.messages, default=str))
        usage = Usage(input_tokens=prompt_chars // 4, output_tokens=len(json.dumps(call.input)) // 4 + 1)
        return Reply(text="", tool_calls=[call], usage=usage, cost_usd=0.0, stop_reason="tool_use")

    def _entry_for(self, request: Request) -> _Entry:
        for entry in self.entries:
            if entry.pattern.search(request.task_id) or entry.pattern.search(request.task_title):
                return entry
        raise NoScriptMatch(f"{self.path}: no entry matches task {request.task_id!r} ({request.task_title!r})")


def load_script(path: Path) -> list[_Entry]:
    """Read and validate a script; UsageError names the entry and action at fault."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"scripted model: cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"scripted model: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, list):
        raise UsageError(f"scripted model: {path} must be a YAML list of entries (- match: ..., actions: [...])")
    return [_entry(path, i, raw) for i, raw in enumerate(data)]


def _entry(path: Path, index: int, raw: Any) -> _Entry:
    where = f"scripted model: {path}: entries[{index}]"
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: must be a mapping with 'match' and 'actions'")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
    if not isinstance(raw.get("match"), str):
        raise UsageError(f"{where}: 'match' must be a string (a regex)")
    try:
        pattern = re.compile(raw["match"])
    except re.error as exc:
        raise UsageError(f"{where}: match {raw['match']!r} is not a valid regex: {exc}") from None
    lists = {}
    for key in ("actions", "on_verify_failure"):
        actions = raw.get(key, [] if key == "on_verify_failure" else None)
        if not isinstance(actions, list):
            raise UsageError(f"{where}: '{key}' must be a list of actions")
        lists[key] = _steps(f"{where}.{key}", actions)
    return _Entry(pattern, lists["actions"], lists["on_verify_failure"])


def _steps(where: str, actions: list[Any]) -> list[_Step]:
    steps: list[_Step] = []
    pending_sleep, pending_meet = 0.0, None
    for j, action in enumerate(actions):
        here = f"{where}[{j}]"
        if not isinstance(action, dict) or len(action) != 1:
            raise UsageError(f"{here}: an action is a mapping with exactly one key, e.g. {{bash: 'make'}}")
        (kind, value), = action.items()
        if kind == "sleep":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"{here}: sleep needs a number of seconds >= 0, got {value!r}")
            pending_sleep += float(value)
            continue
        if kind == "meet":
            pending_meet = _meet(here, value)
            continue
        name, tool_input = _tool_call(here, kind, value)
        steps.append(_Step(name, tool_input, pending_sleep, pending_meet))
        pending_sleep, pending_meet = 0.0, None
    if pending_sleep or pending_meet:  # a trailing sleep or meet delays the "exhausted" finish
        steps.append(_Step(FINISH, {"summary": EXHAUSTED}, pending_sleep, pending_meet))
    return steps


def _meet(here: str, value: Any) -> _Meet:
    ok = (isinstance(value, dict) and set(value) <= {"name", "parties", "timeout"}
          and isinstance(value.get("name"), str) and re.fullmatch(r"[A-Za-z0-9._-]+", value["name"])
          and type(value.get("parties", 2)) is int and value.get("parties", 2) >= 2
          and type(value.get("timeout", 30)) in (int, float) and value.get("timeout", 30) > 0)
    if not ok:
        raise UsageError(f"{here}: meet needs {{name: WORD, parties: N >= 2, timeout: SECONDS > 0}}, got {value!r}")
    return _Meet(value["name"], value.get("parties", 2), float(value.get("timeout", 30)))


def _tool_call(here: str, kind: str, value: Any) -> tuple[str, dict[str, Any]]:
    if kind in ("bash", "note", "finish", "stuck"):
        if not isinstance(value, str):
            raise UsageError(f"{here}: {kind} needs a string, got {type(value).__name__}")
        calls: dict[str, tuple[str, dict[str, Any]]] = {
            "bash": (BASH, {"command": value}), "note": (ADD_NOTE, {"text": value}),
            "finish": (FINISH, {"summary": value}), "stuck": (FINISH, {"summary": value, "stuck": True})}
        return calls[kind]
    if kind == "write":
        fields = _fields(here, kind, value, ("path", "content"))
        return EDIT, {"command": "create", "path": fields["path"], "file_text": fields["content"]}
    if kind == "replace":
        fields = _fields(here, kind, value, ("path", "old", "new"))
        return EDIT, {"command": "str_replace", "path": fields["path"], "old_str": fields["old"],
                      "new_str": fields["new"]}
    if kind == "create_task":
        unknown = set(value) - set(_CREATE_TASK_SCHEMA["properties"]) if isinstance(value, dict) else set()
        problem = f"unknown field(s) {sorted(unknown)}" if unknown else schema_problem(_CREATE_TASK_SCHEMA, value)
        if problem:
            raise UsageError(f"{here}: create_task: {problem}")
        return CREATE_TASK, dict(value)
    raise UsageError(
        f"{here}: unknown action {kind!r}; use bash, write, replace, create_task, note, sleep, meet, finish or stuck"
    )


def _fields(here: str, kind: str, value: Any, names: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != set(names) or not all(isinstance(value[n], str) for n in names):
        raise UsageError(f"{here}: {kind} needs exactly the string fields {', '.join(names)}")
    return value


def _last_verify_failure(messages: list[dict[str, Any]]) -> int | None:
    """Index of the latest user message that carries verify-failure feedback, if any."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.get("role") != "user":
            continue
        content = message.get("content", [])
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts = [b.get("text", "") for b in blocks if b.get("type") == "text"]
        if any(VERIFY_FAILURE_MARKER in text for text in texts):
            return i
    return None
