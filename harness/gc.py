"""`stigmergy gc`: remove what finished work and stopped agents left behind, never unlanded work.

What goes:

- the worktree and the ``stigmergy/<agent>`` branch of every agent that is not running (its agent
  lock is free: pidlock.py). First, any of their commits that main does not hold is kept under
  ``refs/stigmergy/kept/<agent>-<date>``: the branch's tip, a detached HEAD that differs from it,
  and uncommitted changes in the worktree (committed for the purpose, ignored files excepted);
- ``refs/stigmergy/claims/<task>`` of finished tasks (done or failed) and
  ``refs/stigmergy/conflicts/<task>`` of tasks that are done (their work landed, through the
  conflict task or redone);
- all but the newest generation folder of a done task's lock (``locks/<task>.lock/``);
- run folders (``runs/<task>/``) of finished tasks, and of idle sweeps (``runs/sweep-<role>-<n>/``),
  untouched for ``runs_older_than_days``.

Safe beside a live colony. An agent's worktree is handled while holding the colony's
``worktrees`` lock (git.exclusive), which every agent takes before it creates or resets its
worktree (Workspace.prepare); its agent lock is looked at inside it, so an agent that starts
meanwhile finds its worktree gone and makes a new one, and a running one is never touched. Refs
are deleted with their old value as a compare-and-swap, so a claim acquired meanwhile stays.
Why a done task keeps its newest lock generation: see docs/decisions.md ("gc").

"Main holds a commit" (:class:`Landings`): it is on main; or merged into main it changes nothing;
or a first-parent commit of main with the same ``Task-Id`` is exactly its squashed landing (the
merge of the commit into that commit's parent). A commit another ``refs/stigmergy/`` ref already
holds (a conflict's kept work, an earlier kept ref) needs no new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import sweep
from harness.colony import Colony
from harness.leases import TOMBSTONE
from harness.store import STATUSES
from harness.errors import InvalidId
from harness.git import Git, Identity, exclusive
from harness.fence import CLAIMS
from harness.integrate import CONFLICTS
from harness.pidlock import agent_lock, holder
from harness.tasks import check_id

KEPT = "refs/stigmergy/kept/"
HEADS = "refs/heads/stigmergy/"
FINISHED = ("done", "failed")
GC_IDENTITY = Identity("stigmergy-gc", "gc@stigmergy.local")
_SHOWN = 20  # items listed per kind in the dry run's output


@dataclass(frozen=True)
class Kept:
    ref: str
    commit: str | None  # None in a dry run for uncommitted changes (nothing is committed then)
    source: str


@dataclass
class Result:
    dry_run: bool
    worktrees: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    claim_refs: list[str] = field(default_factory=list)
    conflict_refs: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    lock_generations: int = 0
    bytes_freed: int = 0
    kept: list[Kept] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


def collect(colony: Colony, *, dry_run: bool = False, runs_older_than_days: float = 14.0,
            now: float | None = None) -> Result:
    """Do the collection (or, ``dry_run``, only say what it would remove and keep)."""
    git = Git(colony.repo)
    landings = Landings(git, colony.landing_branch())
    result = Result(dry_run)
    for agent in _agents(colony, git):
        with exclusive(git, "worktrees"):
            _agent(colony, git, agent, landings, result)
    _refs(colony, git, result)
    _compact_locks(colony, result)
    cutoff = (time.time() if now is None else now) - runs_older_than_days * 86400
    _runs(colony, cutoff, result)
    return result


# -- agents: worktrees and branches ---------------------------------------------------------------
@dataclass(frozen=True)
class _Worktree:
    path: Path
    head: str | None
    branch: str | None  # the full ref, or None when detached


def _worktrees(git: Git) -> list[_Worktree]:
    """Every worktree of the repository, the main one first (``git worktree list --porcelain``)."""
    out: list[_Worktree] = []
    for block in git.run("worktree", "list", "--porcelain", "-z").split("\0\0"):
        fields: dict[str, str] = {}
        for item in block.split("\0"):
            key, _, value = item.partition(" ")
            if key:
                fields[key] = value
        if "worktree" in fields:
            out.append(_Worktree(Path(fields["worktree"]), fields.get("HEAD") or None, fields.get("branch")))
    return out


def _is_agents(wt: _Worktree, agent: str) -> bool:
    """An agent's worktree: named after it, on its branch or detached (a landing re-verifies on a
    detached candidate). A person's worktree of the same name on another branch is not ours."""
    return wt.path.name == agent and wt.branch in (None, HEADS + agent)


