"""Retries for model calls, and the colony-wide cool-down a 429 imposes.

Providers make exactly one HTTP attempt and map what went wrong to ``ModelTransient`` (retry),
``ModelAuthError`` (do not) or ``ModelError`` (do not); ``RetryingModel`` wraps any provider and
retries the transient ones with tenacity. A 429 seen by one agent extends a shared ``CoolDown``
file that every agent waits out before sending, so the whole colony backs off together instead
of each agent hammering the endpoint on its own schedule.
"""

from __future__ import annotations

import email.utils
import fcntl
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from harness import fsutil
from harness.errors import ModelAuthError, ModelError, ModelRateLimited, ModelTransient
from harness.models.base import Model, Reply, Request

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
AUTH_STATUSES = frozenset({400, 401, 403})


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


def error_for_status(status: int, detail: str, headers: Mapping[str, str] | None = None) -> ModelError:
    """The harness error for an HTTP failure status. ``detail`` must already be redacted."""
    if status == 429:
        return ModelRateLimited(detail, status=status, retry_after=parse_retry_after(headers))
    if status in RETRY_STATUSES or status >= 500:
        return ModelTransient(detail, status=status, retry_after=parse_retry_after(headers))
    if status in AUTH_STATUSES:
        return ModelAuthError(detail)
    return ModelError(detail)


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

    def until(self) -> float:
        """The epoch before which nobody should send; 0 when there is no (readable) file."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            value = float(data["until"])
        except (OSError, ValueError, KeyError, TypeError):
            # Missing or torn file means "no cool-down": a broken file must not stall the colony.
            return 0.0
        return value if math.isfinite(value) else 0.0

    def extend(self, seconds: float) -> float:
        """Make ``until`` at least now + ``seconds``; never moves it earlier. Returns ``until``."""
        target = self._clock() + max(0.0, seconds)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.until()
            if target <= current:
                return current
            self._write(target)
            return target
        finally:
            os.close(lock_fd)  # closing releases the flock

    def _write(self, until: float) -> None:
        fsutil.write_json(self.path, {"until": until})

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


class RetryingModel:
    """Any ``Model`` made patient: retries ``ModelTransient`` and honours the colony cool-down."""

    def __init__(
        self,
        inner: Model,
        *,
        policy: RetryPolicy | None = None,
        cooldown: CoolDown | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy or RetryPolicy()
        self.cooldown = cooldown
        self._sleep = sleep
        self._backoff = wait_random_exponential(multiplier=self.policy.base_wait, max=self.policy.max_wait)

    def __repr__(self) -> str:
        return f"RetryingModel({self.inner!r}, policy={self.policy!r}, cooldown={self.cooldown!r})"

    def complete(self, request: Request) -> Reply:
        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.policy.attempts)),
            wait=self._wait,
            retry=retry_if_exception_type(ModelTransient),
            sleep=self._sleep,
            reraise=True,  # callers see our ModelTransient, never tenacity's RetryError
        )
        return retrying(self._attempt, request)

    def _attempt(self, request: Request) -> Reply:
        if self.cooldown is not None:
            self.cooldown.wait()
        try:
            return self.inner.complete(request)
        except ModelRateLimited as exc:
            # Here rather than in _wait, so even the last attempt's 429 slows the colony down.
            # The full Retry-After goes into the file even when our own wait is capped, so the
            # next attempt (ours or anyone's) still honours it through cooldown.wait().
            if self.cooldown is not None:
                hold = exc.retry_after if exc.retry_after is not None else self.policy.default_cooldown
                self.cooldown.extend(min(hold, self.policy.max_cooldown))
            raise

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = self._backoff(state)
        retry_after = exc.retry_after if isinstance(exc, ModelTransient) else None
        if retry_after is None:
            return backoff
        # The server said when; add a little jitter so the colony does not return in lockstep.
        return min(self.policy.max_wait, retry_after + random.uniform(0, 0.1 * retry_after))
