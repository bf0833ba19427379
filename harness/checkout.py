"""The user's checkout moves with the landing branch at every landing, or the landing waits.

Git refuses to move a branch that is checked out under a work tree (``receive.denyCurrentBranch``):
its index and files would stay behind, ``git status`` would show the new commits as staged
reversals and an ordinary ``git commit -am`` would undo them. Agents land with ``update-ref``, so
the colony gives the same safety itself. Every landing runs :meth:`UserCheckout.move`:

1. take the user's ``index.lock`` (create-only, git's own lock: commit, add, stash, checkout,
   merge and pull all need it, so none of the user's commands can interleave with a landing);
2. when the checkout has the landing branch checked out, two-way merge its index and files from
   OLD to NEW in a copy of the index (``read-tree -m -u``, what ``git checkout`` does): local edits,
   staged changes and untracked files elsewhere are kept; one in a path the landing changes makes
   it refuse before it writes anything, and the landing waits (:class:`Blocked`, with the reason).
   So does a merge, cherry-pick or revert the user has begun on the branch, or a rebase of it:
   its last step expects the branch where it was;
3. run the ref transaction (the landing itself);
4. install the new index by rename, as git does, and drop the lock.

So the user's checkout is consistent with the branch before and after every landing, and nothing of
theirs is overwritten. A journal written while the lock is held lets the next lander finish or undo
a landing killed half-way (:meth:`UserCheckout.settle`); an flock serialises all of this across the
colony and frees itself when its holder dies.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import fsutil
from harness.git import Completed, Git, exclusive

JOURNAL = "stigmergy-checkout.json"
TMP_INDEX = "stigmergy-index"


@dataclass(frozen=True)
class Blocked:
    """The landing would overwrite something in the user's checkout, or git holds its index: wait."""

    reason: str


