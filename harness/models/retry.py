"""Retries for model calls, and the colony-wide cool-down a 429 imposes.

Providers make exactly one HTTP attempt and map what went wrong to ``ModelTransient`` (retry),
``ModelConfigError`` (do not: the colony stops) or ``ModelBadRequest``/``ModelError`` (do not);
``RetryingModel`` wraps any provider and retries the transient ones, within ``Request.timeout``. A 429 seen by
one agent extends a shared ``CoolDown`` file that every agent waits out before sending, so the
whole colony backs off together instead of each agent hammering the endpoint on its own
schedule. Transient faults that outlast the retries are an outage: the cool-down is extended
too, doubling with each consecutive outage (capped), until a call succeeds again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import fcntl
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness import fsutil
from harness.errors import (ModelAuthError, ModelBadRequest, ModelContextOverflow, ModelCoolingDown, ModelError,
                            ModelNotFound, ModelRateLimited, ModelTimeout, ModelTransient)
from harness.models.base import Model, Reply, Request

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
AUTH_STATUSES = frozenset({401, 403})
BAD_REQUEST_STATUSES = frozenset({400, 413, 422})
AUTH_FIX = ("fix: check the API key (ANTHROPIC_API_KEY / OPENAI_API_KEY) and that it may use this model, "
            "then relaunch")
NOT_FOUND_FIX = ("fix: check the model name (--model or `model:` in .stigmergy/config.yaml) and the endpoint "
                 "(--api-base, `api_base:`, ANTHROPIC_BASE_URL / OPENAI_BASE_URL), then relaunch")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. The defaults suit a real API; tests shrink the waits."""

    attempts: int = 6  # total tries, the first included
    base_wait: float = 1.0  # first back-off window (seconds); doubles per attempt, full jitter
    max_wait: float = 60.0  # cap on any one wait, Retry-After included
    # A 429 without Retry-After still cools the colony down for this long.
    default_cooldown: float = 5.0
    # Cap on how far one 429 may push the colony cool-down (guards against absurd headers).
    max_cooldown: float = 600.0
    # An outage (transient faults outlasting every retry) cools the colony down this long,
    # doubled per consecutive outage up to max_outage_cooldown.
    outage_cooldown: float = 15.0
    max_outage_cooldown: float = 300.0

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> RetryPolicy:
        """``model_options: {retry: {attempts: 3, base_wait: 0.5}}``: unknown keys refused by name."""
        from harness.errors import UsageError

        known = set(cls.__dataclass_fields__)
        bad = sorted(set(options) - known)
        if bad:
            raise UsageError(f"model_options.retry: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        values: dict[str, float] = {}
        for key, value in options.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise UsageError(f"model_options.retry.{key}: must be a non-negative number, got {value!r}")
            values[key] = value
        if "attempts" in values:
            values["attempts"] = int(values["attempts"])
        return cls(**values)  # type: ignore[arg-type]


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait per ``retry-after-ms`` or ``retry-after`` (delta-seconds or HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# A refusal that says the prompt is longer than the model's window, in each server's words:
# OpenAI's code and wording (also vLLM's and llama-cpp-python's, which copy it), Anthropic's,
# llama-cpp-python's raw ValueError, llama-server's, Ollama's and litellm's exception class name.
# Matched only on the statuses such refusals come with, so a word in an unrelated error cannot
# misfile it.
_OVERFLOW = re.compile(
    r"context_length_exceeded|maximum context length|prompt is too long|exceeds? (the )?context window"
    r"|context window of \d+|input length exceeds (the )?(maximum )?context length"
    r"|prompt too long; exceeded (max )?context length|exceeds the available context size|exceed_context_size_error"
    r"|ContextWindowExceededError",
    re.IGNORECASE,
)
# A server that validates the request body and answers 500 (llama-cpp-python) or 422 (FastAPI)
# when it fails: pydantic's own phrases and the explicit error type, nothing looser, so a real
# 500 (an outage, retried) is never taken for the request's fault.
_VALIDATION = re.compile(
    r"\d+ validation errors? for |Input should be |[Ff]ield required|ValidationError"
    r"|[\"']type[\"']\s*:\s*[\"']invalid_request_error[\"']",
)
OVERFLOW_STATUSES = frozenset({400, 413, 422, 500})
# The window's size where the server says it, so the message can name the limit that was hit.
_LIMIT = re.compile(r"maximum context length is (\d+)|> (\d+) maximum|context window of (\d+)"
                    r"|available context size \((\d+)")
# OpenAI's wording, copied by vLLM and llama-cpp-python: "you requested 5395 tokens (5195 in the
# messages, 200 in the completion)".
_PROMPT_TOKENS = re.compile(r"\((\d+) in the messages")
_OVERFLOW_FIX = ("the conversation is longer than the model's context window{window}; the tool loop drops old "
                 "tool output and retries; if it keeps happening, give the server a larger context (e.g. "
                 "llama.cpp --n_ctx, vLLM --max-model-len, Ollama num_ctx) or lower max_tokens")
BAD_REQUEST_FIX = ("the endpoint refused this request as malformed: this request's fault, not an outage, so it "
                   "is not retried; the attempt ends with a note on the task")


def error_for_status(
    status: int, detail: str, headers: Mapping[str, str] | None = None, *, body: object = None
) -> ModelError:
    """The harness error for an HTTP failure status: the one classification every provider uses.

    ``detail`` (the message, already redacted) is what the error says; ``body`` (the raw error
    body, not shown) is only searched, with ``detail``, for overflow and validation wording.
    """
    text = detail if body is None else f"{detail} {body if isinstance(body, str) else json.dumps(body, default=str)}"
    if status in OVERFLOW_STATUSES and _OVERFLOW.search(text):
        limit = _LIMIT.search(text)
        size = int(next(g for g in limit.groups() if g)) if limit else None
        prompt = _PROMPT_TOKENS.search(text)
        return ModelContextOverflow(f"{detail}; {_OVERFLOW_FIX.format(window=f' of {size} tokens' if size else '')}",
                                    window=size, prompt_tokens=int(prompt.group(1)) if prompt else None)
    if status in (422, 500) and _VALIDATION.search(text):
        return ModelBadRequest(f"{detail}; {BAD_REQUEST_FIX}")
    if status == 429:
        return ModelRateLimited(detail, status=status, retry_after=parse_retry_after(headers))
    if status in RETRY_STATUSES or status >= 500:
        return ModelTransient(detail, status=status, retry_after=parse_retry_after(headers))
    if status in AUTH_STATUSES:
        return ModelAuthError(f"{detail}; {AUTH_FIX}")
    if status == 404:
        return ModelNotFound(f"{detail}; {NOT_FOUND_FIX}")
    if status in BAD_REQUEST_STATUSES:
        return ModelBadRequest(f"{detail}; {BAD_REQUEST_FIX}")
    return ModelError(detail)


def mentions_tool_choice(error: ModelError) -> bool:
    """A 400 refusing ``tool_choice`` itself (vLLM without --enable-auto-tool-choice says
    '"auto" tool choice requires --enable-auto-tool-choice ...')."""
    return type(error) is ModelBadRequest and re.search(r"tool[_ ]choice", str(error), re.IGNORECASE) is not None


def tell(request: Request, event: dict[str, object]) -> None:
    """Report to ``request.on_event``; a broken listener must not turn a good call into a failure."""
    if request.on_event is not None:
        try:
            request.on_event(event)
        except Exception:  # noqa: BLE001 - the listener is the caller's code, not the call's
            pass


class CoolDown:
    """A shared ``{"until": epoch}`` file: nobody sends before ``until``; a 429 pushes it later.

    Writes are atomic (tmp + fsync + rename) and serialised by an flock on a side file, so
    two agents extending at once can never move ``until`` backwards.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._sleep = sleep
        # Re-read the file at least this often while waiting: another agent may extend it.
        self._poll = poll

    def __repr__(self) -> str:
        return f"CoolDown({str(self.path)!r})"

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            value, outages = float(data["until"]), int(data.get("outages", 0))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # Missing or torn file means "no cool-down": a broken file must not stall the colony.
            return {"until": 0.0, "outages": 0}
        return {"until": value if math.isfinite(value) else 0.0, "outages": max(0, outages)}

    def until(self) -> float:
        """The epoch before which nobody should send; 0 when there is no (readable) file."""
        return self._read()["until"]

    def outages(self) -> int:
        """Consecutive outages so far (0 once any call succeeded after the last one)."""
        return int(self._read()["outages"])

    def extend(self, seconds: float) -> float:
        """Make ``until`` at least now + ``seconds``; never moves it earlier. Returns ``until``."""
        target = self._clock() + max(0.0, seconds)
        with self._locked() as current:
            if target <= current["until"]:
                return current["until"]
            self._write(target, int(current["outages"]))
            return target

    def outage(self, base: float, cap: float) -> float:
        """One more consecutive outage: hold the colony for base * 2^(n-1) seconds (at most
        ``cap``), never earlier than an existing cool-down. Returns the seconds held from now."""
        with self._locked() as current:
            n = int(current["outages"]) + 1
            hold = float(min(cap, base * 2.0 ** min(n - 1, 30)))
            self._write(max(current["until"], self._clock() + hold), n)
            return hold

    def recovered(self) -> None:
        """A call went through: the next outage starts the doubling over."""
        with self._locked() as current:
            if current["outages"]:
                self._write(current["until"], 0)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, float]]:
        # Serialised by an flock on a side file so concurrent writers never move `until` backwards.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield self._read()
        finally:
            os.close(lock_fd)  # closing releases the flock

    def _write(self, until: float, outages: int = 0) -> None:
        fsutil.write_json(self.path, {"until": until, **({"outages": outages} if outages else {})})

    def remaining(self) -> float:
        return max(0.0, self.until() - self._clock())

    def wait(self) -> float:
        """Block until the cool-down has passed; returns the seconds spent waiting."""
        waited = 0.0
        while (left := self.remaining()) > 0:
            step = min(left, self._poll)
            self._sleep(step)
            waited += step
        return waited


# Fewer tokens left for the reply than this is no room: the prompt itself must shrink.
MIN_REPLY_TOKENS = 64


def _room(exc: ModelContextOverflow, max_tokens: int) -> int | None:
    """The reply cap that fits beside the prompt, where the server's numbers say a smaller cap
    than ``max_tokens`` is all it takes; None when the prompt itself is too long."""
    if exc.window is None or exc.prompt_tokens is None:
        return None
    room = exc.window - exc.prompt_tokens - 8  # a margin for the server's own template tokens
    return room if MIN_REPLY_TOKENS <= room < max_tokens else None


class RetryingModel:
    """Any ``Model`` made patient: retries ``ModelTransient`` and honours the colony cool-down.

    ``Request.timeout`` bounds the whole call, waits included: no attempt or wait starts past
    it, each wait is cut to the time left, each attempt is given only the time left, and running
    out raises ``ModelTimeout`` (not an outage: the cool-down is left alone).

    ``max_tokens`` (``model_options: {max_tokens: N}``) caps every reply. A server that counts the
    cap against the context window and says how long the prompt was gets the call once more with
    the cap lowered to the room left, instead of a prompt that fits being taken for an overflow.
    """

    def __init__(
        self,
        inner: Model,
        *,
        policy: RetryPolicy | None = None,
        cooldown: CoolDown | None = None,
        max_tokens: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.max_tokens = max_tokens
        self.name = inner.name
        self.policy = policy or RetryPolicy()
        self.cooldown = cooldown
        self._sleep = sleep
        self._clock = clock
        self._outages_seen = False

    def __repr__(self) -> str:
        return f"RetryingModel({self.inner!r}, policy={self.policy!r}, cooldown={self.cooldown!r})"

    def complete(self, request: Request) -> Reply:
        deadline = None if request.timeout is None else self._clock() + max(0.0, request.timeout)
        if self.max_tokens is not None:
            request = dataclasses.replace(request, max_tokens=self.max_tokens)
        attempts = max(1, self.policy.attempts)
        attempt = 0
        lowered = False
        while True:
            attempt += 1
            try:
                reply = self._attempt(request, deadline)
            except ModelCoolingDown:
                raise  # someone else's outage: already counted once
            except ModelContextOverflow as exc:
                room = _room(exc, request.max_tokens)
                if lowered or room is None:
                    raise
                tell(request, {"kind": "max_tokens_lowered", "from": request.max_tokens, "to": room,
                                "window": exc.window, "prompt_tokens": exc.prompt_tokens})
                request, lowered, attempt = dataclasses.replace(request, max_tokens=room), True, attempt - 1
                continue
            except ModelTransient as exc:
                if attempt >= attempts:
                    # Every retry spent: an outage, not this task's fault. The whole colony holds
                    # off, longer with each consecutive outage, instead of each agent burning its tasks.
                    if self.cooldown is not None:
                        self.cooldown.outage(self.policy.outage_cooldown, self.policy.max_outage_cooldown)
                    raise
                wait = self._wait(exc, attempt)
                if deadline is not None:
                    left = deadline - self._clock()
                    if wait >= left:
                        # Waiting would leave no time to try again: say so now instead of sleeping.
                        why = f"{exc}; no time left to retry (would wait {wait:.2f}s, {max(0.0, left):.2f}s left)"
                        raise self._timed_out(request, why) from None
                tell(request, {"kind": "retry", "error": type(exc).__name__, "status": exc.status,
                                "wait": round(wait, 3), "attempt": attempt, "attempts": attempts,
                                "message": str(exc)[:500]})
                self._sleep(wait)
                continue
            if self.cooldown is not None and self._outages_seen:
                self.cooldown.recovered()
            return reply

    def _attempt(self, request: Request, deadline: float | None) -> Reply:
        if self.cooldown is not None:
            self._outages_seen = self.cooldown.outages() > 0  # only then does success write the file
            if self._outages_seen and self.cooldown.remaining() > 0:
                # An outage was declared (by us or another agent): give up this call now instead of
                # sleeping through a cool-down of minutes where nobody can stop us.
                raise ModelCoolingDown(f"{self.name}: not sent, the colony is cooling down after an outage "
                                       f"({self.cooldown.remaining():.0f}s left)")
            hold = self.cooldown.remaining()
            if deadline is not None and hold >= deadline - self._clock():
                raise self._timed_out(request, f"the colony cool-down ({hold:.1f}s) outlasts the time left")
            self.cooldown.wait()
        forwarded = request
        if deadline is not None:
            left = deadline - self._clock()
            if left <= 0:
                raise self._timed_out(request, "no time left to send it")
            forwarded = dataclasses.replace(request, timeout=left)
        try:
            return self.inner.complete(forwarded)
        except ModelRateLimited as exc:
            # Here rather than in _wait, so even the last attempt's 429 slows the colony down.
            # The full Retry-After goes into the file even when our own wait is capped, so the
            # next attempt (ours or anyone's) still honours it through cooldown.wait().
            if self.cooldown is not None:
                hold = exc.retry_after if exc.retry_after is not None else self.policy.default_cooldown
                self.cooldown.extend(min(hold, self.policy.max_cooldown))
            raise
        except ModelTransient as exc:
            # The SDK's own timeout on the last slice of our time is our deadline, not an outage.
            if deadline is not None and deadline - self._clock() <= 0.05 and exc.status is None:
                raise self._timed_out(request, str(exc)) from None
            raise
        except ModelTimeout as exc:
            tell(request, {"kind": "timeout", "timeout": request.timeout, "message": str(exc)[:500]})
            raise

    def _timed_out(self, request: Request, why: str) -> ModelTimeout:
        message = (f"{self.name}: the call did not finish within the {request.timeout or 0:.1f}s left for it ({why}); "
                   "the attempt stops by its time limit")
        tell(request, {"kind": "timeout", "timeout": request.timeout, "message": message[:500]})
        return ModelTimeout(message)

    def _wait(self, exc: ModelTransient, attempt: int) -> float:
        if exc.retry_after is None:
            # Full jitter: attempt n waits uniformly in [0, base * 2**(n-1)], capped.
            return random.uniform(0, min(self.policy.max_wait, self.policy.base_wait * 2.0 ** min(attempt - 1, 60)))
        # The server said when; add a little jitter so the colony does not return in lockstep.
        return min(self.policy.max_wait, exc.retry_after + random.uniform(0, 0.1 * exc.retry_after))