def _agents(colony: Colony, git: Git) -> list[str]:
    """Agents of this colony (a folder under agents/) that have a worktree or a branch."""
    known = {p.name for p in (colony.home / "agents").iterdir() if p.is_dir()} if (
        colony.home / "agents").is_dir() else set()
    with exclusive(git, "worktrees"):  # a half-made `worktree add` can break a listing
        names = {w.path.name for w in _worktrees(git)[1:]}
    names |= {ref[len(HEADS):] for ref, _ in _for_each_ref(git, HEADS)}
    out = []
    for name in sorted(names & known):
        try:
            out.append(check_id(name, "worktree", "agent name"))
        except InvalidId:
            continue
    return out


def _agent(colony: Colony, git: Git, agent: str, landings: Landings, result: Result) -> None:
    """One agent, under the worktrees lock: keep its unlanded commits, then remove its worktree
    and branch. Nothing is removed unless every commit to keep was kept first."""
    running = holder(agent_lock(colony.home, agent))
    if running is not None:
        result.running.append(f"{agent} is running ({running.describe()})")
        return
    every = _worktrees(git)
    mine = [w for w in every[1:] if _is_agents(w, agent)]
    branch = HEADS + agent
    tip = git.resolve(branch)
    elsewhere = any(w.branch == branch for w in every if w not in mine)  # checked out by a person
    stamp = time.strftime("%Y%m%d-%H%M%S")
    wanted: list[_Want] = []
    if tip and not elsewhere:
        wanted.append(_Want(tip, f"branch stigmergy/{agent}", ""))
    snapped_heads: list[str] = []  # HEADs a snapshot of uncommitted changes descends from
    for wt in mine:
        if wt.head and wt.head != tip:
            wanted.append(_Want(wt.head, f"detached HEAD of {wt.path}", "-head"))
        if wt.path.is_dir() and _dirty(git.at(wt.path)):
            snap = None if result.dry_run else _snapshot(git.at(wt.path), wt.head, agent)
            if snap is not None or result.dry_run:
                wanted.append(_Want(snap, f"uncommitted changes in {wt.path}", "-uncommitted", always=True))
                snapped_heads += [wt.head] if wt.head else []
    for want in wanted:
        if not want.always and _covered(git, landings, want, wanted, snapped_heads):
            continue
        ref = _free_name(git, f"{KEPT}{agent}-{stamp}{want.suffix}")
        if not result.dry_run:
            assert want.commit is not None
            git.run("update-ref", "--create-reflog", "-m", f"stigmergy gc: kept {want.where}", ref, want.commit,
                    "0" * 40)
        result.kept.append(Kept(ref, want.commit, want.where))
    for wt in mine:
        result.bytes_freed += _size(wt.path)
        result.worktrees.append(str(wt.path))
        if not result.dry_run:
            git.run("worktree", "remove", "--force", "--force", str(wt.path))
    if tip and not elsewhere:
        if result.dry_run or git.call("update-ref", "-d", branch, tip).returncode == 0:
            result.branches.append(f"stigmergy/{agent}")


def _dirty(wt: Git) -> bool:
    """Changes git would commit (tracked edits, untracked files that are not ignored)."""
    return bool(wt.run("status", "--porcelain", "--untracked-files=all", check=False).strip())


