"""The merge queue: landers line up in the environment and verify in parallel, each on top of
the candidates ahead of it, so a slow verify no longer makes landing one-at-a-time.

A lander whose merge result must be verified again (main moved since its tree passed) joins:

    <git common dir>/stigmergy-queue/<seq, 10 digits>.json    {task, agent, commit, claim, pid, host, ts}
    <git common dir>/stigmergy-queue/merges/<base tree>-<commit>   a merge result, shared (integrate.py)

created whole and create-only (a hard link of a written file: a reader never sees half of one),
numbered one past the highest entry present. The order is the numbers; nobody hands them out.
Each lander predicts the main it will land on: main, then every live candidate ahead of it merged
on in order (one that would conflict is left out, since it cannot land), then its own work on
top. It verifies that tree in its own worktree while those ahead verify theirs. It lands only
when nobody is ahead of it any more, and only a tree it verified: when everyone ahead landed,
main's tree is the one it predicted and verified, and the landing is one compare-and-swap; when
one ahead failed or left, the prediction is rebuilt and verified again.

An entry is live while its owner is (its pid on this host; elsewhere, an entry touched within the
lease) and its task's claim ref still holds the claim it joined with: an agent SIGKILLed in the
queue, or whose task was reaped and claimed again, is passed over, and its entry removed by
whoever sees it first. None of this is needed for correctness: the landing transaction checks
main and the claim itself. The queue only decides who spends a verify run on which tree.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from harness.leases import pid_alive
from harness.git import Git

QUEUE_DIR = "stigmergy-queue"
REMOTE_LEASE_S = 300.0  # an entry of another host is live while touched this recently


@dataclass(frozen=True)
class Entry:
    seq: int
    task: str
    agent: str
    commit: str  # the agent's work, merged onto the stack ahead of it
    claim: str  # the claim ref's value when it joined: a new claimant moves it
    pid: int
    host: str
    path: Path


class MergeQueue:
    """The queue of one repository. Cheap to create; every method reads the directory afresh."""

    def __init__(self, git: Git, claims_prefix: str) -> None:
        self.git = git
        self.claims_prefix = claims_prefix
        self.dir = git.common_dir() / QUEUE_DIR
        self.merges = self.dir / "merges"  # the landers' shared merge results (integrate._Merges)
        self.host = socket.gethostname()

    def join(self, task: str, agent: str, commit: str, claim: str) -> Entry:
        self.dir.mkdir(exist_ok=True)
        body = {"task": task, "agent": agent, "commit": commit, "claim": claim, "pid": os.getpid(),
                "host": self.host, "ts": round(time.time(), 3)}
        tmp = self.dir / f".{os.getpid()}-{task}.tmp"
        tmp.write_text(json.dumps(body))
        if not self._names():  # first in line: nobody needs the merges of earlier queues
            shutil.rmtree(self.merges, ignore_errors=True)
        try:
            while True:
                seq = max((e.seq for e in self._read()), default=0) + 1
                path = self.dir / f"{seq:010d}.json"
                try:
                    os.link(tmp, path)  # create-only: of two joiners reading the same last number, one wins
                except FileExistsError:
                    continue
                return Entry(seq, task, agent, commit, claim, os.getpid(), self.host, path)
        finally:
            tmp.unlink(missing_ok=True)

    def leave(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)

    def touch(self, entry: Entry) -> None:
        """Keep an entry live for other hosts while its owner waits."""
        try:
            os.utime(entry.path)
        except FileNotFoundError:
            pass

    def look(self, entry: Entry | None, *refs: str) -> tuple[list[Entry], dict[str, tuple[str, str]]]:
        """The live entries in front of ``entry`` (all of them for None), in queue order, and the
        (object, tree) of each of ``refs`` that exists (tree "" for what is no commit): all in one
        git call, since a waiting lander looks each time the queue moves. Dead entries found on
        the way are removed."""
        mine = entry.seq if entry is not None else float("inf")
        found = [e for e in self._read() if e.seq < mine]
        running = [e for e in found if self._owner_alive(e)]
        claims = [self.claims_prefix + e.task for e in running]
        out = self.git.run("for-each-ref", "--format=%(refname) %(objectname) %(tree)", *refs, *claims,
                           check=False) if refs or claims else ""
        values = {}
        for line in out.splitlines():
            name, _, rest = line.partition(" ")
            obj, _, tree = rest.partition(" ")
            values[name] = (obj, tree)
        live = [e for e in running if values.get(self.claims_prefix + e.task, ("", ""))[0] == e.claim]
        for dead in (e for e in found if e not in live):
            dead.path.unlink(missing_ok=True)
        return live, {r: values[r] for r in refs if r in values}

    def stamp(self, entry: Entry) -> list[str]:
        """The entries ahead of ``entry`` by name: one listing, cheap to poll while waiting; those
        joining behind us do not change it."""
        return [n for n in self._names() if int(n[:-5]) < entry.seq]

    def _names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir) if n.endswith(".json") and n[:-5].isdigit())
        except FileNotFoundError:
            return []

    def _read(self) -> list[Entry]:
        entries = []
        for name in self._names():
            try:
                d = json.loads((self.dir / name).read_text())
                entries.append(Entry(int(name[:-5]), str(d["task"]), str(d["agent"]), str(d["commit"]),
                                     str(d["claim"]), int(d["pid"]), str(d["host"]), self.dir / name))
            except FileNotFoundError:
                continue  # it just left
            except (ValueError, KeyError, TypeError):
                (self.dir / name).unlink(missing_ok=True)  # not written by us: it cannot be in line
        return entries

    def _owner_alive(self, e: Entry) -> bool:
        if e.host == self.host:
            return pid_alive(e.pid)
        try:
            return time.time() - e.path.stat().st_mtime < REMOTE_LEASE_S
        except FileNotFoundError:
            return False
