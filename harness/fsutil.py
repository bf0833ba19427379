"""Durable file primitives shared by every writer of the environment.

State files are replaced whole (temp file + fsync + os.replace), so a reader sees the old or
the new content, never half of one. Logs are JSONL appended with a single write on an O_APPEND
descriptor, so concurrent writers never interleave inside a line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: str | bytes, fsync: bool = True) -> None:
    """Replace `path` whole. fsync=False is for batches that call os.sync() once afterwards."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, obj: Any, fsync: bool = True) -> None:
    atomic_write(path, json.dumps(obj, sort_keys=True) + "\n", fsync=fsync)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or torn (the caller decides what that means)."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None


def append_line(path: Path, obj: Any) -> None:
    append_lines(path, [obj])


def append_lines(path: Path, objs: list[Any], *, sort_keys: bool = True) -> None:
    """JSON lines appended in one write on an O_APPEND descriptor: another appender's line lands
    before or after them, never inside (lines are far below any filesystem's atomic-append limit).
    The one JSONL writer (events, the ledger, transcripts)."""
    data = "".join(json.dumps(o, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n"
                   for o in objs).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Tail:
    """A JSONL file read a piece at a time: each `read` parses only the lines appended since the
    last one (a line still being written waits for its newline), and says whether the file was
    truncated or replaced meanwhile, in which case it is read again from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen = b""  # the last bytes read: a log truncated and grown back past `offset` lacks them
        self.partial = b""

    @classmethod
    def resume(cls, path: Path, offset: int, seen: bytes, partial: bytes = b"") -> Tail:
        """A Tail that carries on where another one stopped (its offset, seen and partial)."""
        if len(seen) != min(offset, 64):
            raise ValueError(f"no Tail position: {len(seen)} bytes seen before offset {offset}")
        tail = cls(path)
        tail.offset, tail.seen, tail.partial = offset, seen, partial
        return tail

    def behind(self) -> int | None:
        """How many lines were completed since the last read, counted, not parsed; None when the
        file started over (truncated or replaced) since."""
        try:
            data = self._since()
        except FileNotFoundError:
            return None if self.offset else 0
        return None if data is None else data.count(b"\n")

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """(the objects appended since the last read, whether the file started over)."""
        lines, restarted = self.lines()
        return objects(lines), restarted

    def lines(self) -> tuple[list[bytes], bool]:
        """(the complete lines appended since the last read, unparsed; whether the file started over)."""
        try:
            chunk = self._since()
            restarted = chunk is None
            if restarted:
                self.offset, self.seen, self.partial = 0, b"", b""
                chunk = self._since()
        except FileNotFoundError:
            return [], False
        chunk = chunk or b""
        self.offset += len(chunk)
        self.seen = (self.seen + chunk)[-64:]
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        return lines, restarted

    def _since(self) -> bytes | None:
        """The bytes appended after `offset`; None when the file started over since: it is shorter,
        or the bytes just before `offset` are not the ones read. Raw descriptors and one pread:
        every agent reads the log before each claim, and with many claimers a buffered file's dozen
        syscalls cost more than parsing what was appended."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            start = self.offset - len(self.seen)
            data = os.pread(fd, max(0, size - start), start)
        finally:
            os.close(fd)
        return data[len(self.seen):] if size >= self.offset and data.startswith(self.seen) else None


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every complete, parseable JSON line; a torn or corrupt line is skipped, not fatal."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return objects(text.splitlines())


def objects(lines: list[str] | list[bytes]) -> list[dict[str, Any]]:
    """The dicts among ``lines``, one JSON value a line, a torn or corrupt line skipped. Parsed as
    one array first (a long log replays several times faster than line by line); when that fails
    or yields another count of values than lines, line by line."""
    kept = [line for line in lines if line.strip()]
    try:  # bytes from a Tail, text from read_lines
        values = json.loads(b"[" + b",".join(kept) + b"]" if kept and isinstance(kept[0], bytes)  # type: ignore[arg-type]
                            else "[" + ",".join(kept) + "]")  # type: ignore[arg-type]
    except ValueError:
        values = None
    if values is not None and len(values) == len(kept):
        return [v for v in values if isinstance(v, dict)]
    out = []
    for line in kept:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def flock_within(fd: int, patience: float, poll: float = 0.02) -> bool:
    """Take an exclusive flock on ``fd``, trying for ``patience`` seconds; False if it stayed busy."""
    give_up = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= give_up:
                return False
            time.sleep(poll)


def short_of_space(paths: list[Path], min_free_mb: float) -> str | None:
    """Why to claim nothing now: the first of ``paths`` on a file system with less than
    ``min_free_mb`` free (for an unprivileged writer), or None."""
    for path in paths if min_free_mb > 0 else []:
        try:
            st = os.statvfs(path)
        except OSError:  # not there (yet): nothing to judge
            continue
        free = st.f_bavail * st.f_frsize / 1e6
        if free < min_free_mb:
            return (f"only {free:.0f} MB free on the disk of {path} (min_free_mb: {min_free_mb:g}): claiming nothing "
                    "until there is more; free some (`stigmergy gc`, old worktrees, logs) or lower min_free_mb")
    return None


def out_of_space(e: BaseException) -> bool:
    """``e`` says the disk (or the user's quota) is full: an OSError's errno, or git's words."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e) or "Disk quota exceeded" in str(e)
