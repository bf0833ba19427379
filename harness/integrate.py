"""Landing an agent's work on main: merge, verify, compare-and-swap, fenced by the task's claim.

One landing = exactly one new commit on main's first-parent line: the merge of the agent's
commit C into the current main M, squashed into a single-parent commit on M that carries
``Task-Id:`` and ``Agent:`` trailers. A single parent keeps ``git log --first-parent main`` one
commit per task and ``git revert`` trivial; C itself is not needed on main because its whole
effect is in the squashed tree (and a conflicted C is kept under ``refs/stigmergy/conflicts/``).

Fencing lives inside git's own ref transaction (fence.py): the landing moves main from M to the
new commit *and* the task's claim ref from the holder's blob to that commit, each with its
expected old value, so it commits entirely or not at all: an agent whose claim was taken over, or
that wakes up after the task landed, fails its old-value check and gets :class:`Fenced`.

The exact tree that lands has passed ``verify``: when main moved since the verified tree, the
lander joins the merge queue (mergequeue.py), verifies its work on top of main and every
candidate ahead of it while they verify theirs, and lands once they have, with one
compare-and-swap, only a tree it verified. After :class:`VerifyFailed` the worktree is left at
that failing candidate, so the agent can fix it there and land the fix like any other commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import fsutil
from harness.checkout import Blocked
from harness.errors import GitError
from harness.fence import CLAIMS, AlreadyLanded, Fence, Fenced, fenced
from harness.git import Git
from harness.mergequeue import Entry, MergeQueue
from harness.redact import redact
from harness.workspace import Workspace

CONFLICTS = "refs/stigmergy/conflicts/"
MAX_DIFF_CHARS = 100_000  # a conflict's diffs go into a task file and a prompt: keep them bounded


@dataclass(frozen=True)
class Verdict:
    ok: bool
    log: str = ""


# Called with the agent's worktree path, checked out at the tree to verify.
Verify = Callable[[Path], "bool | Verdict"]


@dataclass(frozen=True)
class Landed:
    commit: str
    tree: str  # the commit's tree, which passed verify
    attempts: int = 1  # verify runs and lost compare-and-swaps at the head of the queue (at least 1)


@dataclass(frozen=True)
class Conflict:
    task_id: str
    ref: str  # refs/stigmergy/conflicts/<task>: keeps the agent's commit alive
    paths: list[str]
    base: str
    ours: str  # main when the merge was tried
    theirs: str  # the agent's commit
    ours_diff: str
    theirs_diff: str
    messages: list[str]


@dataclass(frozen=True)
class VerifyFailed:
    log: str
    commit: str  # the merge candidate that failed (checked out in the agent's worktree)


@dataclass(frozen=True)
class Contended:
    """Main moved under every one of ``attempts`` tries (or ``why``); nothing landed, the work is intact."""

    attempts: int
    why: str = ""  # what else held the landing back (a nest out of reach), when it was not main moving


@dataclass(frozen=True)
class Unchanged:
    """The work merged into main changes nothing (it was undone, or main has it already): no
    commit lands, since an empty one on main would count as a task's work that is not there."""

    main: str


LandResult = Landed | Fenced | AlreadyLanded | Conflict | VerifyFailed | Contended | Blocked | Unchanged
# Told why a landing cannot go on yet (after waiting a little); False gives up.
Wait = Callable[[str], bool]


def land(
    ws: Workspace,
    commit: str,
    *,
    title: str,
    fence: Fence,
    verify: Verify,
    trailers: Sequence[tuple[str, str]] = (),
    commit_verified: bool = True,
    max_attempts: int = 10,
    wait: Wait | None = None,
    keep_waiting: Callable[[], bool] | None = None,
    patience: float = 3600.0,
) -> LandResult:
    """Land ``commit`` (the agent's work) on main as one commit, for ``fence.task_id``.

    ``commit_verified`` says ``commit``'s own tree already passed verify (the agent loop verifies
    before landing); any other tree is verified here before it can land. Extra ``trailers`` go
    after Task-Id and Agent (a conflict resolution passes ``("Resolves", original_id)``).
    When the user's checkout holds changes the landing would overwrite, ``wait(reason)`` is
    called until they are gone (it returns False to give up); without it, :class:`Blocked`
    is returned at once. Waiting in the merge queue ends with :class:`Contended` once
    ``keep_waiting()`` says no (a stop) or after ``patience`` seconds; ``max_attempts`` bounds
    the verify runs and lost compare-and-swaps at the head of the queue.
    """
    queue = MergeQueue(ws.git, CLAIMS)
    entry: list[Entry] = []  # ours while we are in the queue, left on every way out
    try:
        return _land(ws, commit, queue, entry, title=title, fence=fence, verify=verify, trailers=trailers,
                     commit_verified=commit_verified, max_attempts=max_attempts, wait=wait,
                     keep_waiting=keep_waiting or (lambda: True), patience=patience)
    finally:
        for e in entry:
            queue.leave(e)


