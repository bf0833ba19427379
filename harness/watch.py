"""`status --watch [SECONDS]`: the status (of a nest too), again and again, until Ctrl-C (which ends it with exit 0).

In a terminal the whole status is redrawn in place (rich's Live display, imported only here); to a
pipe or a file (`status --watch 60 >> night.log`) it is one timestamped progress line per interval,
which stays readable in a log. The event log is followed incrementally and the worktrees' disk use,
the one costly figure, is measured at most every DISK_EVERY seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from harness import status
from harness.colony import Colony
from harness.errors import UsageError
from harness.timeline import EventTail

if TYPE_CHECKING:
    from harness.nest import Nest

DISK_EVERY = 30.0


class _Snapshots:
    """`status.snapshot` for a loop: the event log read once and then only its new lines."""

    def __init__(self, colony: Colony) -> None:
        self.colony, self.tail = colony, EventTail(colony.store.events_path)
        self.disk: dict[str, Any] | None = None
        self.disk_at = float("-inf")

    def take(self, disk: bool = True) -> dict[str, Any]:
        measure = disk and time.monotonic() - self.disk_at >= DISK_EVERY
        snap = status.snapshot(self.colony, disk=measure, tail=self.tail)
        if measure:
            self.disk, self.disk_at = snap["disk"], time.monotonic()
        snap["disk"] = self.disk
        return snap


def watch(colony: Colony, interval: float, out: TextIO | None = None) -> int:
    snaps = _Snapshots(colony)
    # The line has no disk figure: it is not measured for it.
    return loop(lambda: status.render(snaps.take()), lambda: status.progress_line(snaps.take(disk=False)),
                interval, out)


def watch_nest(nest: Nest, interval: float, out: TextIO | None = None) -> int:
    """A nest's survey, again and again: each look is one listing of the nest and its beats."""
    return loop(lambda: status.render_nest(nest.survey()), lambda: status.nest_line(nest.survey()), interval, out)


def loop(frame: Callable[[], str], line: Callable[[], str], interval: float, out: TextIO | None = None) -> int:
    """``frame()`` redrawn in a terminal, else ``line()`` timestamped, every ``interval`` seconds."""
    if interval <= 0:
        raise UsageError(f"--watch takes a positive number of seconds, got {interval:g}")
    out = out if out is not None else sys.stdout
    try:
        if out.isatty():
            _live(frame, interval, out)
        else:
            while True:
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line()}", file=out, flush=True)
                time.sleep(interval)
    except KeyboardInterrupt:  # the way to end it: quietly
        pass
    except BrokenPipeError:  # `status --watch | head`: the reader has gone
        pass
    return 0


def _live(frame: Callable[[], str], interval: float, out: TextIO) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    def text() -> Text:
        return Text(frame(), no_wrap=True, overflow="ellipsis")

    console = Console(file=out)
    with Live(text(), console=console, auto_refresh=False, vertical_overflow="crop") as live:
        while True:
            time.sleep(interval)
            live.update(text(), refresh=True)
