"""The shared environment on disk: the task pool, claims, leases, heartbeats, notes and events.

Layout under `<repo>/.stigmergy/` (or $STIGMERGY_HOME):

    config.yaml                          settings (may be committed)
    tasks/{pending,active,done,failed}/<id>.yaml   the folder is the status
    tasks/quarantine/<file>              malformed task files, with <file>.reason
    locks/<id>.lock.<generation>         a claim generation: a symlink whose target is its owner (JSON)
    locks/<id>.lock.<generation>.released   its end (a symlink to why), once it is over
    agents/<agent>/heartbeat.json        the lease: refreshed every few seconds
    notes/<id>.jsonl                     notes and failed approaches for the next claimant
    events.jsonl                         every add, claim, release, done, fail, reap, quarantine
    index/pool[-<role>].snap             the pick index in heap order, for one-shot claims (snapshot.py)

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
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import faults, fsutil, target, tasks
from harness.config import DEFAULT_CONFIG, Config, with_branch
from harness.errors import FilingCapped, FilingRefused, InvalidTask, NotARepository, NotOwner, UnknownTask
from harness.pool import Pool, meta_of
from harness.tasks import Task

STATUSES = ("pending", "active", "done", "failed")
# Claims and heartbeats are leases: replaced atomically but not fsynced. After a power loss every
# lease has expired anyway, and an unreadable owner reads as "claimer died" (stale by its entry's
# age), so syncing them would buy nothing and serialise every claim on the disk journal.
LEASE_FSYNC = False
LOCKS_FORMAT = ".format-symlinks"  # in locks/: its claims are symlinks (older colonies: folders)
TOMBSTONE = "-"  # what gc leaves of an old generation's owner: the entry stays, its block goes
GITIGNORE = """\
# stigmergy-harness: runtime state stays out of git; config, roles and prompts may be committed.
*
!.gitignore
!config.yaml
!roles/
!roles/**
!prompts/
!prompts/**
"""


@dataclass(frozen=True)
class Claim:
    task_id: str
    agent: str
    generation: int
    token: str
    pid: int | None
    host: str
    claimed_at: float


def find_home(repo: Path) -> Path:
    env = os.environ.get("STIGMERGY_HOME")
    return Path(env) if env else repo / ".stigmergy"


def git_toplevel(path: Path) -> Path:
    """The repository root, without running git: look for .git upwards. In a linked worktree (an
    agent's: its .git is a file) that is the main checkout, where the colony lives, so the task CLI
    works from inside an agent's worktree with nothing in the environment to point at it."""
    path = path.resolve()
    for p in (path, *path.parents):
        dotgit = p / ".git"
        if dotgit.is_file():
            return _main_checkout(p, dotgit) or p
        if dotgit.exists():
            return p
    raise target.not_a_repository(path)


def _main_checkout(top: Path, dotgit: Path) -> Path | None:
    """The main checkout of the linked worktree at `top`: its .git file names its admin folder, whose
    `commondir` names the repository's .git. None for anything else with a .git file (a submodule,
    a `--separate-git-dir` checkout, a worktree of a bare repository): that is its own root."""
    try:
        text = dotgit.read_text()
        admin = (top / text.removeprefix("gitdir:").strip()).resolve()
        common = (admin / (admin / "commondir").read_text().strip()).resolve()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir:") or common.name != ".git" or not common.is_dir():
        return None
    return common.parent


class Colony:
    def __init__(self, repo: Path, home: Path) -> None:
        self.repo = repo
        self.home = home
        self.config = Config.load(home / "config.yaml")
        self.host = socket.gethostname()
        self._pools: dict[str | None, Pool] = {}

    # -- opening --------------------------------------------------------------------------------------
    @classmethod
    def init(cls, repo: Path, branch: str | None = None) -> Colony:
        """Create the colony (idempotent). A new config.yaml records the landing branch: `branch`,
        or the one checked out now; an existing one keeps its own unless `branch` is given."""
        repo = git_toplevel(repo)
        home = find_home(repo)
        config = home / "config.yaml"
        target.require_commits(repo)  # before anything is created: the fix is a commit, then init again
        if branch is not None:
            target.require_branch(repo, branch, "--branch")
        elif not config.exists():
            branch = target.require_branch(repo, target.current_branch(repo), "the current branch")
        for sub in [*(f"tasks/{s}" for s in (*STATUSES, "quarantine")), "locks", "agents", "notes", "runs", "index"]:
            (home / sub).mkdir(parents=True, exist_ok=True)
        _upgrade_locks(home)
        if not (home / ".gitignore").exists():
            fsutil.atomic_write(home / ".gitignore", GITIGNORE)
        if branch is not None:
            fsutil.atomic_write(config, with_branch(config.read_text() if config.exists() else DEFAULT_CONFIG, branch))
        colony = cls(repo, home)
        if branch is None:
            colony.landing_branch()  # the existing config may name a branch that is gone: say so now
        return colony

    @classmethod
    def open(cls, repo: Path) -> Colony:
        repo = git_toplevel(repo)
        home = find_home(repo)
        if not (home / "tasks").is_dir():
            raise NotARepository(f"{repo} has no colony yet ({home} is missing): run `stigmergy init --repo {repo}`")
        _upgrade_locks(home)
        return cls(repo, home)

    def landing_branch(self, given: str | None = None) -> str:
        """The branch work lands on (`given`, i.e. --branch, over config.yaml's `branch:`), checked
        to exist: the launcher and `agent run` call this before any agent starts or claims."""
        source = "--branch" if given else f"`branch:` in {self.home / 'config.yaml'}, main when absent"
        return target.require_branch(self.repo, given or self.config.branch, source)

    # -- paths ----------------------------------------------------------------------------------------
    @property
    def events_path(self) -> Path:
        return self.home / "events.jsonl"

    @property
    def stop_path(self) -> Path:
        return self.home / "STOP"

    @property
    def fault_path(self) -> Path:
        return faults.path(self.home)

    def task_dir(self, status: str) -> Path:
        return self.home / "tasks" / status

    def _lock_path(self, task_id: str) -> str:
        # Plain strings on the claim path: pathlib's parsing cost more than the syscalls it wraps.
        return f"{self.home}/locks/{task_id}.lock"

    def run_dir(self, task_id: str, attempt: str) -> Path:
        path = self.home / "runs" / task_id / attempt
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- events and notes -----------------------------------------------------------------------------
    def event(self, event: str, task: str | None = None, **fields: Any) -> None:
        fsutil.append_line(self.events_path, {"ts": round(time.time(), 3), "event": event, "task": task, **fields})

    def events(self) -> list[dict[str, Any]]:
        return fsutil.read_lines(self.events_path)

    def add_note(self, task_id: str, agent: str, text: str, kind: str = "note") -> None:
        tasks.check_id(task_id)
        fsutil.append_line(self.home / "notes" / f"{task_id}.jsonl",
                           {"ts": round(time.time(), 3), "agent": agent, "kind": kind, "text": text})

    def notes(self, task_id: str) -> list[dict[str, Any]]:
        return fsutil.read_lines(self.home / "notes" / f"{task_id}.jsonl")

    def check_filing(self, agent: str, task_id: str | None) -> None:
        """Raise FilingCapped when ``agent`` may file no more tasks now: it filed
        max_new_tasks_per_attempt since it claimed ``task_id``, or max_new_tasks_per_hour in the
        last hour. The first refusal of an attempt leaves a note on the task, so the next claimant
        (and the morning report) sees that the model kept filing."""
        now, claimed, capped = time.time(), 0.0, False
        adds: list[float] = []
        for e in self.events():
            if e.get("agent") == agent and e.get("task") == task_id and e.get("event") == "claim":
                claimed, capped = float(e["ts"]), False
            elif e.get("event") == "add" and e.get("created_by") == agent:
                adds.append(float(e["ts"]))
            elif e.get("event") == "filing_capped" and e.get("agent") == agent and e.get("task") == task_id:
                capped = True
        in_attempt = sum(1 for ts in adds if ts >= claimed) if task_id else 0
        in_hour = sum(1 for ts in adds if ts >= now - 3600)
        cfg = self.config
        if task_id and in_attempt >= cfg.max_new_tasks_per_attempt:
            why = (f"{in_attempt} tasks filed in this attempt "
                   f"(max_new_tasks_per_attempt: {cfg.max_new_tasks_per_attempt})")
        elif in_hour >= cfg.max_new_tasks_per_hour:
            why = f"{in_hour} tasks filed in the last hour (max_new_tasks_per_hour: {cfg.max_new_tasks_per_hour})"
        else:
            return
        message = (f"task not filed: agent {agent} has {why}. Finish the task at hand and put what is left "
                   "in a note, or raise the limit in .stigmergy/config.yaml")
        if task_id and not capped:
            self.add_note(task_id, agent, message, kind="filing_capped")
            self.event("filing_capped", task_id, agent=agent, reason=why)
        raise FilingCapped(message)

    def refuse_filing(self, agent: str, task_id: str | None, refused: FilingRefused) -> FilingRefused:
        """Record that ``agent``, at work on ``task_id``, tried to file a task that was refused: a note
        on that task for the next claimant (and the report), once per attempt and reason, however
        often the model retries. Refusals file nothing, so they never count against the caps of
        check_filing. Returns ``refused``, for the caller to raise."""
        if task_id is None:
            return refused
        noted = False
        for e in self.events():
            if e.get("agent") == agent and e.get("task") == task_id:
                if e.get("event") == "claim":
                    noted = False  # a new attempt: its first refusal is news again
                elif e.get("event") == "filing_refused" and e.get("reason") == refused.reason:
                    noted = True
        if not noted:
            self.add_note(task_id, agent, f"task not filed: {refused}", kind="filing_refused")
            self.event("filing_refused", task_id, agent=agent, reason=refused.reason)
        return refused

    # -- tasks ----------------------------------------------------------------------------------------
    def add(self, task: Task) -> Task:
        """File a new pending task; its id must not exist in any status."""
        self.add_many([task])
        return task

    def add_many(self, new: list[Task]) -> None:
        """File tasks whose ids exist nowhere yet. A batch is synced once, not file by file."""
        files = []
        for task in new:
            tasks.check_id(task.id)
            if self.locate(task.id):
                raise InvalidTask(f"task {task.id!r} already exists; choose another --id or leave it out")
            files.append(tasks.serialise(task))  # every one, before any is written: all or nothing
        staged = []
        for task, raw in zip(new, files):
            tmp = self.task_dir("pending") / f".{task.id}.{secrets.token_hex(4)}.tmp"
            fsutil.atomic_write(tmp, raw, fsync=len(new) == 1)
            staged.append((task, tmp))
        if len(new) > 1:
            os.sync()
        events: list[dict[str, Any]] = []
        try:
            for task, tmp in staged:
                try:
                    os.link(tmp, self.task_dir("pending") / f"{task.id}.yaml")  # create-only: one writer wins
                except FileExistsError:
                    raise InvalidTask(f"task {task.id!r} already exists; choose another --id") from None
                events.append({"ts": round(time.time(), 3), "event": "add", "task": task.id,
                               "meta": meta_of(task), "created_by": task.created_by})
        finally:
            for _, tmp in staged:
                tmp.unlink(missing_ok=True)
            if events:
                fsutil.append_lines(self.events_path, events)

    def locate(self, task_id: str) -> tuple[str, Path] | None:
        for status in STATUSES:
            path = self.task_dir(status) / f"{task_id}.yaml"
            if path.exists():
                return status, path
        return None

    def get(self, task_id: str) -> tuple[str, Task]:
        tasks.check_id(task_id)
        found = self.locate(task_id)
        task = self.read_task(found[1]) if found else None
        if found is None or task is None:
            raise UnknownTask(f"no task {task_id!r}; `stigmergy task list --status all` shows what exists")
        return found[0], task

    def read_task(self, path: Path) -> Task | None:
        """Parse one task file; a malformed one is quarantined (never fatal) and None returned."""
        try:
            return tasks.load(path)
        except FileNotFoundError:
            return None
        except (InvalidTask, OSError) as e:
            self.quarantine(path, str(e))
            return None

    def quarantine(self, path: Path, reason: str) -> None:
        qdir = self.task_dir("quarantine")
        dest = qdir / f"{path.name}.{int(time.time())}.{secrets.token_hex(2)}"
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return  # somebody else quarantined it first
        fsutil.atomic_write(dest.with_name(dest.name + ".reason"), reason + "\n")
        tid = path.name[:-5] if path.name.endswith(".yaml") else path.name
        self.event("quarantine", tid if tasks.ID_RE.match(tid) else None, file=path.name, reason=reason)

    def listing(self, status: str = "pending") -> list[tuple[str, Task]]:
        out = []
        for st in STATUSES if status == "all" else (status,):
            for path in sorted(self.task_dir(st).glob("*.yaml")):
                task = self.read_task(path)
                if task is not None:
                    out.append((st, task))
        return out

    def pool(self, role: str | None, partial: bool = False) -> Pool:
        """The pick index of agents in this role, built once per process. `partial`: picking is all
        the caller does with it, so it may start from the role's snapshot (a one-shot claim reads
        the snapshot's head instead of replaying the whole log); else it is the full index."""
        pool = self._pools.get(role)
        if pool is None:
            pool = Pool(self, role)
            if not (partial and pool.resume()):
                pool.refresh(force_scan=True)  # a full build: it also writes the snapshot if that lags
        elif pool.partial and not partial:
            pool.refresh(force_scan=True)  # the log replayed, the folders listed: a full index now
        self._pools[role] = pool
        return pool

    def _index(self) -> Pool:
        """Any role's index will do where only facts matter (owners, resolvers), not order."""
        return next(iter(self._pools.values()), None) or self.pool(None)

    # -- leases ---------------------------------------------------------------------------------------
    def heartbeat(self, agent: str, pid: int | None = None, **info: Any) -> None:
        tasks.check_id(agent, "agent")
        folder = self.home / "agents" / agent
        folder.mkdir(parents=True, exist_ok=True)
        beat = {"agent": agent, "pid": pid, "host": self.host, "ts": time.time(), **info}
        fsutil.write_json(folder / "heartbeat.json", beat, fsync=LEASE_FSYNC)

    def last_beat(self, agent: str) -> dict[str, Any] | None:
        return fsutil.read_json(self.home / "agents" / agent / "heartbeat.json")

    def _older_than_lease(self, task_id: str, gen: int) -> bool:
        try:
            return time.time() - os.lstat(self._gen_entry(task_id, gen)).st_mtime > self.config.lease_ttl
        except FileNotFoundError:
            return False

    def _is_stale(self, entry: str, owner: dict[str, Any] | None, now: float,
                  beats: dict[str, Any] | None = None) -> bool:
        """`beats` caches heartbeats by agent across one reaping pass."""
        ttl = self.config.lease_ttl
        if owner is None:  # an unreadable owner record: judged by the entry's age alone
            try:
                return now - os.lstat(entry).st_mtime > ttl
            except FileNotFoundError:
                return False
        pid = owner.get("pid")
        if pid and owner.get("host") == self.host and not pid_alive(int(pid)):
            return True
        agent = str(owner.get("agent"))
        if beats is None or agent not in beats:
            beat = self.last_beat(agent)
            if beats is not None:
                beats[agent] = beat
        beat = beats[agent] if beats is not None else beat
        if beat and beat.get("state") == "exited" and float(beat.get("ts", 0)) > float(owner.get("claimed_at", 0)):
            return True  # the owner said goodbye after claiming: whatever it still holds is abandoned
        last = max(float(owner.get("claimed_at", 0)), float(beat["ts"]) if beat and "ts" in beat else 0.0)
        return now - last > ttl

    # -- claims ---------------------------------------------------------------------------------------
    def _generation(self, task_id: str) -> int:
        """The highest generation: generations are made one after the other and never deleted,
        so those that exist are 1..N, found by doubling past N and halving back."""
        lexists = os.path.lexists
        lo, hi = 0, 1
        while lexists(self._gen_entry(task_id, hi)):
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if lexists(self._gen_entry(task_id, mid)) else (lo, mid)
        return lo

    def _gen_entry(self, task_id: str, gen: int) -> str:
        return f"{self._lock_path(task_id)}.{gen:06d}"

    def generations(self, task_id: str) -> list[str]:
        """The paths of a task's generations, oldest first (for gc)."""
        return [self._gen_entry(task_id, g) for g in range(1, self._generation(task_id) + 1)]

    def _owner(self, task_id: str, gen: int) -> dict[str, Any] | None:
        try:
            owner = json.loads(os.readlink(self._gen_entry(task_id, gen)))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _held(self, task_id: str, gen: int) -> bool:
        return gen > 0 and not os.path.lexists(self._gen_entry(task_id, gen) + ".released")

    def _take_generation(self, task_id: str, gen: int, agent: str, pid: int | None) -> Claim | None:
        """The compare-and-swap: win generation `gen` by creating it, or lose to whoever did."""
        claim = Claim(task_id, agent, gen, secrets.token_hex(8), pid, self.host, time.time())
        try:
            os.symlink(json.dumps(asdict(claim), sort_keys=True), self._gen_entry(task_id, gen))
        except FileExistsError:
            return None
        return claim

    def _release_generation(self, claim: Claim, why: str) -> None:
        try:
            os.symlink(why, self._gen_entry(claim.task_id, claim.generation) + ".released")
        except FileExistsError:
            pass  # released already (a reaper and the owner may both end it)

    def current_claim(self, task_id: str) -> Claim | None:
        gen = self._generation(task_id)
        owner = self._owner(task_id, gen) if self._held(task_id, gen) else None
        return Claim(**owner) if owner else None

    def holds(self, claim: Claim) -> bool:
        return self.current_claim(claim.task_id) == claim

    def try_claim(self, task_id: str, agent: str, pid: int | None = None) -> tuple[Claim, Task] | Task | None:
        """Claim this task if it is free (or its claim is stale) and ready.

        Returns the Claim and the Task; or just the Task as read from disk when it turned out not to be ready
        (the caller's index was out of date); or None when another process has it or it is gone.
        """
        gen = self._generation(task_id)
        if self._held(task_id, gen):
            # Only a claim older than the lease can have a silent heartbeat; younger ones (even of
            # a dead pid) are left to reap(), so losing a race costs two syscalls, not five.
            if not self._older_than_lease(task_id, gen) or not self._is_stale(
                    self._gen_entry(task_id, gen), self._owner(task_id, gen), time.time()):
                return None
            self._reap(task_id, gen, agent)  # inline: a dead owner should not block the best task
            gen = self._generation(task_id)
            if self._held(task_id, gen):
                return None
        claim = self._take_generation(task_id, gen + 1, agent, pid)
        if claim is None:
            return None
        pending = self.task_dir("pending") / f"{task_id}.yaml"
        task = self.read_task(pending)  # None: gone (done, failed, reaped elsewhere) or quarantined
        if task is None or not self.ready(task):
            self._release_generation(claim, "not pending" if task is None else "not ready")
            return task
        try:
            os.rename(pending, self.task_dir("active") / f"{task_id}.yaml")
        except FileNotFoundError:
            self._release_generation(claim, "not pending")
            return None
        # The outputs let an index that never read the task's entry (one started from a snapshot)
        # still weigh the overlap with it.
        self.event("claim", task_id, agent=agent, generation=claim.generation, pid=pid, host=self.host,
                   claimed_at=claim.claimed_at, outputs=task.outputs)
        return claim, task

    # -- tokens: claims on something that is no task (an idle sweep's, see sweep.py) ------------------
    def take_token(self, name: str, agent: str, pid: int | None = None) -> Claim | None:
        """Hold token ``name`` (never a task id: e.g. ``_sweep-critic``) as a task is claimed, by the
        same generation compare-and-swap and lease: a dead or silent holder's token is taken over."""
        gen = self._generation(name)
        if self.token_held(name, gen):
            return None
        return self._take_generation(name, gen + 1, agent, pid)

    def token_held(self, name: str, gen: int | None = None) -> bool:
        """Token ``name`` is held by a live holder (one whose lease is good)."""
        gen = self._generation(name) if gen is None else gen
        return self._held(name, gen) and not self._is_stale(self._gen_entry(name, gen), self._owner(name, gen),
                                                             time.time())

    def drop_token(self, claim: Claim) -> None:
        self._release_generation(claim, "released")

    def ready(self, task: Task) -> bool:
        """Claimable by what its file says: every dependency done, and not backing off."""
        done = self.task_dir("done")
        missing, left = tasks.readiness(task, lambda d: (done / f"{d}.yaml").exists(), time.time())
        return not missing and not left

    def backoff(self, task: Task) -> None:
        """A counted failure: no claim for retry_backoff * 2^(skips-1) seconds (capped), so a
        repeatable error cannot spend max_attempts in a second and other tasks go first meanwhile."""
        step, cap = self.config.retry_backoff, self.config.retry_backoff_max
        wait = min(step * 2 ** max(task.skip_count - 1, 0), cap) if step > 0 else 0
        task.not_before = round(time.time() + wait, 3) if wait > 0 else None

    def claim(self, agent: str, role: str | None = None, pid: int | None = None) -> tuple[Claim, Task] | None:
        """Claim the best ready task for this agent and role, or None when nothing is ready."""
        tasks.check_id(agent, "agent")
        pool = self.pool(role, partial=True)
        for attempt in range(2):
            if attempt == 1:
                self.reap(agent)  # before giving up: tasks of dead owners come back to pending
            pool.refresh(force_scan=attempt == 1)
            while ids := pool.candidates():
                for tid in ids:
                    if pool.status.get(tid) != "pending":  # a refresh below saw it claimed meanwhile
                        continue
                    got = self.try_claim(tid, agent, pid)
                    if isinstance(got, tuple):
                        pool.forget(tid, "active")
                        return got
                    elif isinstance(got, Task):  # the file knows better than our index: not ready
                        pool.learn(got)
                    else:  # someone else has it (or it is gone): a later event tells if it comes back
                        pool.forget(tid, "active")
                        # Learn what the others claimed before the next try: without this, many
                        # claimers at once each tried the whole batch, 47 lost races per claim.
                        pool.refresh()
                pool.refresh()  # learn what the others claimed meanwhile before the next batch
        return None

    def _owned(self, task_id: str, agent: str, token: str | None) -> Claim:
        claim = self.current_claim(tasks.check_id(task_id))
        if claim is None or claim.agent != agent or (token is not None and claim.token != token):
            holder = f"held by {claim.agent}" if claim else "not claimed"
            raise NotOwner(f"task {task_id!r} is {holder}; only its current owner may release, finish or fail it")
        return claim

    def _move(self, claim: Claim, dest: str, change: Callable[[Task], object] | None = None) -> Task | None:
        """Move the claimed task from active/ to `dest` (after `change`, if any, is applied to its
        file) and end the claim; the task as moved, or None when it was not in active/."""
        src = self.task_dir("active") / f"{claim.task_id}.yaml"
        task = self.read_task(src)
        if task is not None and change is not None:
            change(task)
            fsutil.atomic_write(src, task.to_yaml())
        try:
            os.rename(src, self.task_dir(dest) / f"{claim.task_id}.yaml")
        except FileNotFoundError:
            pass  # a crash already moved it; the move is idempotent
        self._release_generation(claim, dest)
        return task

    def release(self, task_id: str, agent: str, note: str | None = None, token: str | None = None,
                skip: bool = True) -> int:
        """Back to pending with skip_count + 1 (so it grows more urgent, once its back-off is over);
        returns the new skip_count.
        skip=False is for an agent that stops (STOP, budget, SIGTERM): the task did not fail it."""
        claim = self._owned(task_id, agent, token)
        if note:
            self.add_note(task_id, agent, note, kind="release")
        def count(task: Task) -> None:
            if skip:
                task.skip_count += 1
                self.backoff(task)
        task = self._move(claim, "pending", count)
        skips = task.skip_count if task else 0
        self.event("release", task_id, agent=agent, skip_count=skips, not_before=task.not_before if task else None,
                   note=note)
        return skips

    def done(self, task_id: str, agent: str, token: str | None = None, **fields: Any) -> None:
        claim = self._owned(task_id, agent, token)
        self._move(claim, "done")
        self.event("done", task_id, agent=agent, **fields)

    def fail(self, task_id: str, agent: str, note: str, token: str | None = None) -> None:
        claim = self._owned(task_id, agent, token)
        self.add_note(task_id, agent, note, kind="fail")
        self._move(claim, "failed")
        self.event("fail", task_id, agent=agent, note=note)
        task = self.read_task(self.task_dir("failed") / f"{task_id}.yaml")
        if task is not None and task.resolves:
            self._undefer(task.resolves, task_id, agent)

    def retry(self, task_id: str, by: str) -> Task:
        """A failed task back to pending with skip_count 0 (a person decided it deserves another
        go); its notes stay, so the next claimant sees what was tried."""
        path = self.task_dir("failed") / f"{tasks.check_id(task_id)}.yaml"
        task = self.read_task(path)
        if task is None:
            where = self.locate(task_id)
            raise UnknownTask(f"task {task_id!r} is not failed" + (f" (it is {where[0]})" if where else
                              " (no such task)") + "; `stigmergy task list --status failed` shows the failed ones")
        task.skip_count, task.not_before = 0, None
        fsutil.atomic_write(path, task.to_yaml())
        try:
            os.rename(path, self.task_dir("pending") / f"{task_id}.yaml")
        except FileNotFoundError:
            raise UnknownTask(f"task {task_id!r} was moved while retrying it; look at `task show {task_id}`") from None
        self.add_note(task_id, by, "re-opened by `task retry` after it failed", kind="retry")
        self.event("retry", task_id, agent=by, meta=meta_of(task))
        return task

    def _undefer(self, task_id: str, gave_up: str, agent: str) -> None:
        """A conflict resolution failed: its original must not wait for it forever. It goes back to
        work from the current main (its first attempt stays under refs/stigmergy/conflicts/)."""
        path = self.task_dir("pending") / f"{task_id}.yaml"
        task = self.read_task(path)
        if task is None or gave_up not in task.depends_on:
            return
        task.depends_on = [d for d in task.depends_on if d != gave_up]
        fsutil.atomic_write(path, task.to_yaml())
        self.add_note(task_id, agent, f"{gave_up} failed to resolve this task's merge conflict: redo the task "
                      f"on the current main (the first attempt is kept at refs/stigmergy/conflicts/{task_id})",
                      kind="undefer")
        self.event("undefer", task_id, agent=agent, meta=meta_of(task))

    def defer(self, task_id: str, agent: str, waits_on: str, note: str, token: str | None = None) -> None:
        """Back to pending, waiting on another task (a conflict's resolution) instead of a retry."""
        claim = self._owned(task_id, agent, token)
        self.add_note(task_id, agent, note, kind="defer")
        task = self._move(claim, "pending", lambda t: t.depends_on.append(waits_on))
        if task is not None:
            self.event("defer", task_id, agent=agent, waits_on=waits_on, meta=meta_of(task))

    def settle(self, task_id: str, by: str, via: str) -> None:
        """Mark a deferred task done because `via` landed its work; recursively for chains."""
        found = self.locate(task_id)
        if found is None or found[0] in ("done", "failed"):
            return
        task = self.read_task(found[1])
        try:
            os.rename(found[1], self.task_dir("done") / f"{task_id}.yaml")
        except FileNotFoundError:
            return
        self.event("done", task_id, agent=by, via=via)
        if task is not None and task.resolves:
            self.settle(task.resolves, by, via)

    def idle(self) -> bool:
        """Nothing to do for anyone: no task active, none ready and none backing off."""
        if any(self.task_dir("active").glob("*.yaml")):
            return False
        pool = self.pool(None)
        pool.refresh(force_scan=True)
        return not pool.candidates() and pool.next_due() is None

    # -- reaping --------------------------------------------------------------------------------------
    def _reap(self, task_id: str, gen: int, reaper: str) -> bool:
        """Break a stale claim at generation `gen`; True for the one process that wins the break."""
        owner = self._owner(task_id, gen) or {}
        mine = self._take_generation(task_id, gen + 1, f"reaper.{reaper}"[:64], os.getpid())
        if mine is None:
            return False
        abandoned = owner.get("agent", "unknown")
        note = f"claim abandoned by {abandoned} (lease expired or process gone); reaped by {reaper}"
        self.add_note(task_id, reaper, note, kind="reap")
        def requeue(task: Task) -> None:
            task.skip_count += 1  # no back-off: an owner's death (kill, OOM, reboot) is no sign the task is at fault
            # An owner that died between filing a merge_conflict task for this one and deferring it
            # left the resolution in the pool: wait for it, or the work would land twice.
            index = self._index()
            index.refresh()
            task.depends_on += [r for r in sorted(index.resolved_by.get(task_id, ()))
                                if r not in task.depends_on and (found := self.locate(r)) and found[0] != "failed"]
        # Not in active/: the owner died before moving it out of pending, or after finishing.
        task = self._move(mine, "pending", requeue)
        skips = {"skip_count": task.skip_count} if task else {}
        self.event("reap", task_id, agent=reaper, abandoned_by=abandoned, generation=gen, **skips)
        return True

    def reap(self, reaper: str) -> list[str]:
        """Return every stale claim of an active task to pending; the ids this process reaped.

        The owners named by the event log are checked first, from memory and one heartbeat read
        per agent: with thousands of live claims a pass reads no claim files at all. Only a claim
        whose owner looks gone is read from disk, and only that reading decides.
        """
        now = time.time()
        reaped: list[str] = []
        beats: dict[str, Any] = {}
        pool = self._index()
        pool.refresh()
        for name in os.listdir(self.task_dir("active")):
            tid = name[:-5]
            if not name.endswith(".yaml") or name.startswith("."):
                continue
            known = pool.owners.get(tid)
            if known is not None and not self._is_stale("", known, now, beats):
                continue
            gen = self._generation(tid)
            stale = not self._held(tid, gen) or self._is_stale(self._gen_entry(tid, gen), self._owner(tid, gen), now,
                                                                beats)
            if stale and self._reap(tid, gen, reaper):
                reaped.append(tid)
        return reaped

    # -- stopping -------------------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        # A configuration fault (FAULT, see faults.py) stops everyone just as STOP does.
        return self.stop_path.exists() or self.fault_path.exists()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _upgrade_locks(home: Path) -> None:
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
