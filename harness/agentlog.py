"""An agent's log, ``agents/<id>/agent.log``: its rotation, its last lines, and following it.

The launcher appends each agent's stdout and stderr to the log through a descriptor the agent
holds for its whole life, so the log can only be rotated when the agent (re)starts: a rename
while it runs would carry its output along into ``agent.log.1``, and copying then truncating
would lose what it writes in between. At start, a log over ``max_bytes`` becomes
``agent.log.1`` (``.1`` becomes ``.2`` ... the oldest of ``keep`` is dropped).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

KEEP = 3  # rotated logs kept beside the current one
_BLOCK = 64 * 1024


def rotate(log: Path, max_bytes: int, keep: int = KEEP) -> bool:
    """Rotate ``log`` when it is larger than ``max_bytes`` (0: never); True when it was."""
    try:
        if max_bytes <= 0 or log.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(keep, 0, -1):  # .keep is overwritten by .keep-1: the oldest is dropped
        older = log.with_name(f"{log.name}.{n - 1}") if n > 1 else log
        try:
            os.replace(older, log.with_name(f"{log.name}.{n}"))
        except FileNotFoundError:
            pass
    return True


def last_lines(log: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of the log, reaching into ``agent.log.1`` when the current file
    has fewer (a log that was just rotated); each line keeps its newline."""
    lines: list[bytes] = []
    for path in (log, log.with_name(log.name + ".1")):
        if len(lines) >= count:
            break
        lines = _tail(path, count - len(lines)) + lines
    return lines


def _tail(path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of one file, read backwards a block at a time (a log of
    gigabytes is not read whole)."""
    if count <= 0:
        return []
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    with fh:
        end = fh.seek(0, os.SEEK_END)
        data, pos = b"", end
        while pos > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.splitlines(keepends=True)
    return lines[-count:]


def follow(log: Path, write: Callable[[bytes], None], poll: float = 0.2,
           stop: Callable[[], bool] = lambda: False) -> None:
    """Write what is appended to ``log`` from its current end, for ever (until ``stop()`` or
    KeyboardInterrupt). Survives rotation: when the path names another file (renamed away, a
    new one started) the rest of the old one is written, then the new one from its start; a
    file that shrank (truncated) is read again from its start."""
    fh = _open(log)
    if fh is not None:
        fh.seek(0, os.SEEK_END)
    try:
        while not stop():
            if fh is None:
                fh = _open(log)
                if fh is None:
                    time.sleep(poll)
                    continue
            chunk = fh.read(_BLOCK)
            if chunk:
                write(chunk)
                continue
            try:
                now = os.stat(log)
            except FileNotFoundError:
                time.sleep(poll)  # between the rename and the new file: keep the old one
                continue
            mine = os.fstat(fh.fileno())
            if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
                rest = fh.read()  # rotated: what was written before the rename, then the new file
                if rest:
                    write(rest)
                fh.close()
                fh = _open(log)
                continue
            if now.st_size < fh.tell():
                fh.seek(0)  # truncated in place
                continue
            time.sleep(poll)
    finally:
        if fh is not None:
            fh.close()


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None
