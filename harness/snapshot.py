"""A pool index saved in pick order, so that a one-shot `task claim` reads the head of one file
instead of replaying the whole event log (2 s at 100k pending tasks).

    index/pool.snap            the index of agents with no role
    index/pool-<role>.snap     one per role: whether a task suits the role is part of each entry

Line 1 is a JSON header, line 2 the index's other fields, then one JSON array per pending task
(pool.Entry.row), sorted exactly as the pool's heap orders them, best first, then the trailer
{"end": <count>}. The header is small, because every rescan of every agent reads it to judge the
snapshot's lag (with 10k active tasks in it, that parse cost 26 ms); it holds:

    format       FORMAT, bumped whenever rows or their meaning change
    key          what the order depends on besides the tasks (priority weights, role, prefers:)
    tail         the position in events.jsonl it reflects: offset, the 64 bytes before it (so a
                 log truncated or replaced since is noticed, as fsutil.Tail does) and a line that
                 was still being written there
    count        the number of rows

and line 2, read only by a pool that starts from the snapshot:

    active       rows of the active tasks (their outputs, for the overlap penalty)
    owners       the claim event of each active task (reaping trusts it, as a full index does)
    resolved_by  original task -> its merge_conflict tasks

Done tasks are not listed: a pool started from a snapshot asks tasks/done/ about a dependency.

Freshness: a snapshot is used only when its format and key match the pool's, it ends with its
trailer, the log is still the one it read, and at most MAX_LAG events were appended since (they
are applied on top of it). Anything else, a torn or unreadable file included, is ignored and the
index is built in full, as without a snapshot. Whoever holds a full index rewrites the snapshot
when it lags by more than REWRITE_LAG, one writer at a time (a non-blocking flock), atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from harness import fsutil
from harness.fsutil import Tail

FORMAT = 2  # 2: the index's fields moved out of the header, to line 2
# A one-shot claim applies every event appended since the snapshot, 9-12 us each (an `add` for a
# role with `prefers:` is the dearest): at most ~60 ms on top of the ~125 ms a claim from a fresh
# snapshot takes, inside its 200 ms budget. Further behind, a full build (which writes a new one).
MAX_LAG = 5_000
# Writers refresh the snapshot well before readers would give up on it, so that one-shot claims
# almost never pay for a full build while long-lived agents are running.
REWRITE_LAG = 1_000


class Torn(ValueError):
    """A row that is no row: the file was damaged after it was written."""


@dataclass
class Snapshot:
    path: Path
    header: dict[str, Any]  # with line 2's fields, once load() read them
    tail: Tail  # resumed at the position the snapshot reflects: reading it applies what came since
    behind: int  # events appended since
    file: BinaryIO  # open just past the header (load: past line 2)
    ino: int  # the file's inode: whether `path` still names it

    def rows(self) -> Iterator[list[Any]]:
        """The pending entries, best first, each parsed when it is asked for; Torn for a damaged one."""
        with self.file as f:
            for _ in range(int(self.header["count"])):
                try:
                    row = json.loads(f.readline())
                except ValueError:
                    row = None
                if not isinstance(row, list):
                    raise Torn(f"{f.name!r}: a damaged row")
                yield row

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        """It turned out damaged: remove it, unless it was replaced meanwhile, so that the next
        full index writes a new one (a lag check reads only the header and the trailer)."""
        self.close()
        try:
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def path(home: Path, role: str | None) -> Path:
    return home / "index" / ("pool.snap" if role is None else f"pool-{role}.snap")


def load(file: Path, key: dict[str, Any], log: Path, max_lag: int = MAX_LAG) -> Snapshot | None:
    """The snapshot in `file` if it is fresh for an index ordered by `key` over `log`, else None."""
    snap = _open(file, key, log)
    if snap is None:
        return None
    if snap.behind > max_lag:
        snap.close()
        return None
    try:
        fields = json.loads(snap.file.readline())
        if not isinstance(fields, dict):
            raise ValueError("line 2 is no object")
    except ValueError:  # damaged after it was written; the lag check reads line 1 only, so
        snap.discard()  # remove it, else no full index would ever write a new one
        return None
    snap.header.update(fields)
    return snap


def lag(file: Path, key: dict[str, Any], log: Path) -> int | None:
    """Events appended since the snapshot in `file`; None when it is missing or of no use."""
    snap = _open(file, key, log)
    if snap is None:
        return None
    snap.close()
    return snap.behind


def keep(file: Path, key: dict[str, Any], log: Path, build: Callable[[], tuple[Tail, dict[str, Any], list[Any]]],
         force: bool = False) -> bool:
    """Rewrite the snapshot from `build()` (the tail, header fields and rows of a full index) when
    it is missing, of no use or lags by more than REWRITE_LAG, or when `force`d (it turned out
    damaged, or the index knows a task no event told of); unless another process is writing it now. True when written."""
    if not force and _fresh(file, key, log):
        return False
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{file}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False  # a cache: a full disk or a read-only folder must not stop a claim
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # freed by the kernel if the writer dies
        except BlockingIOError:
            return False  # someone is writing it: theirs will do
        if not force and _fresh(file, key, log):
            return False  # written while we were deciding
        tail, fields, rows = build()
        save(file, tail, key, fields, rows)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def save(file: Path, tail: Tail, key: dict[str, Any], fields: dict[str, Any], rows: list[Any]) -> None:
    """Write it whole (temp file + fsync + rename): a reader sees the old snapshot or the new one."""
    header = {"format": FORMAT, "key": key, "count": len(rows),
              "tail": {"offset": tail.offset, "seen": tail.seen.hex(), "partial": tail.partial.hex()}}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    lines = [dumps(header), dumps(fields), *map(dumps, rows), dumps({"end": len(rows)}), ""]
    fsutil.atomic_write(file, "\n".join(lines))


def _fresh(file: Path, key: dict[str, Any], log: Path) -> bool:
    behind = lag(file, key, log)
    return behind is not None and behind <= REWRITE_LAG


def _open(file: Path, key: dict[str, Any], log: Path) -> Snapshot | None:
    """The snapshot in `file`, open after its header, if an index ordered by `key` over `log` can
    use it: its format and key, its trailer (it was not cut short) and `log` (not replaced since)."""
    try:
        f = open(file, "rb")
    except OSError:
        return None
    try:
        header = json.loads(f.readline())
        if isinstance(header, dict) and header.get("format") == FORMAT and header.get("key") == key:
            start, t = f.tell(), header["tail"]
            tail = Tail.resume(log, int(t["offset"]), bytes.fromhex(t["seen"]), bytes.fromhex(t["partial"]))
            behind = tail.behind() if _ends(f, int(header["count"])) else None
            if behind is not None:
                f.seek(start)
                return Snapshot(file, header, tail, behind, f, os.fstat(f.fileno()).st_ino)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    f.close()
    return None


def _ends(f: BinaryIO, count: int) -> bool:
    """The file ends with its trailer: it was not cut short."""
    size = os.fstat(f.fileno()).st_size
    f.seek(max(0, size - 64))
    return f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1] == json.dumps({"end": count}, separators=(",", ":")).encode()