class UserCheckout:
    """The repository's main worktree (None for a bare repository) as a landing sees it."""

    def __init__(self, git: Git, branch: str) -> None:
        self.git, self.branch = git, branch
        self.common = git.common_dir()
        self.top = main_worktree(git)
        self.index, self.lock = self.common / "index", self.common / "index.lock"
        self.journal, self.tmp = self.common / JOURNAL, self.common / TMP_INDEX

    def move(self, old: str, new: str, transact: Callable[[], Completed]) -> Completed | Blocked:
        """Run ``transact`` (moves the branch from ``old`` to ``new``) with the checkout following it."""
        top = self.top
        if top is None:
            return transact()  # bare: there is no checkout to keep consistent
        user = self.git.at(top)
        with exclusive(self.git, "checkout"):
            self.settle()  # a lander killed half-way before us
            moved: bool | None = None  # known once the transaction ran; else settle asks git
            token = f"stigmergy {os.getpid()} {secrets.token_hex(8)}\n"
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return Blocked(f"{self.lock} exists: a git command is running in your checkout {self.top} "
                               "(if none is, a crashed one left it behind: remove the file)")
            with os.fdopen(fd, "w") as fh:
                fh.write(token)
            try:
                fsutil.write_json(self.journal, {"token": token, "from": old, "to": new, "pid": os.getpid(),
                                                 "host": socket.gethostname()}, fsync=False)
                follow = self._follows(user)
                busy = self._in_progress(follow)
                if busy:
                    return Blocked(f"waiting to land: your checkout {self.top} is in the middle of a {busy} on "
                                   f"{self.branch}: finish it (or abort it) and the landing goes on")
                running = _git_running_in(top)
                if running:
                    return Blocked(f"waiting to land: a git command is running in your checkout: {running}")
                if follow:
                    refused = self._merge_files(user, old, new)
                    if refused:
                        return Blocked(refused)
                done = transact()
                moved = done.returncode == 0
                if follow and done.returncode == 0:
                    os.replace(self.tmp, self.index)
                    # A git command that began meanwhile may hold the old index in memory: keep the
                    # lock until it ends, so it cannot write that back over the new one.
                    _wait_while(lambda: _git_running_in(top) is not None)
                return done
            finally:
                self.settle(moved)

    def _follows(self, user: Git) -> bool:
        """The checkout has the branch checked out: its HEAD read as a file (a git process fewer
        per landing), or asked of git where the file is only a stub (the reftable ref format)."""
        head = (_read(self.common / "HEAD") or "").strip()
        if head in ("", "ref: refs/heads/.invalid"):
            head = "ref: " + user.run("symbolic-ref", "--quiet", "HEAD", check=False).strip()
        return head == f"ref: refs/heads/{self.branch}"

    def _in_progress(self, follow: bool) -> str | None:
        """A merge, cherry-pick or revert on the branch, or a rebase of it, that the user has begun:
        moving the branch now would fail its last step (its ref update expects the old tip)."""
        if follow:
            for marker, what in (("MERGE_HEAD", "merge"), ("CHERRY_PICK_HEAD", "cherry-pick"),
                                 ("REVERT_HEAD", "revert")):
                if (self.common / marker).exists():
                    return what
        for folder in ("rebase-merge", "rebase-apply"):
            head = _read(self.common / folder / "head-name")
            if head is not None and head.strip() == f"refs/heads/{self.branch}":
                return "rebase"
        return None

    def _merge_files(self, user: Git, old: str, new: str) -> str | None:
        """Index copy and files from ``old`` to ``new``; None when done, else why git refused."""
        env = {"GIT_INDEX_FILE": str(self.tmp)}
        fsutil.atomic_write(self.tmp, self.index.read_bytes() if self.index.exists() else b"", fsync=False)
        done = user.call("read-tree", "-m", "-u", old, new, env=env)
        if done.returncode != 0:  # stale stat info makes an untouched file look modified: refresh once
            user.call("update-index", "-q", "--refresh", env=env)
            done = user.call("read-tree", "-m", "-u", old, new, env=env)
        return None if done.returncode == 0 else _why(done.stderr, self.top)

    def describe(self) -> str | None:
        """For the launcher: what landings will do to a dirty checkout of the landing branch, or None."""
        if self.top is None:
            return None
        user = self.git.at(self.top)
        if user.run("symbolic-ref", "--quiet", "HEAD", check=False).strip() != f"refs/heads/{self.branch}":
            return None
        changed = [ln for ln in user.run("status", "--porcelain", "--", ":(exclude).stigmergy").splitlines() if ln]
        if not changed:
            return None
        return (f"your checkout {self.top} has {self.branch} checked out with {len(changed)} uncommitted change(s): "
                "each landing updates its files around them; a landing that touches a file you changed (or an "
                "untracked file it would create) waits until you commit, stash or remove it, and "
                "`stigmergy status` says which")

    def recover(self) -> None:
        """Settle what a killed lander left, when no landing comes after it (the launcher's exit)."""
        if self.top is not None and self.journal.exists():
            with exclusive(self.git, "checkout"):
                self.settle()

    def settle(self, moved: bool | None = None) -> None:
        """Finish or undo a landing whose lander stopped between taking the lock and dropping it
        (under the flock, so a journal here means that lander is gone or is us, done).

        Branch at ``to``: the transaction happened after the files were merged, so the merged index
        copy is installed. Branch elsewhere: it did not, so every file the merge may have written
        (byte-identical to ``to``'s version) is put back from the untouched index; a file that
        differs is the user's and is left alone. ``moved`` is whether the branch is at ``to``,
        when the caller knows."""
        journal = fsutil.read_json(self.journal)
        if journal is None:
            return
        ours = _read(self.lock) == journal.get("token")
        if ours and self.top is not None:
            if moved is None:
                moved = self.git.resolve(f"refs/heads/{self.branch}") == journal["to"]
            if moved:
                if self.tmp.exists():
                    os.replace(self.tmp, self.index)
            else:
                self._restore(self.git.at(self.top), journal["from"], journal["to"])
        self.tmp.unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)
        if ours:
            self.lock.unlink(missing_ok=True)

    def _restore(self, user: Git, old: str, new: str) -> None:
        changed = [p for p in user.run("diff", "--name-only", "-z", "--no-renames", old, new).split("\0") if p]
        written = {}
        for line in user.run("ls-tree", "-z", "--full-tree", new, "--", *changed).split("\0") if changed else []:
            if line:
                meta, path = line.split("\t", 1)
                written[path] = meta.split()[2]
        tracked = set(user.run("--literal-pathspecs", "ls-files", "-z", "--", *changed).split("\0")) if changed else set()
        for path in changed:
            file = self.top / path if self.top else Path(path)
            blob = written.get(path)
            if blob is None:  # the landing deletes it: if it is gone, it may have been us
                if not file.exists() and path in tracked:
                    user.run("checkout-index", "-f", "--", path)
            elif file.is_file() and user.run("hash-object", "--", path).strip() == blob:
                if path in tracked:
                    user.run("checkout-index", "-f", "--", path)
                else:
                    file.unlink()


