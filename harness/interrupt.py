"""Abort a blocking call from the outside: a deadline, or being told to stop.

    with interruptible(agent.must_abort, deadline=time.monotonic() + 300):
        reply = model.complete(request)        # raises errors.Interrupted("time" | "stop")

A model call can block for minutes in a socket read or a retry's sleep, where no check of ours
runs. Here a SIGALRM timer (``setitimer(ITIMER_REAL)``) wakes every ``poll`` seconds (and exactly
at the deadline) and its handler raises ``Interrupted``. Per PEP 475 a syscall interrupted by a
signal is retried only when the handler returns, so a raising handler really ends a blocking read;
and ``Interrupted`` being a BaseException, the SDKs' ``except Exception`` retry paths let it through
while httpx closes the connection on the way out (as for KeyboardInterrupt).

Only the main thread receives signals, so in any other thread this is a no-op: the block runs
unguarded, as it would without us. The previous SIGALRM handler and timer are restored on exit.

Once the block has exited the handler never raises. One edge remains: a signal that arrived just
as the block's last statement finished may be handled before ``__exit__`` disarms, so the
exception escapes the ``with`` although the block completed. Callers that must keep a finished
result assign it to a variable inside the block and check it when catching ``Interrupted``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from harness.errors import Interrupted

MIN_WAKE = 0.001  # setitimer(0) disarms: the shortest wait we ask for


@contextlib.contextmanager
def interruptible(should_stop: Callable[[], bool], deadline: float | None,
                  poll: float = 1.0) -> Iterator[None]:
    """Run the block; raise Interrupted("time") once ``time.monotonic()`` passes ``deadline``
    (None: never), Interrupted("stop") once ``should_stop()`` is true, checked every ``poll`` s."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = True

    def wake_in() -> float:
        if deadline is None:
            return poll
        return max(MIN_WAKE, min(poll, deadline - time.monotonic()))

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if not armed:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise Interrupted("time")
        try:
            stop = should_stop()
        except Exception:  # a check that fails (a torn file) must not become the call's error
            stop = False
        if stop:
            raise Interrupted("stop")
        signal.setitimer(signal.ITIMER_REAL, wake_in())  # one-shot, re-armed: handlers never nest

    previous = signal.signal(signal.SIGALRM, on_alarm)
    began, timer = time.monotonic(), signal.getitimer(signal.ITIMER_REAL)
    try:  # armed inside the try: an alarm due at once still finds the handler put back
        signal.setitimer(signal.ITIMER_REAL, wake_in())
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: a handler not set from Python; the default is the closest we can give back.
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if timer[0] > 0:  # someone else's timer was running: give it back what it had left
            left = timer[0] - (time.monotonic() - began)
            signal.setitimer(signal.ITIMER_REAL, max(MIN_WAKE, left), timer[1])
