"""`status --watch [SECONDS]`: the status, again and again, until Ctrl-C (which ends it with exit 0).

In a terminal the whole status is redrawn in place (rich's Live display, imported only here); to a
pipe or a file (`status --watch 60 >> night.log`) it is one timestamped progress line per interval,
which stays readable in a log. The event log is followed incrementally and the worktrees' disk use,
the one costly figure, is measured at most every DISK_EVERY seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from harness import status
from harness.colony import Colony
from harness.errors import UsageError
from harness.timeline import EventTail

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
    if interval <= 0:
        raise UsageError(f"--watch takes a positive number of seconds, got {interval:g}")
    out = out if out is not None else sys.stdout
    snaps = _Snapshots(colony)
    try:
        if out.isatty():
            _live(snaps, interval, out)
        else:
            while True:
                line = status.progress_line(snaps.take(disk=False))  # the line has no disk figure
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=out, flush=True)
                time.sleep(interval)
    except KeyboardInterrupt:  # the way to end it: quietly
        pass
    except BrokenPipeError:  # `status --watch | head`: the reader has gone
        pass
    return 0


def _live(snaps: _Snapshots, interval: float, out: TextIO) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    def frame() -> Text:
        return Text(status.render(snaps.take()), no_wrap=True, overflow="ellipsis")

    console = Console(file=out)
    with Live(frame(), console=console, auto_refresh=False, vertical_overflow="crop") as live:
        while True:
            time.sleep(interval)
            live.update(frame(), refresh=True)
