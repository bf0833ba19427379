"""The one tool loop, the same for every provider.

    ask the model -> run its tool calls in order -> send all results back in one user message
    -> repeat until it calls ``finish``, stops calling tools, or a limit hits

Stopping is data: ``Outcome.stopped_by`` is None when the model finished, else one of

    "steps" | "tokens" | "cost"   a limit, checked before each model call
    "time"     max_seconds ran out: before a call, or during one (the call's ModelTimeout, or
               the interrupt at the deadline)
    "stop"     ``abort_check`` said so (SIGTERM, STOP now, the colony budget): before a call, or
               during one (checked every second while it runs)
    "budget"   the provider raised BudgetExceeded
    "error"    any other ModelError (``Outcome.error``), a context overflow that shrinking the
               conversation once did not cure included
    "stuck"    the model called finish with ``stuck: true``: it could not do the task (the
               summary says why), and nothing it changed should land

Limits count the whole attempt, verify-failure rounds included. Only the model call itself is
interruptible (harness.interrupt): the tool calls of a reply always run, so the conversation stays
well formed (every tool call has its result), and a reply that came back is always accounted
(``on_reply``, e.g. the agent's ledger, runs after the interruptible region). A call refused as
longer than the context window is retried once on a shrunk conversation (harness.shrink).

A verify failure goes back into the same conversation:

    outcome = run_attempt(model, system, prompt, toolbox, limits, transcript, task_id=..., task_title=...)
    if outcome.finished and not verify_ok:
        outcome = continue_attempt(outcome, verify_log_tail)   # prefixed with VERIFY_FAILURE_MARKER

The transcript gets one JSON line per event ("request", "reply", "tool_result", "stop"; and
"retry", "timeout", "dialect" as the model reports them through ``Request.on_event``, "interrupted",
"context_overflow", "error") with every secret redacted; tool results are redacted before the
model sees them too. What the agent's log should show of those goes to the ``say`` callback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import fsutil, shrink
from harness.errors import BudgetExceeded, Interrupted, ModelContextOverflow, ModelError, ModelTimeout, UsageError
from harness.interrupt import interruptible
from harness.models.base import Model, Reply, Request, Usage
from harness.redact import redact, redact_data
from harness.tools import Toolbox, ToolResult, clip_lines
from harness.toolspec import VERIFY_FAILURE_MARKER

# How much of each tool result the transcript keeps: enough to replay what happened.
TRANSCRIPT_RESULT_LIMIT = 4_000


@dataclass
class Limits:
    """Caps for one attempt; None = no cap. Tokens count input+output+cache reads/writes."""

    max_steps: int | None = 100
    max_tokens: int | None = None
    max_seconds: float | None = None
    max_cost_usd: float | None = None


@dataclass
class Outcome:
    finished: bool
    summary: str = ""
    stopped_by: str | None = None
    error: ModelError | None = None  # set when stopped_by is "error" (or "budget" / "time" from the provider)
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    seconds: float = 0.0
    messages: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # The live conversation, for continue_attempt; not part of the result's value.
    attempt: Attempt | None = field(default=None, repr=False, compare=False)


class Transcript:
    """Append-only JSON lines (fsutil.append_lines), each event redacted first."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: dict[str, Any], secrets: Iterable[str] = ()) -> None:
        record = redact_data({"ts": round(time.time(), 3), **event}, secrets)
        fsutil.append_lines(self.path, [record], sort_keys=False)  # "ts" first, as written