def _land(ws: Workspace, commit: str, queue: MergeQueue, entry: list[Entry], *, title: str, fence: Fence,
          verify: Verify, trailers: Sequence[tuple[str, str]], commit_verified: bool, max_attempts: int,
          wait: Wait | None, keep_waiting: Callable[[], bool], patience: float) -> LandResult:
    """The landing loop (mergequeue.py says why and how). Straight to the compare-and-swap while
    the queue is empty and our merge result is a tree already verified; otherwise in the queue:
    behind others, verify the predicted tree and wait for them; at the head, verify the real
    merge result if it is not one already verified, and land it. A landing blocked by the user's
    checkout leaves the queue while it waits and joins again at the back."""
    git, task_id = ws.git, fence.task_id
    main_ref = f"refs/heads/{ws.main}"
    checkout = ws.checkout
    merges = _Merges(git, ws.identity.env(), queue.merges)
    verified = {ws.tree_of(commit)} if commit_verified else set()
    failed: dict[str, str] = {}  # tree -> verify log, of trees that failed (maybe only speculatively)
    message = _message(title, task_id, ws.agent, trailers)
    tries, give_up = 0, time.monotonic() + patience
    while True:
        ahead, refs = queue.look(entry[0] if entry else None, main_ref, fence.ref)
        if refs.get(fence.ref, ("", ""))[0] != fence.blob:  # early exit before merging and verifying for nothing
            return fenced(fence)
        if not refs.get(main_ref, ("", ""))[1]:
            raise GitError(["for-each-ref", main_ref], 1, f"{main_ref} does not exist")
        old, old_tree = refs[main_ref]
        # The merge onto main itself decides a conflict and the tree that lands. It is made out of
        # the queue and at its head only (in between, main moves at every landing ahead and the
        # prediction is what counts), and never taken from the shared results, whose key leaves
        # out the merge base: a prediction may be wrong, a landing may not.
        tree = None
        if not entry or not ahead:
            tree, conflicted, messages = _merge_tree(git, old, commit)
            if conflicted:
                return _keep_conflict(git, task_id, old, commit, conflicted, messages)
            if tree == old_tree:
                return Unchanged(old)
        if not entry and (ahead or tree not in verified):
            entry.append(queue.join(task_id, ws.agent, commit, fence.blob))
            ahead = queue.look(entry[0])[0]  # others may have joined just ahead of us
        if ahead:  # verify what main will be once they land, then wait for them
            stacked = merges.onto(*_predict(merges, old, old_tree, ahead), commit)
            if stacked is not None and stacked[1] not in verified and stacked[1] not in failed:
                _check(ws, verify, stacked[0], stacked[1], verified, failed)
                continue
            if time.monotonic() > give_up or not keep_waiting():
                return Contended(tries)
            _wait_for_change(queue, entry[0])
            continue
        assert tree is not None  # merged above whenever nobody is ahead
        candidate = git.run("commit-tree", tree, "-p", old, "-F", "-", input=message,
                            env=ws.identity.env()).strip()
        if tree in failed:  # known to fail on exactly this main: say so, at the candidate
            ws.wt.run("checkout", "--quiet", "--force", "--detach", candidate)
            return VerifyFailed(failed[tree], candidate)
        if tree not in verified:
            if tries >= max_attempts:
                return Contended(tries)
            tries += 1
            if not _check(ws, verify, candidate, tree, verified, failed):
                return VerifyFailed(failed[tree], candidate)
        # No separate `verify` line for the claim ref: git refuses two commands on one ref in a
        # transaction, and an `update` with an old value is the same check.
        transaction = (
            f"start\nupdate {main_ref} {candidate} {old}\n"
            f"update {fence.ref} {candidate} {fence.blob}\ncommit\n"
        )
        done = checkout.move(old, candidate, lambda: git.call(
            "update-ref", "--stdin", "-m", f"stigmergy: land {task_id} by {ws.agent}", input=transaction))
        if isinstance(done, Blocked):
            for e in entry:  # others may land what does not touch the user's changes meanwhile
                queue.leave(e)
            entry.clear()
            if wait is None or not wait(done.reason):
                return done
            continue
        if done.returncode == 0:
            return Landed(candidate, tree, max(tries, 1))
        # Which old-value check failed? stderr wording varies across versions: re-read the refs.
        if not fence.holds():
            return fenced(fence)
        if git.resolve(main_ref) == old:
            raise GitError(["update-ref", "--stdin"], done.returncode, redact(done.stderr))
        tries += 1  # main moved outside the queue (a person, or a lander that saw it empty)
        if tries >= max_attempts:
            return Contended(tries)


