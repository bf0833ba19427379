"""The tool loop: stopping, limits, malformed calls, verify feedback and the transcript."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.errors import BudgetExceeded, ModelAuthError
from harness.models.base import Reply, Request, ToolCall, Usage
from harness.models.scripted import ScriptedModel
from harness.toolloop import VERIFY_FAILURE_MARKER, Limits, Transcript, continue_attempt, run_attempt
from harness.tools import Toolbox

FAKE_KEY = "sk-ant-fake-0123456789abcdef"


class Colony:
    def create_task(self, fields: dict[str, Any]) -> str:
        return "new-1"

    def add_note(self, text: str) -> None:
        pass


class InlineModel:
    """A stand-in for an external model: ``turn(step, request)`` decides each reply."""

    name = "inline"

    def __init__(self, turn: Callable[[int, Request], Reply]) -> None:
        self.turn = turn
        self.requests: list[Request] = []

    def complete(self, request: Request) -> Reply:
        self.requests.append(request)
        return self.turn(len(self.requests) - 1, request)


def finish(summary: str = "done", cost: float = 0.0) -> Reply:
    return Reply(tool_calls=[ToolCall("f", "finish", {"summary": summary})], cost_usd=cost)


@pytest.fixture
def box(tmp_path: Path) -> Toolbox:
    worktree = tmp_path / "wt"
    worktree.mkdir()
    return Toolbox(worktree, {"PATH": os.environ["PATH"], "API_KEY": FAKE_KEY}, Colony(), bash_timeout=10)


def scripted(tmp_path: Path, text: str) -> ScriptedModel:
    path = tmp_path / "script.yaml"
    path.write_text(textwrap.dedent(text))
    return ScriptedModel(path)


def run(model: Any, box: Toolbox, limits: Limits | None = None, transcript: Transcript | None = None,
        **kw: Any) -> Any:
    return run_attempt(model, "sys", "do it", box, limits or Limits(), transcript, task_id="t-1", task_title="T", **kw)


def results_of(messages: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    return [b for b in messages[index]["content"] if b["type"] == "tool_result"]


def test_steps_limit_stops_the_loop(tmp_path: Path, box: Toolbox) -> None:
    model = scripted(tmp_path, '- match: "."\n  actions: ' + json.dumps([{"bash": f"echo {i}"} for i in range(10)]))
    outcome = run(model, box, Limits(max_steps=3))
    assert not outcome.finished and outcome.stopped_by == "steps" and outcome.steps == 3
    assert outcome.messages[-1]["role"] == "user"  # the last calls were answered before stopping


def test_time_limit_stops_the_loop(tmp_path: Path, box: Toolbox) -> None:
    model = scripted(tmp_path, '- match: "."\n  actions: ' + json.dumps([{"sleep": 0.2}, {"bash": "true"}] * 10))
    outcome = run(model, box, Limits(max_seconds=0.5))
    assert outcome.stopped_by == "time" and 2 <= outcome.steps <= 4
    assert outcome.seconds >= 0.5


def test_token_cost_and_budget_limits(box: Toolbox) -> None:
    def chatty(step: int, request: Request) -> Reply:
        call = ToolCall(f"c{step}", "bash", {"command": "true"})
        return Reply(tool_calls=[call], usage=Usage(input_tokens=100, output_tokens=10), cost_usd=0.5)

    assert run(InlineModel(chatty), box, Limits(max_tokens=250)).stopped_by == "tokens"
    by_cost = run(InlineModel(chatty), box, Limits(max_cost_usd=1.0))
    assert by_cost.stopped_by == "cost" and by_cost.steps == 2 and by_cost.cost_usd == 1.0
    assert by_cost.usage == Usage(input_tokens=200, output_tokens=20)

    checks = []
    def budget_gone() -> bool:
        checks.append(1)
        return len(checks) > 2
    by_budget = run(InlineModel(chatty), box, abort_check=budget_gone)
    assert by_budget.stopped_by == "stop" and by_budget.steps == 2


def test_model_errors_become_outcomes(box: Toolbox) -> None:
    def refuses(step: int, request: Request) -> Reply:
        if step == 0:
            return Reply(tool_calls=[ToolCall("c0", "bash", {"command": "true"})], cost_usd=0.25)
        raise ModelAuthError("401 from provider")

    outcome = run(InlineModel(refuses), box)
    assert outcome.stopped_by == "error" and isinstance(outcome.error, ModelAuthError)
    assert outcome.steps == 1 and outcome.cost_usd == 0.25  # what was spent is still counted

    def broke(step: int, request: Request) -> Reply:
        raise BudgetExceeded("attempt cap")

    assert run(InlineModel(broke), box).stopped_by == "budget"


def test_malformed_calls_are_answered_and_the_loop_goes_on(box: Toolbox) -> None:
    def sloppy(step: int, request: Request) -> Reply:
        if step == 0:
            return Reply(tool_calls=[
                ToolCall("a", "bash", {}, error="arguments were not valid JSON"),
                ToolCall("b", "teleport", {"to": "mars"}),
                ToolCall("c", "bash", {"cmd": "ls"}),
                ToolCall("d", "bash", {"command": "echo fine"}),
            ])
        return finish("recovered")

    model = InlineModel(sloppy)
    outcome = run(model, box)
    assert outcome.finished and outcome.summary == "recovered" and outcome.steps == 2
    results = results_of(model.requests[1].messages, -1)  # one user message answers all four calls
    assert [r["id"] for r in results] == ["a", "b", "c", "d"]
    assert [r["is_error"] for r in results] == [True, True, True, False]
    assert "fine" in results[3]["content"]


def test_calls_after_finish_are_answered_but_not_run(box: Toolbox) -> None:
    def eager(step: int, request: Request) -> Reply:
        return Reply(tool_calls=[
            ToolCall("f", "finish", {"summary": "done early"}),
            ToolCall("b", "bash", {"command": "touch after-finish"}),
        ])

    outcome = run(InlineModel(eager), box)
    assert outcome.finished and outcome.summary == "done early" and outcome.steps == 1
    assert not (box.root / "after-finish").exists()
    assert results_of(outcome.messages, -1)[1]["is_error"]


def test_reply_without_tool_calls_finishes_with_its_text(box: Toolbox) -> None:
    outcome = run(InlineModel(lambda step, request: Reply(text="Nothing to do: already implemented.")), box)
    assert outcome.finished and outcome.summary == "Nothing to do: already implemented."


def test_verify_feedback_continues_the_same_conversation(box: Toolbox) -> None:
    def model_turn(step: int, request: Request) -> Reply:
        return finish(f"round with {len(request.messages)} messages")

    first = run(InlineModel(model_turn), box)
    second = continue_attempt(first, "2 tests failed")
    # The feedback joins the user message holding finish's result: roles keep alternating.
    assert second.steps == 2 and second.summary == "round with 3 messages"
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user", "assistant", "user"]
    feedback = second.messages[2]["content"][-1]["text"]
    assert feedback.startswith(VERIFY_FAILURE_MARKER) and "2 tests failed" in feedback
    # Limits count the whole attempt unless the caller raises them for the new round.
    assert continue_attempt(second, "again").stopped_by is None
    capped = run(InlineModel(model_turn), box, Limits(max_steps=1))
    assert continue_attempt(capped, "x").stopped_by == "steps"
    assert continue_attempt(capped, "x", Limits(max_steps=5)).finished


def test_transcript_is_json_lines_without_secrets(tmp_path: Path, box: Toolbox) -> None:
    model = scripted(tmp_path, f"""\
        - match: "."
          actions:
            - bash: 'echo "key is $API_KEY"; echo "Error: bad key {FAKE_KEY}" >&2'
            - write: {{path: leak.txt, content: "{FAKE_KEY}"}}
            - finish: "done"
        """)
    path = tmp_path / "runs" / "t-1" / "1" / "transcript.jsonl"
    outcome = run(model, box, transcript=Transcript(path), secrets=[FAKE_KEY, "short"])
    assert outcome.finished
    text = path.read_text()
    assert FAKE_KEY not in text
    assert "[REDACTED]" in text
    events = [json.loads(line) for line in text.splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "user" and kinds[-1] == "stop"
    assert kinds.count("request") == kinds.count("reply") == 3 and kinds.count("tool_result") == 3
    reply = next(e for e in events if e["kind"] == "reply")
    assert reply["usage"]["input_tokens"] > 0 and "cost_usd" in reply and reply["tool_calls"][0]["name"] == "bash"
    # What the model is shown is redacted too.
    shown = results_of(outcome.messages, 2)[0]["content"]
    assert FAKE_KEY not in shown and "key is [REDACTED]" in shown
