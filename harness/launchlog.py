"""What the launcher says: on its terminal while it has one, and always in ``.stigmergy/launcher.log``.

A night outlives terminals. When the terminal goes (SIGHUP, or a write failing with EIO or EPIPE)
the launcher stops writing to it, says why in the log, and points the dead descriptor at the log
too, so a stray warning or traceback is kept instead of failing. Each log line carries the date,
the time and the launcher's pid: several launchers over a night append to one file.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import TextIO


class LauncherLog:
    def __init__(self, path: Path, terminal: TextIO | None, repo: Path) -> None:
        self.path, self.terminal, self.repo = path, terminal, repo

    def say(self, text: str) -> None:
        self._append(text)
        if self.terminal is None:
            return
        try:
            print(f"{time.strftime('%H:%M:%S')} stigmergy: {text}", file=self.terminal, flush=True)
        except OSError as e:  # EIO from a hung-up terminal, EPIPE from a pipe nobody reads
            self.terminal_gone(f"{errno.errorcode.get(e.errno or 0, type(e).__name__)} writing to it")

    def terminal_gone(self, why: str) -> None:
        terminal, self.terminal = self.terminal, None
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
