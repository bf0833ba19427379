"""The colony's deadline (``--max-hours``), kept in the environment so it holds with no launcher.

``.stigmergy/deadline.json`` is ``{"until": <epoch seconds>, "launcher": <pid>}``. The launcher
writes it at launch (and removes one left from an earlier run, like STOP); every agent looks at it
before each claim and while idle, and once it has passed lays the plain STOP pheromone (finish the
current task, then exit) and stops. A launcher killed by SIGKILL or a closed terminal therefore
ends supervision, never the night's limit. A look costs one stat: the file is re-read only when
it changes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import fsutil


def deadline_path(home: Path) -> Path:
    return home / "deadline.json"


def write(home: Path, until: float, launcher: int) -> None:
    fsutil.write_json(deadline_path(home), {"until": until, "launcher": launcher})


def clear(home: Path, launcher: int | None = None) -> bool:
    """Remove the deadline (only if `launcher` wrote it, when given); whether one was removed."""
    path = deadline_path(home)
    if launcher is not None:
        data = fsutil.read_json(path)
        if not isinstance(data, dict) or data.get("launcher") != launcher:
            return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def lay_stop(stop_path: Path) -> bool:
    """Create the plain STOP, unless a STOP is already there: created exclusively, so a
    ``stop --now`` laid meanwhile is never softened into a plain one. Whether we laid it."""
    try:
        os.close(os.open(stop_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


class Watch:
    """The deadline as one agent sees it; cheap enough to ask every 0.2 s."""

    def __init__(self, home: Path) -> None:
        self.path = deadline_path(home)
        self._seen: tuple[int, int, int] | None = None
        self._until: float | None = None

    def until(self) -> float | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen = self._until = None
            return None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            data = fsutil.read_json(self.path)
            until = data.get("until") if isinstance(data, dict) else None
            # A file that is not a deadline (hand-edited, torn) sets none; it is read again when it changes.
            self._until = float(until) if isinstance(until, (int, float)) and not isinstance(until, bool) else None
            self._seen = seen
        return self._until

    def passed(self) -> bool:
        until = self.until()
        return until is not None and time.time() >= until
