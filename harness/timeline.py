"""The colony's pace, folded from its event log: when it started, what landed when, how fast tasks
finish and so when the rest should be through (the ETA that `status` and the launcher show).

A `Timeline` keeps only what those questions need (timestamps, the last landing, a few counts),
not the events themselves, so a launcher that follows the log all night holds a list of floats.
`EventTail` feeds it only what was appended since the last read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.fsutil import Tail

RATE_WINDOW_S = 1800.0  # the recent rate: tasks finished over the last 30 minutes ...
RATE_MIN_RECENT = 3  # ... when at least this many finished in it; else the run's average


@dataclass
class Timeline:
    first_ts: float | None = None
    launch_ts: float | None = None  # the latest `launch` event: this run's start
    landings: list[float] = field(default_factory=list)  # `done` with a commit: work put on main
    finished: list[float] = field(default_factory=list)  # `done` of any kind and `fail`: left the backlog
    last_landing: dict[str, Any] | None = None
    landed_tasks: int = 0  # tasks whose work is on main: landed, or through their conflict task
    deferred: int = 0  # conflicts turned into tasks
    reaped: int = 0

    def feed(self, ev: dict[str, Any]) -> None:
        try:
            ts = float(ev.get("ts", 0))
        except (TypeError, ValueError):
            return
        kind = ev.get("event")
        if self.first_ts is None:
            self.first_ts = ts
        if kind == "launch":
            self.launch_ts = ts
        elif kind == "done":
            self.finished.append(ts)
            self.landed_tasks += bool(ev.get("commit") or ev.get("via"))
            if ev.get("commit"):
                self.landings.append(ts)
                self.last_landing = {"ts": ts, "task": ev.get("task"), "commit": ev.get("commit"),
                                     "agent": ev.get("agent")}
        elif kind == "fail":
            self.finished.append(ts)
        elif kind == "defer":
            self.deferred += 1
        elif kind == "reap":
            self.reaped += 1

    @property
    def started(self) -> float | None:
        return self.launch_ts if self.launch_ts is not None else self.first_ts

    def pace(self, remaining: int, now: float) -> dict[str, Any]:
        """Landings in the last hour and since the start, the finishing rate and the ETA of the
        `remaining` (pending + active) tasks at that rate; None where there is nothing to go on."""
        start = self.started
        since = [t for t in self.finished if start is not None and t >= start]
        rate, window = None, None
        if start is not None and since:
            span = max(min(RATE_WINDOW_S, now - start), 1.0)
            recent = sum(1 for t in since if t >= now - span)
            if recent >= RATE_MIN_RECENT:
                rate, window = recent / span, "last 30 min" if span >= RATE_WINDOW_S else "since start"
            else:  # too few lately to judge by: the run's average is the steadier guess
                rate, window = len(since) / max(now - start, 1.0), "since start"
        return {
            "started_at": start, "elapsed_s": round(now - start, 1) if start is not None else None,
            "landed_last_hour": sum(1 for t in self.landings if t >= now - 3600),
            "landed_since_start": sum(1 for t in self.landings if start is not None and t >= start),
            "finished_since_start": len(since), "landed_tasks": self.landed_tasks,
            "rate_per_hour": round(rate * 3600, 2) if rate else None, "rate_window": window,
            "eta_s": round(remaining / rate, 1) if rate and remaining else (0.0 if rate else None),
            "last_landing": self.last_landing,
        }


class EventTail:
    """`events.jsonl` folded as it grows: each `read` feeds the Timeline only what was appended
    since the last one; a log that was replaced is folded again from its start, afresh."""

    def __init__(self, path: Path) -> None:
        self.tail = Tail(path)
        self.timeline = Timeline()

    def read(self) -> Timeline:
        events, restarted = self.tail.read()
        if restarted:
            self.timeline = Timeline()
        for ev in events:
            self.timeline.feed(ev)
        return self.timeline
