"""The launcher's progress: done/total, agents alive, cost and ETA, while the colony works.

On a terminal the line is redrawn in place every few seconds. Without one (nohup, a log file, CI)
it is said as a plain, timestamped line when the count of finished tasks changes, and at least
once a minute, so a log shows the pace without being flooded. Either way the log file gets those
plain lines. Computing it costs folder listings, one heartbeat per agent, the ledgers, and only
the new lines of the event log.
"""

from __future__ import annotations

import time

from harness import status
from harness.colony import Colony
from harness.launchlog import LauncherLog
from harness.timeline import EventTail

EVERY = 2.0  # seconds between two computations (and redraws)
QUIET_EVERY = 60.0  # the longest stretch without a plain line


class Progress:
    def __init__(self, colony: Colony, log: LauncherLog, every: float = EVERY,
                 quiet_every: float = QUIET_EVERY) -> None:
        self.colony, self.log = colony, log
        self.every, self.quiet_every = every, quiet_every
        self.tail = EventTail(colony.store.events_path)
        self.next_at = 0.0
        self.said_at = float("-inf")
        self.said: tuple[int, int] | None = None  # (done, failed) when a plain line was last said

    def tick(self, force: bool = False) -> None:
        """Called on every turn of the supervision loop; does something every `every` seconds."""
        now = time.monotonic()
        if now < self.next_at and not force:
            return
        self.next_at = now + self.every
        try:
            snap = status.progress(self.colony, self.tail.read())
        except (OSError, ValueError):  # a folder or ledger mid-change: the next turn will do
            return
        counts = (snap["tasks"]["done"], snap["tasks"]["failed"])
        record = force or counts != self.said or now - self.said_at >= self.quiet_every
        if record:
            self.said, self.said_at = counts, now
        self.log.progress(status.progress_line(snap), record=record)

    def finish(self) -> None:
        """The last count said as a line, and the live line taken away before the summary."""
        self.tick(force=True)
        self.log.end_progress()