def main_worktree(git: Git) -> Path | None:
    """The repository's main worktree (the user's checkout): the first `worktree list` entry."""
    with exclusive(git, "worktrees"):  # listing races with another agent's `worktree add`
        first = git.run("worktree", "list", "--porcelain").split("\n\n", 1)[0]
    fields = dict((line.split(" ", 1) + [""])[:2] for line in first.splitlines())
    return None if "bare" in fields else Path(fields["worktree"])


def _git_running_in(top: Path) -> str | None:
    """A git command of the user's running in their checkout that may write its index (not one of
    the colony's: those carry STIGMERGY_GIT, and the model's commands and verify STIGMERGY_AGENT).
    Git often reads the index before it locks it and writes back what it read (merge, and so pull;
    stash; status refreshing it): a landing in between would be written over and undone."""
    root = str(top)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        proc = entry.path
        try:  # the cwd first: one syscall rules out nearly every process (a landing looks twice)
            cwd = os.readlink(proc + "/cwd")
            if cwd != root and not cwd.startswith(root + "/"):
                continue
            if _proc_read(proc + "/comm").strip() != b"git":
                continue
            argv = _proc_read(proc + "/cmdline").decode(errors="replace").split("\0")
            if argv == [""]:  # exiting (or a zombie): its memory, so its argv and environ, are gone
                continue
            env = b"\0" + _proc_read(proc + "/environ")
            if b"\0STIGMERGY_GIT=" in env or b"\0STIGMERGY_AGENT=" in env:
                continue
            if env == b"\0" and not _proc_read(proc + "/cmdline"):
                continue  # it began exiting between the two reads
        except OSError:  # gone, or not ours to read
            continue
        if _subcommand(argv) not in _NEVER_WRITE_INDEX:
            return f"`{' '.join(argv).strip()[:80]}` (pid {entry.name})"
    return None


def _proc_read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)

# Git commands that never write the index: a `git log` left open in a pager must not hold landings.
_NEVER_WRITE_INDEX = frozenset({
    "log", "show", "diff", "blame", "annotate", "shortlog", "whatchanged", "grep", "help", "reflog",
    "cat-file", "ls-tree", "ls-files", "rev-parse", "rev-list", "for-each-ref", "show-ref", "describe",
    "version", "var", "config", "remote", "fetch", "ls-remote", "cherry", "range-diff", "format-patch"})
_TAKES_VALUE = frozenset({"-c", "-C", "--git-dir", "--work-tree", "--namespace", "--exec-path", "--config-env"})


def _subcommand(argv: list[str]) -> str:
    """`git [global options] SUBCOMMAND ...` -> SUBCOMMAND ("" when there is none)."""
    args = iter(argv[1:])
    for arg in args:
        if arg in _TAKES_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return ""


def _wait_while(busy: Callable[[], bool], patience: float = 10.0) -> None:
    give_up = time.monotonic() + patience
    while busy() and time.monotonic() < give_up:
        time.sleep(0.01)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return None


def _why(stderr: str, top: Path | None) -> str:
    """git's refusal in words a user acts on (it names the paths)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("error:")] or [stderr.strip()]
    paths = [ln.split("'")[1] for ln in lines if ln.count("'") >= 2]
    shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
    if paths:
        return (f"waiting to land: it changes {shown}, which your checkout {top} has uncommitted changes to "
                f"(or an untracked file at): commit, stash or remove them and the landing goes on")
    return f"waiting to land: git refused to update your checkout {top}: {lines[0][:300]}"
