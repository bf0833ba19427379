"""The shared environment on disk: the colony, which composes its store and its leases.

The store (store.py) holds the task files, events and notes; the leases (leases.py) hold claims
and heartbeats; what becomes of a task whose work conflicted is conflicts.py's. The colony joins
them into the contract agents use (environment.py): a claim is won in the leases, then the task
file moves to active/; a release, done or fail moves the file, then ends the claim; a stale
claim is broken and its task moved back to pending by whichever process wins the break. Every
step is recoverable when a process dies between two of them: a claim whose owner's heartbeat went
quiet, or whose pid is gone, is stale and gets reaped, and the task file is moved back to pending
wherever it was left.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import conflicts, faults, fsutil, leases, target, tasks
from harness.config import DEFAULT_CONFIG, Config, with_branch
from harness.errors import NotARepository, NotOwner
from harness.leases import Claim, Leases
from harness.pool import Pool
from harness.store import Store
from harness.tasks import Task

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
        self.store = Store(home)
        self.leases = Leases(home, self.config, self.host)
        self._pools: dict[str | None, Pool] = {}

    # -- opening --------------------------------------------------------------------------------------
    @classmethod
    def init(cls, repo: Path, branch: str | None = None, config_text: str | None = None) -> Colony:
        """Create the colony (idempotent). A new config.yaml records the landing branch: `branch`,
        or the one checked out now; an existing one keeps its own unless `branch` is given.
        ``config_text`` is written as it is, its branch not looked for here: a host's colony
        mirrors its nest's, whose branch is in the nest (nestagent.py)."""
        repo = git_toplevel(repo)
        home = find_home(repo)
        config = home / "config.yaml"
        target.require_commits(repo)  # before anything is created: the fix is a commit, then init again
        if config_text is None and branch is not None:
            target.require_branch(repo, branch, "--branch")
        elif config_text is None and not config.exists():
            branch = target.require_branch(repo, target.current_branch(repo), "the current branch")
        Store(home).create()
        leases.upgrade(home)
        if not (home / ".gitignore").exists():
            fsutil.atomic_write(home / ".gitignore", GITIGNORE)
        if config_text is not None:
            if not config.exists() or config.read_text() != config_text:
                fsutil.atomic_write(config, config_text)
            return cls(repo, home)
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
        leases.upgrade(home)
        return cls(repo, home)

    def landing_branch(self, given: str | None = None) -> str:
        """The branch work lands on (`given`, i.e. --branch, over config.yaml's `branch:`), checked
        to exist: the launcher and `agent run` call this before any agent starts or claims."""
        source = "--branch" if given else f"`branch:` in {self.home / 'config.yaml'}, main when absent"
        return target.require_branch(self.repo, given or self.config.branch, source)


    @property
    def stop_path(self) -> Path:
        return self.home / "STOP"

    @property
    def fault_path(self) -> Path:
        return faults.path(self.home)

    # -- the store's and the leases' share of the contract (environment.py) --------------------------
    def add(self, task: Task) -> Task:
        return self.store.add(task)

    def add_many(self, new: list[Task]) -> None:
        self.store.add_many(new)

    def get(self, task_id: str) -> tuple[str, Task]:
        return self.store.get(task_id)

    def listing(self, status: str = "pending") -> list[tuple[str, Task]]:
        return self.store.listing(status)

    def ids(self, status: str = "all") -> set[str]:
        return self.store.ids(status)

    def retry(self, task_id: str, by: str) -> Task:
        return self.store.retry(task_id, by)

    def event(self, event: str, task: str | None = None, **fields: Any) -> None:
        self.store.event(event, task, **fields)

    def events(self) -> list[dict[str, Any]]:
        return self.store.events()

    def add_note(self, task_id: str, agent: str, text: str, kind: str = "note") -> None:
        self.store.add_note(task_id, agent, text, kind)

    def notes(self, task_id: str) -> list[dict[str, Any]]:
        return self.store.notes(task_id)

    def heartbeat(self, agent: str, pid: int | None = None, **info: Any) -> None:
        self.leases.heartbeat(agent, pid, **info)

    def last_beat(self, agent: str) -> dict[str, Any] | None:
        return self.leases.last_beat(agent)

    def current_claim(self, task_id: str) -> Claim | None:
        return self.leases.current_claim(task_id)

    def holds(self, claim: Claim) -> bool:
        return self.leases.holds(claim)

    # -- picking and claiming ----------------------------------------------------------------------
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

    def index(self) -> Pool:
        """Any role's index will do where only facts matter (owners, resolvers), not order."""
        return next(iter(self._pools.values()), None) or self.pool(None)


    def try_claim(self, task_id: str, agent: str, pid: int | None = None) -> tuple[Claim, Task] | Task | None:
        """Claim this task if it is free (or its claim is stale) and ready.

        Returns the Claim and the Task; or just the Task as read from disk when it turned out not to be ready
        (the caller's index was out of date); or None when another process has it or it is gone.
        """
        gen = self.leases.generation(task_id)
        if self.leases.held(task_id, gen):
            # Only a claim older than the lease can have a silent heartbeat; younger ones (even of
            # a dead pid) are left to reap(), so losing a race costs two syscalls, not five.
            if not self.leases.older_than_lease(task_id, gen) or not self.leases.is_stale(
                    self.leases.entry(task_id, gen), self.leases.owner(task_id, gen), time.time()):
                return None
            self._reap(task_id, gen, agent)  # inline: a dead owner should not block the best task
            gen = self.leases.generation(task_id)
            if self.leases.held(task_id, gen):
                return None
        claim = self.leases.take(task_id, gen + 1, agent, pid)
        if claim is None:
            return None
        pending = self.store.task_dir("pending") / f"{task_id}.yaml"
        task = self.store.read_task(pending)  # None: gone (done, failed, reaped elsewhere) or quarantined
        if task is None or not self.ready(task):
            self.leases.end(claim, "not pending" if task is None else "not ready")
            return task
        try:
            os.rename(pending, self.store.task_dir("active") / f"{task_id}.yaml")
        except FileNotFoundError:
            self.leases.end(claim, "not pending")
            return None
        # The outputs let an index that never read the task's entry (one started from a snapshot)
        # still weigh the overlap with it.
        self.event("claim", task_id, agent=agent, generation=claim.generation, pid=pid, host=self.host,
                   claimed_at=claim.claimed_at, outputs=task.outputs)
        return claim, task


    def ready(self, task: Task) -> bool:
        """Claimable by what its file says: every dependency done, and not backing off."""
        done = self.store.task_dir("done")
        missing, left = tasks.readiness(task, lambda d: (done / f"{d}.yaml").exists(), time.time())
        return not missing and not left

    def backoff(self, task: Task) -> None:
        """A counted failure: no claim for retry_backoff * 2^(skips-1) seconds (capped), so a
        repeatable error cannot spend max_attempts in a second and other tasks go first meanwhile."""
        tasks.back_off(task, self.config.retry_backoff, self.config.retry_backoff_max, time.time())

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

    # -- ending a claim -----------------------------------------------------------------------------
    def owned(self, task_id: str, agent: str, token: str | None) -> Claim:
        """The current claim of ``task_id``, which ``agent`` (with ``token``) must hold: NotOwner otherwise."""
        claim = self.current_claim(tasks.check_id(task_id))
        if claim is None or claim.agent != agent or (token is not None and claim.token != token):
            holder = f"held by {claim.agent}" if claim else "not claimed"
            raise NotOwner(f"task {task_id!r} is {holder}; only its current owner may release, finish or fail it")
        return claim

    def move(self, claim: Claim, dest: str, change: Callable[[Task], object] | None = None) -> Task | None:
        """Move the claimed task from active/ to `dest` (after `change`, if any, is applied to its
        file) and end the claim; the task as moved, or None when it was not in active/."""
        task = self.store.move(claim.task_id, "active", dest, change)
        self.leases.end(claim, dest)
        return task

    def release(self, task_id: str, agent: str, note: str | None = None, token: str | None = None,
                skip: bool = True) -> int:
        """Back to pending with skip_count + 1 (so it grows more urgent, once its back-off is over);
        returns the new skip_count.
        skip=False is for an agent that stops (STOP, budget, SIGTERM): the task did not fail it."""
        claim = self.owned(task_id, agent, token)
        if note:
            self.add_note(task_id, agent, note, kind="release")
        def count(task: Task) -> None:
            if skip:
                task.skip_count += 1
                self.backoff(task)
        task = self.move(claim, "pending", count)
        skips = task.skip_count if task else 0
        self.event("release", task_id, agent=agent, skip_count=skips, not_before=task.not_before if task else None,
                   note=note)
        return skips

    def done(self, task_id: str, agent: str, token: str | None = None, **fields: Any) -> None:
        claim = self.owned(task_id, agent, token)
        self.move(claim, "done")
        self.event("done", task_id, agent=agent, **fields)

    def fail(self, task_id: str, agent: str, note: str, token: str | None = None) -> None:
        claim = self.owned(task_id, agent, token)
        self.add_note(task_id, agent, note, kind="fail")
        self.move(claim, "failed")
        self.event("fail", task_id, agent=agent, note=note)
        task = self.store.read_task(self.store.task_dir("failed") / f"{task_id}.yaml")
        if task is not None and task.resolves:
            conflicts.undefer(self, task.resolves, task_id, agent)


    def idle(self) -> bool:
        """Nothing to do for anyone: no task active, none ready and none backing off."""
        if any(self.store.task_dir("active").glob("*.yaml")):
            return False
        pool = self.pool(None)
        pool.refresh(force_scan=True)
        return not pool.candidates() and pool.next_due() is None

    # -- reaping --------------------------------------------------------------------------------------
    def _reap(self, task_id: str, gen: int, reaper: str) -> bool:
        """Break a stale claim at generation `gen`; True for the one process that wins the break."""
        owner = self.leases.owner(task_id, gen) or {}
        mine = self.leases.take(task_id, gen + 1, f"reaper.{reaper}"[:64], os.getpid())
        if mine is None:
            return False
        abandoned = owner.get("agent", "unknown")
        note = f"claim abandoned by {abandoned} (lease expired or process gone); reaped by {reaper}"
        self.add_note(task_id, reaper, note, kind="reap")
        def requeue(task: Task) -> None:
            task.skip_count += 1  # no back-off: an owner's death (kill, OOM, reboot) is no sign the task is at fault
            task.depends_on += conflicts.resolutions(self, task)
        # Not in active/: the owner died before moving it out of pending, or after finishing.
        task = self.move(mine, "pending", requeue)
        skips = {"skip_count": task.skip_count} if task else {}
        self.event("reap", task_id, agent=reaper, abandoned_by=abandoned, generation=gen, **skips)
        return True

    def reap(self, reaper: str) -> list[str]:
        """Return every stale claim of an active task to pending; the ids this process reaped.

        The owners named by the event log are judged first, from memory and one heartbeat read per
        agent, each owner once for all its claims (pool.Owners): with thousands of live claims a
        pass reads no claim files at all. Only a claim whose owner looks gone is read from disk,
        and only that reading decides.
        """
        now = time.time()
        reaped: list[str] = []
        beats: dict[str, Any] = {}
        pool = self.index()
        pool.refresh()
        def alive(owner: dict[str, Any]) -> bool:
            return not self.leases.is_stale("", owner, now, beats)
        for tid in sorted(self.store.ids("active").difference(pool.owners.excused(alive))):
            known = pool.owners.get(tid)
            if known is not None and alive(known):
                continue
            gen = self.leases.generation(tid)
            if not self.leases.held(tid, gen):
                # Ended. Moves come before ends, so a file still here is held by nobody (put back
                # by hand, or left by an older version): reap it. Gone since our listing, a reaper
                # or its owner moved it: reaping it again would count and note it twice. (A claim
                # made meanwhile holds the next generation, so our break could not win it anyway.)
                stale = os.path.exists(f"{self.store.task_dir('active')}/{tid}.yaml")
            else:
                stale = self.leases.is_stale(self.leases.entry(tid, gen), self.leases.owner(tid, gen), now, beats)
            if stale and self._reap(tid, gen, reaper):
                reaped.append(tid)
        return reaped

    # -- stopping -------------------------------------------------------------------------------------
    def request_stop(self, now: bool = False) -> Path:
        """Lay the stop pheromone (STOP): agents claim nothing more and finish what they hold;
        ``now`` asks them to abort their current step instead. Returns where it lies."""
        fsutil.atomic_write(self.stop_path, "now\n" if now else "")
        return self.stop_path

    def stop_requested(self) -> bool:
        # A configuration fault (FAULT, see faults.py) stops everyone just as STOP does.
        return self.stop_path.exists() or self.fault_path.exists()




if TYPE_CHECKING:  # mypy checks here that the colony keeps the contract
    from harness.environment import Environment
    _KEEPS_THE_CONTRACT: type[Environment] = Colony
