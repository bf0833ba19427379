"""Leases: who holds a task (or a token), until when, and how a stale holder is broken.

Layout under the colony's home:

    locks/<id>.lock.<generation>         a claim generation: a symlink whose target is its owner (JSON)
    locks/<id>.lock.<generation>.released   its end (a symlink to why), once it is over
    agents/<agent>/heartbeat.json        the lease: refreshed every few seconds

Claims are a generation compare-and-swap. A task has one lock entry per generation (000001,
000002, ...); the highest is current and is held until its `.released` entry exists. Claiming a
free task, breaking a stale claim and reaping all do the same thing: create generation N+1 with
`symlink(2)`, which exactly one process can win, and whose target carries the owner record, so a
generation is never seen without its owner. (It was a folder made by `mkdir` holding owner.json:
two directory creations per claim, on ext4 ~250 µs of CPU each against ~40 µs for a symlink, most
of a claim's cost.) Generations are never deleted, so a slow process that read N long ago can
never win N+1 after others moved on (no ABA), and the current one is found by probing 1, 2, 4, ...
and halving, a few `lstat`s. Each claim carries that generation and a random token, which landing
uses to fence out an owner that lost its claim.

Every step is recoverable when a process dies between two of them: a generation whose owner's
heartbeat went quiet, or whose pid is gone, is stale and gets reaped, and the task file is moved
back to pending wherever it was left.
Leases know nothing of task files: the colony (colony.py) moves a task once it won its claim.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import fsutil, tasks
from harness.config import Config

# Claims and heartbeats are leases: replaced atomically but not fsynced. After a power loss every
# lease has expired anyway, and an unreadable owner reads as "claimer died" (stale by its entry's
# age), so syncing them would buy nothing and serialise every claim on the disk journal.
LEASE_FSYNC = False
LOCKS_FORMAT = ".format-symlinks"  # in locks/: its claims are symlinks (older colonies: folders)
TOMBSTONE = "-"  # what gc leaves of an old generation's owner: the entry stays, its block goes


@dataclass(frozen=True)
class Claim:
    task_id: str
    agent: str
    generation: int
    token: str
    pid: int | None
    host: str
    claimed_at: float


class Leases:
    def __init__(self, home: Path, config: Config, host: str) -> None:
        self.home, self.config, self.host = home, config, host

    def _lock_path(self, task_id: str) -> str:
        # Plain strings on the claim path: pathlib's parsing cost more than the syscalls it wraps.
        return f"{self.home}/locks/{task_id}.lock"

    def heartbeat(self, agent: str, pid: int | None = None, **info: Any) -> None:
        tasks.check_id(agent, "agent")
        folder = self.home / "agents" / agent
        folder.mkdir(parents=True, exist_ok=True)
        beat = {"agent": agent, "pid": pid, "host": self.host, "ts": time.time(), **info}
        fsutil.write_json(folder / "heartbeat.json", beat, fsync=LEASE_FSYNC)

    def last_beat(self, agent: str) -> dict[str, Any] | None:
        return fsutil.read_json(self.home / "agents" / agent / "heartbeat.json")

    def older_than_lease(self, task_id: str, gen: int) -> bool:
        try:
            return time.time() - os.lstat(self.entry(task_id, gen)).st_mtime > self.config.lease_ttl
        except FileNotFoundError:
            return False

    def is_stale(self, entry: str, owner: dict[str, Any] | None, now: float,
                  beats: dict[str, Any] | None = None) -> bool:
        """`beats` caches heartbeats by agent across one reaping pass."""
        ttl = self.config.lease_ttl
        if owner is None:  # an unreadable owner record: judged by the entry's age alone
            try:
                return now - os.lstat(entry).st_mtime > ttl
            except FileNotFoundError:
                return False
        agent = str(owner.get("agent"))
        if beats is None or agent not in beats:
            beat = self.last_beat(agent)
            if beats is not None:
                beats[agent] = beat
        return owner_gone(owner, beats[agent] if beats is not None else beat, now, ttl, self.host)

    def generation(self, task_id: str) -> int:
        """The highest generation: generations are made one after the other and never deleted,
        so those that exist are 1..N, found by doubling past N and halving back."""
        lexists = os.path.lexists
        lo, hi = 0, 1
        while lexists(self.entry(task_id, hi)):
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if lexists(self.entry(task_id, mid)) else (lo, mid)
        return lo

    def entry(self, task_id: str, gen: int) -> str:
        return f"{self._lock_path(task_id)}.{gen:06d}"

    def generations(self, task_id: str) -> list[str]:
        """The paths of a task's generations, oldest first (for gc)."""
        return [self.entry(task_id, g) for g in range(1, self.generation(task_id) + 1)]

    def owner(self, task_id: str, gen: int) -> dict[str, Any] | None:
        try:
            owner = json.loads(os.readlink(self.entry(task_id, gen)))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def held(self, task_id: str, gen: int) -> bool:
        return gen > 0 and not os.path.lexists(self.entry(task_id, gen) + ".released")

    def take(self, task_id: str, gen: int, agent: str, pid: int | None) -> Claim | None:
        """The compare-and-swap: win generation `gen` by creating it, or lose to whoever did."""
        claim = Claim(task_id, agent, gen, secrets.token_hex(8), pid, self.host, time.time())
        try:
            os.symlink(json.dumps(vars(claim), sort_keys=True), self.entry(task_id, gen))  # vars: asdict copies deep, slowly
        except FileExistsError:
            return None
        return claim

    def end(self, claim: Claim, why: str) -> None:
        try:
            os.symlink(why, self.entry(claim.task_id, claim.generation) + ".released")
        except FileExistsError:
            pass  # released already (a reaper and the owner may both end it)

    def current_claim(self, task_id: str) -> Claim | None:
        gen = self.generation(task_id)
        owner = self.owner(task_id, gen) if self.held(task_id, gen) else None
        return Claim(**owner) if owner else None

    def holds(self, claim: Claim) -> bool:
        return self.current_claim(claim.task_id) == claim

    # -- tokens: claims on something that is no task (an idle sweep's, see sweep.py) ------------------
    def take_token(self, name: str, agent: str, pid: int | None = None) -> Claim | None:
        """Hold token ``name`` (never a task id: e.g. ``_sweep-critic``) as a task is claimed, by the
        same generation compare-and-swap and lease: a dead or silent holder's token is taken over."""
        gen = self.generation(name)
        if self.token_held(name, gen):
            return None
        return self.take(name, gen + 1, agent, pid)

    def token_held(self, name: str, gen: int | None = None) -> bool:
        """Token ``name`` is held by a live holder (one whose lease is good)."""
        gen = self.generation(name) if gen is None else gen
        return self.held(name, gen) and not self.is_stale(self.entry(name, gen), self.owner(name, gen),
                                                             time.time())

    def drop_token(self, claim: Claim) -> None:
        self.end(claim, "released")

