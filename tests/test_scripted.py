"""The scripted model driving the real tool loop in a real worktree."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import NoScriptMatch, UsageError
from harness.models.base import Request
from harness.models.scripted import EXHAUSTED, ScriptedModel
from harness.toolloop import Limits, Outcome, continue_attempt, run_attempt
from harness.tools import TOOL_SPECS, Toolbox


class RecordingColony:
    def __init__(self) -> None:
        self.tasks: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def create_task(self, fields: dict[str, Any]) -> str:
        self.tasks.append(fields)
        return f"found-{len(self.tasks)}"

    def add_note(self, text: str) -> None:
        self.notes.append(text)


def script(tmp_path: Path, text: str) -> ScriptedModel:
    path = tmp_path / "script.yaml"
    path.write_text(textwrap.dedent(text))
    return ScriptedModel(path)


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "wt"
    path.mkdir()
    return path


@pytest.fixture
def colony() -> RecordingColony:
    return RecordingColony()


def attempt(model: ScriptedModel, worktree: Path, colony: RecordingColony, task_id: str = "greeting-1a2b",
            title: str = "Say hello", limits: Limits | None = None) -> Outcome:
    box = Toolbox(worktree, {"PATH": os.environ["PATH"]}, colony, bash_timeout=10)
    return run_attempt(model, "system", "do the task", box, limits or Limits(), None, task_id=task_id, task_title=title)


def test_script_drives_a_multi_step_attempt(tmp_path: Path, worktree: Path, colony: RecordingColony) -> None:
    model = script(tmp_path, """\
        - match: "^greeting-"
          actions:
            - bash: "echo hello > greeting.txt"
            - write: {path: src/app.py, content: "print('hi')\\n"}
            - replace: {path: src/app.py, old: "'hi'", new: "open('greeting.txt').read()"}
            - create_task: {title: "Document the greeting", priority: 60}
            - note: "greeting is read from a file"
            - finish: "greets"
        - match: "greeting"
          actions:
            - finish: "the second entry must never win"
        """)
    outcome = attempt(model, worktree, colony)
    assert outcome.finished and outcome.stopped_by is None
    assert outcome.summary == "greets"
    assert outcome.steps == 6
    assert (worktree / "greeting.txt").read_text() == "hello\n"
    assert (worktree / "src/app.py").read_text() == "print(open('greeting.txt').read())\n"
    assert colony.tasks == [{"title": "Document the greeting", "priority": 60}]
    assert colony.notes == ["greeting is read from a file"]
    assert outcome.usage.input_tokens > 0 and outcome.usage.output_tokens > 0
    assert outcome.cost_usd == 0.0
    results = [b for m in outcome.messages if m["role"] == "user" for b in m["content"] if b["type"] == "tool_result"]
    assert len(results) == 6 and not any(b["is_error"] for b in results)


def test_matches_title_and_finishes_when_actions_run_out(
    tmp_path: Path, worktree: Path, colony: RecordingColony
) -> None:
    model = script(tmp_path, """\
        - match: "(?i)readme"
          actions:
            - write: {path: README.md, content: "# x\\n"}
        """)
    outcome = attempt(model, worktree, colony, task_id="docs-9f8e", title="Write the README")
    assert outcome.finished and outcome.summary == EXHAUSTED and outcome.steps == 2
    assert (worktree / "README.md").exists()


def test_unmatched_task_raises_no_script_match(tmp_path: Path, worktree: Path, colony: RecordingColony) -> None:
    model = script(tmp_path, '- match: "^greeting"\n  actions: [{finish: done}]\n')
    with pytest.raises(NoScriptMatch, match="other-1"):
        model.complete(Request("s", [], TOOL_SPECS, task_id="other-1", task_title="Other"))
    outcome = attempt(model, worktree, colony, task_id="other-1", title="Other")
    assert not outcome.finished and outcome.stopped_by == "error"
    assert isinstance(outcome.error, NoScriptMatch)


def test_sleep_happens_before_the_next_reply(tmp_path: Path, worktree: Path, colony: RecordingColony) -> None:
    model = script(tmp_path, """\
        - match: "."
          actions:
            - bash: "true"
            - sleep: 0.3
            - finish: "slept"
        """)
    started = time.monotonic()
    outcome = attempt(model, worktree, colony)
    assert outcome.summary == "slept" and outcome.steps == 2  # sleep is not a step of its own
    assert time.monotonic() - started >= 0.3


def test_meet_holds_each_task_until_the_other_arrives(tmp_path: Path, colony: RecordingColony) -> None:
    import threading
    model = script(tmp_path, """\
        - match: "."
          actions:
            - meet: {name: pair, parties: 2, timeout: 20}
            - finish: "met"
        """)
    finished: dict[str, float] = {}

    def run(task_id: str, delay: float) -> None:
        time.sleep(delay)
        wt = tmp_path / task_id
        wt.mkdir()
        assert attempt(model, wt, colony, task_id=task_id).summary == "met"
        finished[task_id] = time.monotonic()

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=("early", 0.0)), threading.Thread(target=run, args=("late", 1.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert finished["early"] - started >= 1.0  # it waited for the late one, not its own timeout
    assert finished["early"] - started < 10
    assert sorted(p.name for p in (tmp_path / "script.yaml.meet" / "pair").iterdir()) == ["early", "late"]


def test_a_meet_nobody_else_reaches_gives_up_after_its_timeout(
    tmp_path: Path, worktree: Path, colony: RecordingColony
) -> None:
    model = script(tmp_path, """\
        - match: "."
          actions:
            - meet: {name: alone, timeout: 0.3}
            - finish: "went on alone"
        """)
    started = time.monotonic()
    assert attempt(model, worktree, colony).summary == "went on alone"
    assert time.monotonic() - started >= 0.3


def test_on_verify_failure_actions_play_after_feedback(
    tmp_path: Path, worktree: Path, colony: RecordingColony
) -> None:
    model = script(tmp_path, """\
        - match: "."
          actions:
            - write: {path: answer.txt, content: "41\\n"}
            - finish: "wrote the answer"
          on_verify_failure:
            - bash: "echo 42 > answer.txt"
            - finish: "fixed the answer"
        """)
    first = attempt(model, worktree, colony)
    assert first.summary == "wrote the answer"
    second = continue_attempt(first, "expected 42, got 41")
    assert second.finished and second.summary == "fixed the answer"
    assert (worktree / "answer.txt").read_text() == "42\n"
    assert second.steps == 4  # totals carry over from the first round
    third = continue_attempt(second, "still failing")  # every verify round starts the list over
    assert third.summary == "fixed the answer" and third.steps == 6


@pytest.mark.parametrize(
    "text, expect",
    [
        ("match: x\n", "must be a YAML list"),
        ("- [1, 2]\n", r"entries\[0\]: must be a mapping"),
        ("- match: x\n  actions: []\n  colour: red\n", r"entries\[0\]: unknown key"),
        ("- match: '('\n  actions: []\n", "not a valid regex"),
        ("- match: x\n", r"entries\[0\]: 'actions' must be a list"),
        ("- match: x\n  actions: []\n- match: y\n  actions: [{dance: now}]\n",
         r"entries\[1\]\.actions\[0\]: unknown action"),
        ("- match: x\n  actions: [{bash: a, note: b}]\n", "exactly one key"),
        ("- match: x\n  actions: [{write: {path: a}}]\n", "write needs exactly the string fields path, content"),
        ("- match: x\n  actions: [{sleep: -1}]\n", "sleep needs a number"),
        ("- match: x\n  actions: [{meet: {name: a b}}]\n", "meet needs"),
        ("- match: x\n  actions: [{meet: {name: a, parties: 1}}]\n", "meet needs"),
        ("- match: x\n  actions: [{create_task: {title: t, colour: red}}]\n", "unknown field"),
        ("- match: x\n  actions: [{create_task: {priority: 5}}]\n", "missing required field 'title'"),
        ("- match: x\n  actions: []\n  on_verify_failure: [{finish: 3}]\n",
         r"on_verify_failure\[0\]: finish needs a string"),
        ("- match: x\n  actions: [\n", "not valid YAML"),
    ],
)
def test_invalid_scripts_are_refused_on_load(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(UsageError, match=expect):
        script(tmp_path, text)


def test_missing_script_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        ScriptedModel(tmp_path / "nope.yaml")