class Attempt:
    """One conversation with a model about one task; ``run`` may be called again after feedback."""

    def __init__(
        self,
        model: Model,
        system: str,
        toolbox: Toolbox,
        limits: Limits,
        transcript: Transcript | None,
        *,
        task_id: str,
        task_title: str,
        abort_check: Callable[[], bool] | None = None,
        secrets: Iterable[str] = (),
        on_reply: Callable[[Reply], None] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.model, self.system, self.toolbox = model, system, toolbox
        self.limits, self.transcript = limits, transcript
        self.task_id, self.task_title = task_id, task_title
        self.abort_check = abort_check or (lambda: False)
        self.on_reply = on_reply  # told of every reply that came back, before anything else happens
        self.tell = say or (lambda line: None)  # one line in the agent's log
        self.secrets = tuple(s for s in secrets if s)
        self.messages: list[dict[str, Any]] = []
        self.steps = 0
        self.usage = Usage()
        self.cost_usd = 0.0
        self.seconds = 0.0  # spent in earlier rounds

    def say(self, text: str) -> Outcome:
        """Add a user message and run until the model finishes or a limit hits."""
        first = not self.messages
        block = {"type": "text", "text": text}
        if self.messages and self.messages[-1]["role"] == "user":
            # After finish the last message holds its tool result; providers want roles to
            # alternate, so the feedback joins that message (text after the results).
            last = self.messages[-1]
            self.messages[-1] = {**last, "content": [*last["content"], block]}
        else:
            self.messages.append({"role": "user", "content": [block]})
        self._log({"kind": "user", "text": text, **({"system": self.system} if first else {})})
        started = time.monotonic()
        try:
            return self._loop(started)
        finally:
            self.seconds += time.monotonic() - started

    def _loop(self, started: float) -> Outcome:
        while True:
            stop = self._limit_hit(started)
            if stop:
                return self._outcome(started, stopped_by=stop)
            reply = self._ask(started)
            if isinstance(reply, Outcome):
                return reply
            self._account(reply)
            self.messages.append({"role": "assistant", "content": _assistant_blocks(reply)})
            if not reply.tool_calls:
                # A model that stops talking to tools has nothing more to do: that is its finish.
                return self._outcome(started, finished=True, summary=reply.text)
            done = self._run_tools(reply)
            if done is not None:
                return self._outcome(started, finished=not done.stuck, summary=done.finished or "",
                                     stopped_by="stuck" if done.stuck else None)

    def _ask(self, started: float) -> Reply | Outcome:
        """One model call, or the Outcome that ends the attempt; once more on a shrunk
        conversation if the endpoint says this one is too long for its context window."""
        for shrunk in (False, True):
            if shrunk and (stop := self._limit_hit(started)):  # shrinking may have taken the last second
                return self._outcome(started, stopped_by=stop)
            deadline = self._deadline(started)
            # A snapshot: a provider (or a test) keeping the request must not see later turns.
            request = Request(self.system, list(self.messages), self.toolbox.specs, task_id=self.task_id,
                              task_title=self.task_title, on_event=self._on_event,
                              timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            self._log({"kind": "request", "step": self.steps + 1, "model": self.model.name,
                       "messages": len(self.messages)})
            reply: Reply | None = None
            try:
                with interruptible(self.abort_check, deadline):
                    reply = self.model.complete(request)
            except Interrupted as exc:
                if reply is None:  # else it landed as the call returned: the reply stands
                    self._event({"kind": "interrupted", "reason": exc.reason})
                    return self._outcome(started, stopped_by=exc.reason)
            except ModelContextOverflow as exc:
                if shrunk or not self._shrink():
                    return self._failed(started, exc)
                continue
            except ModelTimeout as exc:
                self._event({"kind": "timeout", "error": str(exc)})
                return self._outcome(started, stopped_by="time", error=exc)
            except ModelError as exc:
                return self._failed(started, exc)
            assert reply is not None
            return reply
        raise AssertionError("unreachable")

    def _shrink(self) -> bool:
        """Drop old tool output (and, if need be, middle turns); False if nothing got smaller."""
        before = shrink.size(self.messages)
        smaller = shrink.shrink(self.messages)
        after = shrink.size(smaller)
        self._event({"kind": "context_overflow", "chars_before": before, "chars_after": after,
                     "messages_before": len(self.messages), "messages_after": len(smaller)})
        if after >= before:
            return False
        self.messages = smaller
        return True

    def _failed(self, started: float, exc: ModelError) -> Outcome:
        self._log({"kind": "error", "step": self.steps + 1, "error": f"{type(exc).__name__}: {exc}"})
        stopped_by = "budget" if isinstance(exc, BudgetExceeded) else "error"
        return self._outcome(started, stopped_by=stopped_by, error=exc)

    def _deadline(self, started: float) -> float | None:
        """When max_seconds runs out, on the monotonic clock (None: no time limit)."""
        if self.limits.max_seconds is None:
            return None
        return started + self.limits.max_seconds - self.seconds

    def _on_event(self, event: dict[str, Any]) -> None:
        """What a model call reports from inside (a retry, a timeout, a dialect fallback)."""
        self._event({"kind": "event", **event})

    def _event(self, event: dict[str, Any]) -> None:
        """An event worth a transcript line and a line in the agent's log."""
        event = {"step": self.steps + 1, **event}
        self._log(event)
        details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("kind", "step"))
        self.tell(redact(f"{self.task_id} step {event['step']}: model {event['kind']}: {details}", self.secrets))

    def _run_tools(self, reply: Reply) -> ToolResult | None:
        """Run the reply's tool calls in order; finish's result if one of them was finish."""
        done: ToolResult | None = None
        results = []
        for call in reply.tool_calls:
            if done is None:
                result = self.toolbox.run(call)
                done = result if result.finished is not None else None
            else:  # still answered: every tool call needs a result if the conversation goes on
                result = ToolResult("Not run: finish was already called.", is_error=True)
            content = redact(result.content, self.secrets)
            results.append({"type": "tool_result", "id": call.id, "content": content, "is_error": result.is_error})
            self._log({
                "kind": "tool_result", "step": self.steps, "id": call.id, "name": call.name,
                "is_error": result.is_error,
                "content": clip_lines(content.splitlines(keepends=True), TRANSCRIPT_RESULT_LIMIT),
            })
        self.messages.append({"role": "user", "content": results})
        return done

    def _limit_hit(self, started: float) -> str | None:
        limits = self.limits
        if self.abort_check():
            return "stop"
        if limits.max_steps is not None and self.steps >= limits.max_steps:
            return "steps"
        if limits.max_seconds is not None and self.seconds + time.monotonic() - started >= limits.max_seconds:
            return "time"
        if limits.max_tokens is not None and _total_tokens(self.usage) >= limits.max_tokens:
            return "tokens"
        if limits.max_cost_usd is not None and self.cost_usd >= limits.max_cost_usd:
            return "cost"
        return None

    def _account(self, reply: Reply) -> None:
        if self.on_reply is not None:
            self.on_reply(reply)
        self.steps += 1
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            setattr(self.usage, name, getattr(self.usage, name) + getattr(reply.usage, name))
        self.cost_usd += reply.cost_usd
        self._log({
            "kind": "reply", "step": self.steps, "text": reply.text, "stop_reason": reply.stop_reason,
            "tool_calls": [{"id": c.id, "name": c.name, "input": c.input, "error": c.error}
                           for c in reply.tool_calls],
            "usage": asdict(reply.usage), "cost_usd": reply.cost_usd,
        })

    def _outcome(self, started: float, *, finished: bool = False, summary: str = "",
                 stopped_by: str | None = None, error: ModelError | None = None) -> Outcome:
        outcome = Outcome(
            finished=finished, summary=summary, stopped_by=stopped_by, error=error, steps=self.steps,
            usage=Usage(**asdict(self.usage)), cost_usd=self.cost_usd,
            seconds=self.seconds + time.monotonic() - started, messages=list(self.messages), attempt=self,
        )
        self._log({
            "kind": "stop", "finished": finished, "summary": summary, "stopped_by": stopped_by,
            "steps": self.steps, "usage": asdict(self.usage), "cost_usd": self.cost_usd,
            "seconds": round(outcome.seconds, 3),
        })
        return outcome

    def _log(self, event: dict[str, Any]) -> None:
        if self.transcript is not None:
            self.transcript.write({"task": self.task_id, **event}, self.secrets)


def run_attempt(
    model: Model,
    system: str,
    task_prompt: str,
    toolbox: Toolbox,
    limits: Limits,
    transcript: Transcript | None,
    *,
    task_id: str,
    task_title: str,
    abort_check: Callable[[], bool] | None = None,
    secrets: Iterable[str] = (),
    on_reply: Callable[[Reply], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> Outcome:
    """Start a conversation with ``task_prompt`` and run it to an Outcome (never raises ModelError).

    ``abort_check`` is asked before each call and every second during one; ``on_reply`` is told of
    every reply (outside the interruptible region: a reply that came back is never lost);
    ``say`` gets one line per retry, timeout, interrupt and context overflow."""
    attempt = Attempt(model, system, toolbox, limits, transcript, task_id=task_id, task_title=task_title,
                      abort_check=abort_check, secrets=secrets, on_reply=on_reply, say=say)
    return attempt.say(task_prompt)


def continue_attempt(outcome: Outcome, feedback: str, limits: Limits | None = None) -> Outcome:
    """Feed a verify failure back into ``outcome``'s conversation and run another round.

    ``feedback`` (e.g. the tail of verify.log) is sent after VERIFY_FAILURE_MARKER. Totals and
    limits carry over from the earlier rounds; pass ``limits`` to raise them for this round on.
    """
    if outcome.attempt is None:
        raise UsageError("this outcome has no conversation to continue")
    if limits is not None:
        outcome.attempt.limits = limits
    return outcome.attempt.say(f"{VERIFY_FAILURE_MARKER}\n{feedback}")


def _assistant_blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    blocks += [{"type": "tool_call", "id": c.id, "name": c.name, "input": c.input} for c in reply.tool_calls]
    return blocks


def _total_tokens(usage: Usage) -> int:
    return usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens
