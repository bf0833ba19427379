"""One live process per name: an exclusive flock on a file that says who holds it.

    agents/<id>/lock    held by the agent process for its whole run: one process per agent id
    launcher.lock       held by the launcher: one launcher per colony

The kernel drops an flock when the last descriptor of its open file is closed, so a holder killed
with SIGKILL frees it at once: there is no stale lock to judge by age or pid. The descriptor is
opened close-on-exec (Python's default, spelled out here), so the holder's children (the model's
commands, verify, git) never inherit it and cannot keep a dead agent's id taken. The file's
content (pid, host, started) only names the holder; whether it is held is asked of the kernel.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import fsutil


def agent_lock(home: Path, agent: str) -> Path:
    return home / "agents" / agent / "lock"


def launcher_lock(home: Path) -> Path:
    return home / "launcher.lock"


@dataclass(frozen=True)
class Holder:
    pid: int  # 0 when the holder has not written its name yet (or wrote something unreadable)
    host: str
    started: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "?"
        return f"pid {self.pid or '?'} on {self.host} since {since}"


class PidLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, patience: float = 1.0) -> Holder | None:
        """Take the lock and write our name into it: None when it is ours, else who holds it.

        A probe (:func:`holder`) holds the lock shared for a moment, so a busy lock is tried again
        for `patience` seconds before it counts as held by someone else."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if not fsutil.flock_within(fd, patience, poll=0.05):
            try:
                return _read(fd)
            finally:
                os.close(fd)
        me = json.dumps(asdict(Holder(os.getpid(), socket.gethostname(), time.time()))).encode()
        os.pwrite(fd, me, 0)
        os.ftruncate(fd, len(me))
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def holder(path: Path) -> Holder | None:
    """Who holds the lock at `path` now, or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> Holder:
    """The holder's name; a holder that has only just taken the lock may not have written it yet."""
    for _ in range(20):
        try:
            data = json.loads(os.pread(fd, 4096, 0))
            return Holder(int(data["pid"]), str(data["host"]), float(data["started"]))
        except (ValueError, KeyError, TypeError):
            time.sleep(0.01)
    return Holder(0, "an unknown host", 0.0)


def agent_processes(repo: Path) -> dict[str, list[int]]:
    """Live `... agent run --id X --repo <repo>` processes of this colony, by id, from /proc.

    A child the agent has forked but not yet exec'd (a model command starting) still shows the
    agent's command line: it is the agent's own, not a second agent, so it is left out."""
    candidates: dict[int, tuple[str, int]] = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0")]
            ppid = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        runs = any(argv[i:i + 2] == ["agent", "run"] for i in range(len(argv)))
        if runs and "--id" in argv and str(repo) in argv and running(int(cmdline.parent.name)):
            candidates[int(cmdline.parent.name)] = (argv[argv.index("--id") + 1], ppid)
    found: dict[str, list[int]] = {}
    for pid, (agent, ppid) in sorted(candidates.items()):
        if ppid not in candidates:
            found.setdefault(agent, []).append(pid)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers where pid 1 does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
