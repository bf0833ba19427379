"""Limits that hold during a model call (issue 14): the deadline, SIGTERM and STOP now end a call
that blocks, retries and timeouts show in the transcript, and a context overflow is survived once.

Calls that really block: a socket read or a sleep in-process for the interrupt itself, and the
shipped fake API server over real HTTP with the real SDKs for the tool loop and the agent process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from harness import shrink
from harness.colony import Colony
from harness.errors import Interrupted, ModelContextOverflow
from harness.interrupt import interruptible
from harness.models.base import Reply, Request, ToolCall, Usage
from harness.models.fake_server import FakeServer
from harness.models.registry import load_model
from harness.models.retry import RetryPolicy
from harness.tasks import Task
from harness.toolloop import Limits, Transcript, run_attempt
from harness.tools import Toolbox

KEY = "sk-test-DEADLINE-1234567890abcdef"
FAST = RetryPolicy(attempts=2, base_wait=0.01, max_wait=0.05)
_PROVIDER_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE")


class Sink:
    def create_task(self, fields: dict[str, Any]) -> str:
        return "new-1"

    def add_note(self, text: str) -> None:
        pass


@pytest.fixture
def box(tmp_path: Path) -> Toolbox:
    (tmp_path / "wt").mkdir()
    return Toolbox(tmp_path / "wt", {"PATH": os.environ["PATH"]}, Sink(), bash_timeout=10)


@pytest.fixture
def server() -> Iterator[Callable[[list[dict[str, Any]]], FakeServer]]:
    started: list[FakeServer] = []

    def serve(script: list[dict[str, Any]]) -> FakeServer:
        srv = FakeServer(script, api_key=KEY)
        srv.start()
        started.append(srv)
        return srv
    yield serve
    for srv in started:
        srv.stop()


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the interrupt itself ------------------------------------------------------------------------------

def test_a_stop_aborts_a_blocking_socket_read_within_a_poll() -> None:
    left, right = socket.socketpair()
    told = threading.Event()
    threading.Timer(0.3, told.set).start()
    began = time.monotonic()
    try:
        with pytest.raises(Interrupted) as caught, interruptible(told.is_set, None):
            left.recv(1)  # nobody ever writes: blocks until the handler raises
    finally:
        left.close(), right.close()
    assert caught.value.reason == "stop"
    assert 0.3 <= time.monotonic() - began < 1.5


def test_the_deadline_aborts_a_sleep_on_time_and_everything_is_put_back() -> None:
    def previous(signum: int, frame: object) -> None:
        pass
    signal.signal(signal.SIGALRM, previous)
    try:
        began = time.monotonic()
        with pytest.raises(Interrupted) as caught, interruptible(lambda: False, began + 0.4, poll=5.0):
            time.sleep(30)
        assert caught.value.reason == "time" and 0.4 <= time.monotonic() - began < 1.0
        assert signal.getsignal(signal.SIGALRM) is previous and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        # A block that ends in time: nothing is raised then, nor after it, though the stop holds.
        with interruptible(lambda: True, time.monotonic() + 0.2, poll=0.1):
            pass
        time.sleep(0.5)
        # Someone else's timer runs on after the block, with what it had left.
        signal.setitimer(signal.ITIMER_REAL, 30)
        with interruptible(lambda: False, None, poll=0.1):
            time.sleep(0.3)
        assert 29 < signal.getitimer(signal.ITIMER_REAL)[0] < 29.8
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_off_the_main_thread_it_is_a_no_op() -> None:
    outcome: list[str] = []

    def worker() -> None:
        try:
            with interruptible(lambda: True, time.monotonic() + 0.1, poll=0.05):
                time.sleep(0.6)
            outcome.append("ran to the end")
        except Interrupted as e:
            outcome.append(f"interrupted: {e.reason}")
    before = signal.getsignal(signal.SIGALRM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert outcome == ["ran to the end"] and signal.getsignal(signal.SIGALRM) is before


# -- the tool loop against a server that holds its reply -----------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_max_seconds_holds_during_a_call_that_never_answers(
        provider: str, box: Toolbox, tmp_path: Path, server: Callable[[list[dict[str, Any]]], FakeServer]) -> None:
    srv = server([{"match": "", "replies": [{"delay": 60, "then": {"text": "far too late"}}]}])
    base = srv.openai_base_url if provider == "openai" else srv.base_url
    model = load_model(f"{provider}/m-test", api_base=base, api_key=KEY, retry=FAST)
    lines: list[str] = []
    began = time.monotonic()
    outcome = run_attempt(model, "sys", "do it", box, Limits(max_seconds=2), Transcript(tmp_path / "t.jsonl"),
                          task_id="t-1", task_title="T", say=lines.append)
    took = time.monotonic() - began
    assert outcome.stopped_by == "time" and not outcome.finished and outcome.steps == 0
    assert 2 <= took < 4, took
    assert len(srv.requests) == 1  # it was the call that was cut short, not a retry loop
    kinds = [e["kind"] for e in events(tmp_path / "t.jsonl")]
    assert kinds[-1] == "stop" and ("interrupted" in kinds or "timeout" in kinds)
    assert lines and "t-1" in lines[-1]


def test_every_request_carries_the_time_left_and_a_reply_is_recorded_once(box: Toolbox) -> None:
    seen: list[Request] = []

    class Steady:
        name = "steady"

        def complete(self, request: Request) -> Reply:
            seen.append(request)
            if len(seen) < 3:
                time.sleep(0.2)
                return Reply(tool_calls=[ToolCall(f"c{len(seen)}", "bash", {"command": "true"})], cost_usd=0.1)
            return Reply(tool_calls=[ToolCall("f", "finish", {"summary": "ok"})], cost_usd=0.1)

    recorded: list[Reply] = []
    outcome = run_attempt(Steady(), "sys", "do it", box, Limits(max_seconds=30), None, task_id="t", task_title="T",
                          on_reply=recorded.append)
    assert outcome.finished and len(recorded) == 3 and outcome.cost_usd == pytest.approx(0.3)
    timeouts = [r.timeout for r in seen]
    assert all(t is not None for t in timeouts)
    assert 29 < timeouts[0] <= 30 and timeouts[0] > timeouts[1] + 0.2 > timeouts[2] + 0.4  # type: ignore[operator]
    unlimited = run_attempt(Steady(), "sys", "do it", box, Limits(max_seconds=None), None, task_id="t", task_title="T")
    assert unlimited.finished and seen[-1].timeout is None


def test_retries_and_timeouts_reported_by_the_call_reach_transcript_and_log(box: Toolbox, tmp_path: Path) -> None:
    class Flaky:
        """Reports what a retrying provider reports (the Request.on_event contract), then answers."""
        name = "flaky"

        def complete(self, request: Request) -> Reply:
            assert request.on_event is not None
            request.on_event({"kind": "retry", "error": "ModelTransient: 503 overloaded", "wait": 0.5, "attempt": 1})
            return Reply(tool_calls=[ToolCall("f", "finish", {"summary": "ok"})])

    lines: list[str] = []
    path = tmp_path / "transcript.jsonl"
    outcome = run_attempt(Flaky(), "sys", "do it", box, Limits(), Transcript(path), task_id="t-9", task_title="T",
                          say=lines.append)
    assert outcome.finished
    retry = [e for e in events(path) if e["kind"] == "retry"]
    assert retry == [{**retry[0], "step": 1, "error": "ModelTransient: 503 overloaded", "wait": 0.5, "attempt": 1}]
    assert len(lines) == 1 and "retry" in lines[0] and "503 overloaded" in lines[0] and "t-9" in lines[0]


# -- context overflow -----------------------------------------------------------------------------------

class Window:
    """A fake endpoint with a small context window: a request longer than ``limit`` characters is
    refused as a real API refuses it; otherwise the next of ``calls`` answers."""

    name = "window"

    def __init__(self, limit: int, calls: list[ToolCall]) -> None:
        self.limit, self.calls = limit, calls
        self.requests: list[Request] = []

    def complete(self, request: Request) -> Reply:
        self.requests.append(request)
        if shrink.size(request.messages) > self.limit:
            raise ModelContextOverflow("400: prompt is too long: 41000 tokens > 32000 maximum")
        turn = sum(1 for m in request.messages if m["role"] == "assistant")
        return Reply(tool_calls=[self.calls[turn]], usage=Usage(input_tokens=1))


def big(i: int, words: int = 2000) -> ToolCall:
    return ToolCall(f"b{i}", "bash", {"command": f"printf 'out{i} %.0s' $(seq {words})"})  # 5 chars a word


def test_an_overflow_drops_old_tool_output_and_the_retried_call_goes_through(box: Toolbox, tmp_path: Path) -> None:
    model = Window(16_000, [big(1), big(2), ToolCall("f", "finish", {"summary": "fits"})])
    path = tmp_path / "t.jsonl"
    outcome = run_attempt(model, "sys", "do it", box, Limits(), Transcript(path), task_id="t", task_title="T")
    assert outcome.finished and outcome.summary == "fits" and outcome.steps == 3
    refused, retried = model.requests[2], model.requests[3]
    assert shrink.size(refused.messages) > 16_000 >= shrink.size(retried.messages)
    old, latest = retried.messages[2]["content"][0]["content"], retried.messages[4]["content"][0]["content"]
    assert old.startswith("out1 out1") and "characters of old tool output dropped" in old and len(old) < 400
    assert latest == refused.messages[4]["content"][0]["content"]  # the latest turn's output is whole
    overflow = [e for e in events(path) if e["kind"] == "context_overflow"]
    assert len(overflow) == 1 and overflow[0]["chars_before"] > 16_000 >= overflow[0]["chars_after"]


def test_a_second_overflow_ends_the_attempt_with_the_error(box: Toolbox, tmp_path: Path) -> None:
    # 10 kB fits, but the 15 kB of the latest turn stay whole: shrunk, the request is still too long.
    model = Window(12_000, [big(1), big(2, words=3000), ToolCall("f", "finish", {"summary": "never"})])
    outcome = run_attempt(model, "sys", "do it", box, Limits(), None, task_id="t", task_title="T")
    assert outcome.stopped_by == "error" and isinstance(outcome.error, ModelContextOverflow)
    assert len(model.requests) == 4 and outcome.steps == 2  # the third call asked twice, then no more
    assert shrink.size(model.requests[3].messages) < shrink.size(model.requests[2].messages)


def test_when_stubbing_is_not_enough_middle_turns_go_and_the_conversation_stays_well_formed() -> None:
    def turn(i: int) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": [{"type": "text", "text": f"step {i}"},
                                                  {"type": "tool_call", "id": f"c{i}", "name": "bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "id": f"c{i}", "content": "x" * 300,
                                              "is_error": False}]}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "the task"}]}]
    for i in range(8):
        messages += turn(i)
    smaller = shrink.shrink(messages)
    assert shrink.size(smaller) < shrink.size(messages) / 2
    assert [m["role"] for m in smaller] == ["user", "assistant", "user", "assistant", "user"]
    assert smaller[0]["content"][0]["text"] == "the task" and "dropped" in smaller[0]["content"][-1]["text"]
    assert smaller[1:] == messages[-4:]  # the last two turns, whole: each call beside its result
    assert shrink.shrink(smaller[:3]) == smaller[:3]  # too short to drop anything


# -- a real agent process ---------------------------------------------------------------------------------

def start_agent(colony: Colony, tmp: Path, srv: FakeServer) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_ENV}
    env["OPENAI_API_KEY"] = KEY
    log = open(tmp / "agent.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "agent", "run", "--id", "a1", "--model", "openai/gpt-test", "--repo",
         str(colony.repo), "--workspaces", str(tmp / "ws"), "--api-base", srv.openai_base_url, "--sandbox", "none"],
        stdout=log, stderr=log, env=env)


@pytest.mark.parametrize("how", ["sigterm", "stop-now"])
def test_an_agent_in_a_long_call_stops_within_seconds_and_frees_its_task_uncounted(
        how: str, colony: Colony, tmp_path: Path, server: Callable[[list[dict[str, Any]]], FakeServer]) -> None:
    srv = server([{"match": "", "replies": [{"delay": 120, "then": {"text": "far too late"}}]}])
    colony.add(Task(id="slow", title="Slow answer"))
    agent = start_agent(colony, tmp_path, srv)
    try:
        wait_for(lambda: len(srv.requests) == 1, timeout=60, what="the agent's first model call")
        time.sleep(1)  # well inside the call
        began = time.monotonic()
        if how == "sigterm":
            agent.send_signal(signal.SIGTERM)
        else:
            colony.stop_path.write_text("now\n")
        code = agent.wait(timeout=30)
        took = time.monotonic() - began
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    log = (tmp_path / "agent.log").read_text()
    assert code == 0, log
    assert took < 5, f"{how}: exited {took:.1f}s after being told\n{log}"
    print(f"{how}: the agent exited {took:.2f}s after being told")
    state, task = colony.get("slow")
    assert state == "pending" and task.skip_count == 0, log
    assert "interrupted" in log and "released slow" in log
    stop = events(next(colony.home.rglob("transcript.jsonl")))[-1]
    assert stop["kind"] == "stop" and stop["stopped_by"] == "stop"
    assert len(srv.requests) == 1


def test_the_colony_cool_down_wait_is_interruptible(box: Toolbox, tmp_path: Path) -> None:
    """Metered waits out the cool-down inside the call: the attempt's deadline ends that wait too."""
    from harness.agent import Metered
    from harness.meter import Ledger
    from harness.models.retry import CoolDown

    cooldown = CoolDown(tmp_path / "cooldown.json")
    cooldown.extend(60)
    never = Window(10**9, [ToolCall("f", "finish", {"summary": "sent"})])
    metered = Metered(never, Ledger(tmp_path / "ledger.jsonl"), "a1", "t", cooldown)
    began = time.monotonic()
    outcome = run_attempt(metered, "sys", "do it", box, Limits(max_seconds=1), None, task_id="t", task_title="T",
                          on_reply=metered.record)
    assert outcome.stopped_by == "time" and time.monotonic() - began < 2.5 and never.requests == []
    assert not (tmp_path / "ledger.jsonl").exists()