def _snapshot(wt: Git, head: str | None, agent: str) -> str | None:
    """Commit the worktree as it is (a private index: the worktree's own is left alone, merge
    state and all); None when that tree is HEAD's."""
    with tempfile.TemporaryDirectory(prefix="stigmergy-gc-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), **GC_IDENTITY.env()}
        wt.run("read-tree", *([head] if head else ["--empty"]), env=env)
        wt.run("add", "--all", env=env)
        tree = wt.run("write-tree", env=env).strip()
        if head and tree == wt.run("rev-parse", f"{head}^{{tree}}").strip():
            return None
        message = f"stigmergy gc: uncommitted changes left in the worktree of {agent}\n"
        return wt.run("commit-tree", tree, *(["-p", head] if head else []), "-F", "-", input=message,
                      env=env).strip()


@dataclass(frozen=True)
class _Want:
    """A commit of an agent's that may need keeping."""

    commit: str | None  # None: uncommitted changes, in a dry run (nothing is committed then)
    where: str
    suffix: str  # of the kept ref's name
    always: bool = False  # uncommitted changes are kept whatever main holds: the dry run cannot tell


def _covered(git: Git, landings: Landings, want: _Want, wanted: list[_Want], snapped_heads: list[str]) -> bool:
    """No new ref needed: main holds the commit, another ref under refs/stigmergy/ does (a
    conflict's kept work, an earlier kept ref), or another commit kept now descends from it (a
    fix made on a detached HEAD, a snapshot of uncommitted changes)."""
    commit = want.commit
    assert commit is not None
    if landings.holds(commit):
        return True
    if git.run("for-each-ref", "--count=1", "--contains", commit, "refs/stigmergy/", check=False).strip():
        return True
    later = [w.commit for w in wanted if w.commit and w.commit != commit] + snapped_heads
    return any(git.call("merge-base", "--is-ancestor", commit, other).returncode == 0 for other in later)


def _free_name(git: Git, ref: str) -> str:
    name, n = ref, 1
    while git.ref_value(name) is not None:
        n += 1
        name = f"{ref}-{n}"
    return name


class Landings:
    """Whether main holds a commit's work (see the module docstring)."""

    def __init__(self, git: Git, main: str) -> None:
        self.git = git
        self.main = f"refs/heads/{main}"

    def holds(self, commit: str) -> bool:
        git = self.git
        if git.call("merge-base", "--is-ancestor", commit, self.main).returncode == 0:
            return True
        main_tree = git.run("rev-parse", f"{self.main}^{{tree}}").strip()
        if self._merged(self.main, commit) == main_tree:
            return True
        task = git.run("log", "-1", "--format=%(trailers:key=Task-Id,valueonly)", commit).strip()
        if not task:
            return False
        found = git.run("log", "--first-parent", "--fixed-strings", f"--grep=Task-Id: {task}",
                        "--format=%x1e%H %T %P%x00%(trailers:key=Task-Id,valueonly)", self.main)
        for record in found.split("\x1e"):
            head, _, ids = record.strip().partition("\0")
            shas = head.split()
            if len(shas) >= 3 and task in ids.split() and self._merged(shas[2], commit) == shas[1]:
                return True  # exactly its squashed landing on main
        return False

    def _merged(self, ours: str, theirs: str) -> str | None:
        done = self.git.call("merge-tree", "--write-tree", ours, theirs)
        return done.stdout.split("\n", 1)[0].strip() if done.returncode == 0 else None


# -- refs, locks, runs of finished tasks ----------------------------------------------------------
def _status(colony: Colony) -> dict[str, str]:
    """Task id -> status, from the file names alone (no task file is parsed)."""
    out: dict[str, str] = {}
    for st in STATUSES:
        for name in os.listdir(colony.store.task_dir(st)):
            if name.endswith(".yaml") and not name.startswith("."):
                out[name[:-5]] = st
    return out


def _for_each_ref(git: Git, prefix: str) -> Iterator[tuple[str, str]]:
    for line in git.run("for-each-ref", "--format=%(refname) %(objectname)", prefix).splitlines():
        ref, _, value = line.partition(" ")
        if value:
            yield ref, value


def _refs(colony: Colony, git: Git, result: Result) -> None:
    status = _status(colony)
    claims = [(r, v) for r, v in _for_each_ref(git, CLAIMS) if status.get(r[len(CLAIMS):]) in FINISHED]
    conflicts = [(r, v) for r, v in _for_each_ref(git, CONFLICTS) if status.get(r[len(CONFLICTS):]) == "done"]
    result.claim_refs += _delete_refs(git, claims, result.dry_run)
    result.conflict_refs += _delete_refs(git, conflicts, result.dry_run)


def _delete_refs(git: Git, refs: list[tuple[str, str]], dry_run: bool) -> list[str]:
    """Delete each ref if it still has the value read (a claim acquired meanwhile stays): in one
    transaction, or one by one when some value moved under us."""
    if dry_run or not refs:
        return [r for r, _ in refs]
    batch = "start\n" + "".join(f"delete {r} {v}\n" for r, v in refs) + "commit\n"
    if git.call("update-ref", "--stdin", input=batch).returncode == 0:
        return [r for r, _ in refs]
    return [r for r, v in refs if git.call("update-ref", "-d", r, v).returncode == 0]


def _compact_locks(colony: Colony, result: Result) -> None:
    """Old generations of done tasks lose their owner record (a block each) but not their entry:
    generations are never deleted, the newest is how a late lander stays fenced."""
    for tid in sorted(t for t, st in _status(colony).items() if st == "done"):
        for path in colony.leases.generations(tid)[:-1]:
            try:
                if os.readlink(path) == TOMBSTONE:
                    continue
                blocks = os.lstat(path).st_blocks * 512
            except OSError:
                continue
            result.lock_generations += 1
            result.bytes_freed += blocks
            if not result.dry_run:
                tmp = f"{path}.gc"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                os.symlink(TOMBSTONE, tmp)
                os.replace(tmp, path)


def _runs(colony: Colony, cutoff: float, result: Result) -> None:
    root = colony.home / "runs"
    if not root.is_dir():
        return
    status = _status(colony)
    for tid in sorted(os.listdir(root)):
        folder = root / tid
        if not folder.is_dir() or _newest(folder) >= cutoff:
            continue
        if tid in status or not sweep.is_sweep_id(tid):  # a sweep's: no task, finished once untouched
            if status.get(tid) not in FINISHED:
                continue
            found = colony.store.locate(tid)  # once more, just before: a failed task may have been retried
            if found is None or found[0] not in FINISHED:
                continue
        result.runs.append(str(folder))
        result.bytes_freed += _size(folder)
        if not result.dry_run:
            shutil.rmtree(folder, ignore_errors=True)


def _walk(path: Path) -> Iterator[os.stat_result]:
    for top, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                yield os.lstat(os.path.join(top, name))
            except OSError:
                continue


def _newest(path: Path) -> float:
    return max((st.st_mtime for st in _walk(path)), default=path.stat().st_mtime)


def _size(path: Path) -> int:
    return sum(st.st_size for st in _walk(path) if not _is_dir(st))


def _is_dir(st: os.stat_result) -> bool:
    return (st.st_mode & 0o170000) == 0o040000


# -- output ---------------------------------------------------------------------------------------
def render(r: Result) -> str:
    verb = "would remove" if r.dry_run else "removed"
    refs = len(r.claim_refs) + len(r.conflict_refs)
    out = [("gc --dry-run (nothing changed): " if r.dry_run else "gc: ") +
           f"{verb} {len(r.worktrees)} worktree(s), {len(r.branches)} branch(es), {refs} ref(s) "
           f"({len(r.claim_refs)} claims, {len(r.conflict_refs)} conflicts), {len(r.runs)} run folder(s), "
           f"{r.lock_generations} lock generation(s); {_bytes(r.bytes_freed)} "
           + ("to free" if r.dry_run else "freed")]
    if r.dry_run:
        for title, items in (("worktrees", r.worktrees), ("branches", r.branches), ("claim refs", r.claim_refs),
                             ("conflict refs", r.conflict_refs), ("run folders", r.runs)):
            if items:
                out.append(f"{title}:")
                out += [f"  {item}" for item in items[:_SHOWN]]
                if len(items) > _SHOWN:
                    out.append(f"  ... and {len(items) - _SHOWN} more")
    if r.kept:
        out.append(("would keep" if r.dry_run else "kept") + f" {len(r.kept)} unlanded item(s) under {KEPT} "
                   "(`git log REF` shows one; `git update-ref -d REF` drops it):")
        out += [f"  {k.ref}  {(k.commit or 'new commit')[:12]}  {k.source}" for k in r.kept]
    out += [f"left alone: {line}" for line in r.running]
    return "\n".join(out)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"