def land_remote(ws: Workspace, commit: str, *, task_id: str, title: str, verify: Verify,
                push: Callable[[str, str], bool], fetch: Callable[[], str],
                trailers: Sequence[tuple[str, str]] = (), max_attempts: int = 10) -> LandResult:
    """Land ``commit`` on a landing branch kept elsewhere (a nest), whose compare-and-swap is
    ``push(candidate, expected_tip)`` (False: the branch moved; it raises when the claim is
    lost) and whose tip ``fetch()`` brings here. The same one squashed commit per task as
    :func:`land`, and the same promise: the exact tree pushed passed ``verify``. There is no
    merge queue across machines: a lander that lost the race fetches the new tip, merges and
    verifies again (``max_attempts`` bounds the verify runs and lost races together).
    ``ws.main`` is the local branch holding the tip the work started from (fetched there)."""
    git = ws.git
    old = git.resolve(f"refs/heads/{ws.main}")
    if old is None:
        raise GitError(["rev-parse", ws.main], 1, f"branch {ws.main!r} does not exist")
    verified = {ws.tree_of(commit)}  # the agent loop verified its own commit
    failed: dict[str, str] = {}
    message = _message(title, task_id, ws.agent, trailers)
    tries = 0
    while tries < max_attempts:
        tree, conflicted, messages = _merge_tree(git, old, commit)
        if conflicted:
            return _keep_conflict(git, task_id, old, commit, conflicted, messages)
        if tree == ws.tree_of(old):
            return Unchanged(old)
        candidate = git.run("commit-tree", tree, "-p", old, "-F", "-", input=message, env=ws.identity.env()).strip()
        if tree not in verified:
            tries += 1
            if not _check(ws, verify, candidate, tree, verified, failed):
                return VerifyFailed(failed[tree], candidate)
        if push(candidate, old):
            return Landed(candidate, tree, max(tries, 1))
        tries += 1
        old = fetch()
    return Contended(tries)


class _Merges:
    """Merge results by (tree of the base, commit merged onto it), shared by every lander through
    ``folder``: each lander's prediction is the one ahead of it plus one merge, and after the head
    lands main has the tree predicted for it, so nearly every merge a lander needs another has
    made already. A result is a commit on the base (its history gives the next merge the same
    merge base as main's will) and its tree; None is a conflict. Each is written whole, so two
    landers making the same one at once just both write it."""

    def __init__(self, git: Git, env: dict[str, str], folder: Path) -> None:
        self.git, self.env, self.folder = git, env, folder
        self.known: dict[tuple[str, str], tuple[str, str] | None] = {}

    def onto(self, base: str, base_tree: str, commit: str) -> tuple[str, str] | None:
        key = (base_tree, commit)
        if key in self.known:
            return self.known[key]
        path = self.folder / f"{base_tree}-{commit}"
        try:
            words = path.read_text().split()
        except FileNotFoundError:
            words = []
        if words == ["conflict"] or len(words) == 2:
            found = None if words == ["conflict"] else (words[0], words[1])
        else:
            tree, conflicted, _ = _merge_tree(self.git, base, commit)
            found = None if conflicted else (self.git.run(
                "commit-tree", tree, "-p", base, "-m", "stigmergy: merge queue prediction", env=self.env).strip(), tree)
            try:  # a cache: the first lander of a new queue may be clearing the folder right now
                self.folder.mkdir(parents=True, exist_ok=True)
                fsutil.atomic_write(path, "conflict\n" if found is None else f"{found[0]} {found[1]}\n", fsync=False)
            except FileNotFoundError:
                pass
        self.known[key] = found
        return found


def _predict(merges: _Merges, main: str, main_tree: str, ahead: Sequence[Entry]) -> tuple[str, str]:
    """Main once everyone ahead has landed: their work merged on in queue order, leaving out any
    that would conflict (it cannot land). Every lander computes the same, from the same queue."""
    base = (main, main_tree)
    for e in ahead:
        base = merges.onto(*base, e.commit) or base
    return base