def owner_gone(owner: dict[str, Any], beat: dict[str, Any] | None, now: float, ttl: float, host: str) -> bool:
    """The one rule of staleness (environment.py): the owner's pid is gone on its host (``host``
    is where we are; another host's pid is not ours to judge), it said it exited after claiming,
    or neither the claim nor its last heartbeat is younger than ``ttl``."""
    pid = owner.get("pid")
    if pid and owner.get("host") == host and not pid_alive(int(pid)):
        return True
    if beat and beat.get("state") == "exited" and float(beat.get("ts", 0)) > float(owner.get("claimed_at", 0)):
        return True  # the owner said goodbye after claiming: whatever it still holds is abandoned
    last = max(float(owner.get("claimed_at", 0)), float(beat["ts"]) if beat and "ts" in beat else 0.0)
    return now - last > ttl


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def upgrade(home: Path) -> None:
    """Rewrite the claims of a colony made before claims were symlinks, once: each generation
    folder `<id>.lock/<gen>/` (owner.json, released) becomes the entries the code now reads.
    Agents of the older version must not run meanwhile (they would not see the new entries)."""
    locks = home / "locks"
    if (locks / LOCKS_FORMAT).exists() or not locks.is_dir():
        return
    for folder in [e for e in os.scandir(locks) if e.is_dir(follow_symlinks=False) and e.name.endswith(".lock")]:
        for gen in sorted(n for n in os.listdir(folder.path) if n.isdigit()):
            entry = f"{folder.path}.{int(gen):06d}"
            owner = Path(folder.path, gen, "owner.json")
            with contextlib.suppress(FileExistsError):
                os.symlink(owner.read_text().strip() if owner.exists() else TOMBSTONE, entry)
            released = Path(folder.path, gen, "released")
            if released.exists():
                with contextlib.suppress(FileExistsError):
                    os.symlink(released.read_text().strip() or "released", entry + ".released")
        shutil.rmtree(folder.path, ignore_errors=True)
    fsutil.atomic_write(locks / LOCKS_FORMAT, "claims are symlinks: <id>.lock.<generation>[.released]\n")

