"""What the launcher says: on its terminal while it has one, and always in ``.stigmergy/launcher.log``.

A night outlives terminals. When the terminal goes (SIGHUP, or a write failing with EIO or EPIPE)
the launcher stops writing to it, says why in the log, and points the dead descriptor at the log
too, so a stray warning or traceback is kept instead of failing. Each log line carries the date,
the time and the launcher's pid: several launchers over a night append to one file.

On a terminal the launcher also keeps a progress line at the bottom, redrawn in place (``\r``);
every line it says is written above it. Without a terminal the progress comes as plain lines now
and then instead (see progress.py), never as carriage returns in a log.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import TextIO

from harness.textfmt import clip

CLEAR_LINE = "\r\x1b[K"  # back to the start of the line and erase it


class LauncherLog:
    def __init__(self, path: Path, terminal: TextIO | None, repo: Path) -> None:
        self.path, self.terminal, self.repo = path, terminal, repo
        self.live: str | None = None  # the progress line drawn (without a newline) on a terminal
        try:
            self.tty = terminal is not None and terminal.isatty()
        except (OSError, ValueError):
            self.tty = False

    def say(self, text: str) -> None:
        self._append(text)
        if self.terminal is None:
            return
        live = self.live
        self._write((CLEAR_LINE if live else "") + f"{time.strftime('%H:%M:%S')} stigmergy: {text}\n")
        if live is not None:
            self.progress(live)  # the line said goes above it; the progress line stays the last

    def progress(self, text: str, record: bool = False) -> None:
        """The live progress line, redrawn in place on a terminal. `record` (which the caller sets
        now and then, not each time) also keeps it as a plain line: in the log, and said on the
        terminal's stand-in (a pipe, a file) where nothing can be redrawn."""
        if not self.tty:
            if record:
                self.say(f"progress: {text}")
            return
        if record:
            self._append(f"progress: {text}")
        if self.terminal is not None:
            self.live = text
            self._write(CLEAR_LINE + _fit(text, self.terminal))

    def end_progress(self) -> None:
        """Erase the live line (the lines that follow, a summary, start where it was)."""
        if self.live is not None and self.terminal is not None:
            self.live = None
            self._write(CLEAR_LINE)

    def _write(self, data: str) -> None:
        if self.terminal is None:
            return
        try:
            self.terminal.write(data)
            self.terminal.flush()
        except OSError as e:  # EIO from a hung-up terminal, EPIPE from a pipe nobody reads
            self.terminal_gone(f"{errno.errorcode.get(e.errno or 0, type(e).__name__)} writing to it")

    def terminal_gone(self, why: str) -> None:
        terminal, self.terminal, self.live = self.terminal, None, None
        if terminal is None:
            return
        try:
            fd = terminal.fileno()
            log = self._open()
            try:
                for target in (1, 2):  # stdout too when it is the same terminal
                    if target == fd or os.path.sameopenfile(target, fd):
                        os.dup2(log, target)
            finally:
                os.close(log)
        except (OSError, ValueError):  # no descriptor (an in-memory stream): nothing to redirect
            pass
        self.say(f"terminal closed ({why}): the colony carries on; stop it with `stigmergy stop --repo {self.repo}`")

    def _append(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} launcher {os.getpid()}: {text}\n".encode()
        try:
            fd = self._open()
            try:
                os.write(fd, line)  # one write on O_APPEND: lines of two launchers never interleave
            finally:
                os.close(fd)
        except OSError:
            pass  # a full disk must not end supervision

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _fit(text: str, terminal: TextIO) -> str:
    """One terminal row at most: a wrapped line could not be redrawn in place."""
    try:
        width = os.get_terminal_size(terminal.fileno()).columns
    except (OSError, ValueError):
        width = 80
    return clip(text, width - 1)