def _check(ws: Workspace, verify: Verify, commit: str, tree: str, verified: set[str], failed: dict[str, str]) -> bool:
    """Verify ``commit`` checked out (detached) in the agent's worktree; remember the verdict by tree."""
    ws.wt.run("checkout", "--quiet", "--force", "--detach", commit)
    verdict = _verdict(verify(ws.path))
    if verdict.ok:
        verified.add(tree)
    else:
        failed[tree] = verdict.log
    return verdict.ok


def _wait_for_change(queue: MergeQueue, entry: Entry, most: float = 2.0) -> None:
    """Until an entry ahead of ours leaves (the head leaves once it landed), or ``most`` seconds:
    then the caller looks again (an owner SIGKILLed ahead, or main moved by someone outside the
    queue, changes nothing here). One listing per look: with a fast verify, waking every waiter
    at every join or move of main cost more than the landings."""
    queue.touch(entry)
    before, end = queue.stamp(entry), time.monotonic() + most
    while time.monotonic() < end:
        time.sleep(0.025)
        if queue.stamp(entry) != before:
            return


def prepare_conflict_worktree(
    ws: Workspace, conflict_ref: str, branch: str | None = None
) -> list[str]:
    """Reset ``ws`` to main and merge the kept commit without committing, leaving conflict
    markers (diff3 style: the base is shown too) for a model to edit. Returns the paths still
    conflicted; resolve, ``ws.commit_all``, then ``land`` as usual."""
    theirs = ws.git.resolve(conflict_ref)
    if theirs is None:
        raise GitError(["rev-parse", conflict_ref], 1, f"{conflict_ref} does not exist")
    ws.prepare(branch)
    done = ws.wt.call("-c", "merge.conflictStyle=diff3", "merge", "--no-commit", "--no-ff",
                      "--no-edit", theirs, env=ws.identity.env())
    if done.returncode not in (0, 1):
        raise GitError(["merge", theirs], done.returncode, redact(done.stderr))
    out = ws.wt.run("diff", "--name-only", "-z", "--diff-filter=U")
    return [p for p in out.split("\0") if p]


def _merge_tree(git: Git, ours: str, theirs: str) -> tuple[str, list[str], list[str]]:
    """(tree, conflicted paths, conflict messages). With ``-z --name-only`` the output is
    ``TREE NUL path NUL ... NUL NUL`` then records ``<n> NUL <path>... NUL <type> NUL <msg> NUL``;
    exit status 0 = clean, 1 = conflicts, anything else = the merge could not run."""
    done = git.call("merge-tree", "--write-tree", "-z", "--name-only", "--messages", ours, theirs)
    if done.returncode not in (0, 1):
        raise GitError(["merge-tree", ours, theirs], done.returncode, redact(done.stderr))
    fields = done.stdout.split("\0")
    tree = fields[0].strip()
    if done.returncode == 0:
        return tree, [], []
    end = fields.index("", 1)
    paths, rest = fields[1:end], fields[end + 1:]
    messages, i = [], 0
    while i < len(rest) and rest[i].isdigit():
        i += 1 + int(rest[i])  # skip the count and the paths it announces
        if i + 1 < len(rest) and rest[i].startswith("CONFLICT"):
            messages.append(rest[i + 1].strip())
        i += 2
    return tree, paths, messages


def _keep_conflict(
    git: Git, task_id: str, ours: str, theirs: str, paths: list[str], messages: list[str]
) -> Conflict:
    ref = CONFLICTS + task_id
    git.run("update-ref", "--create-reflog", "-m", f"stigmergy: conflict on {task_id}", ref, theirs)
    base = git.run("merge-base", ours, theirs).strip()

    def diff(a: str, b: str) -> str:
        text = git.run("--literal-pathspecs", "diff", "--no-color", "--no-ext-diff", a, b,
                       "--", *paths)
        return text if len(text) <= MAX_DIFF_CHARS else text[:MAX_DIFF_CHARS] + "\n[truncated]\n"

    return Conflict(task_id, ref, paths, base, ours, theirs, diff(base, ours), diff(base, theirs),
                    messages)


def _message(title: str, task_id: str, agent: str, trailers: Sequence[tuple[str, str]]) -> str:
    lines = [f"Task-Id: {task_id}", f"Agent: {agent}", *(f"{k}: {v}" for k, v in trailers)]
    return f"{title.strip() or task_id}\n\n" + "\n".join(lines) + "\n"


def _verdict(result: bool | Verdict) -> Verdict:
    return result if isinstance(result, Verdict) else Verdict(bool(result))
