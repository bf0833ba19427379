"""An agent's private git worktree: reset to the tip of main before each attempt, committed after.

The worktree lives at ``<root>/<agent>``, is created once and reused: a fresh ``git worktree add``
checks out the whole tree, a reset only touches what changed. Only the agent's own process ever
touches it, which is what lets :meth:`Workspace.prepare` treat any lock file inside it as stale.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.checkout import UserCheckout
from harness.errors import GitError
from harness.git import ZERO_OID, Git, Identity, exclusive
from harness.tasks import check_id


# Applied once to the shared repository while agents run: an automatic gc or maintenance run
# repacks objects and refs under concurrent agents (lock errors, slow landings).
SHARED_SETTINGS = {"gc.auto": "0", "maintenance.auto": "false"}


def configure_shared_repo(git: Git) -> None:
    """Idempotent: read first, write only what differs (a config write takes config.lock)."""
    for key, value in SHARED_SETTINGS.items():
        current = git.run("config", "--get", key, check=False).strip()
        if current != value:
            git.run("config", key, value)


class Workspace:
    """``repo`` is the target repository (the user's checkout); ``root`` holds agents' worktrees."""

    def __init__(self, repo: Path, root: Path, agent: str, *, main: str = "main") -> None:
        self.agent = check_id(agent, "agent", "agent name")
        self.repo = Path(repo).resolve()
        self.root = Path(root).resolve()
        self.path = self.root / agent
        self.main = main
        self.git = Git(self.repo)  # repository-wide operations (refs, objects, worktree admin)
        self.wt = Git(self.path)  # operations inside this agent's worktree
        self.identity = Identity.for_agent(agent)
        self._configured = False
        self._gitdir: str | None = None  # this worktree's admin dir, as _healthy last found it
        self._admin: Path | None = None  # and as the last prepare() used it
        self._made = ("", "")  # the commit commit_all made last and its tree: landing asks for it
        self._checkout: UserCheckout | None = None

    @property
    def checkout(self) -> UserCheckout:
        """The user's checkout of main, found once (it is the repository's main worktree)."""
        if self._checkout is None:
            self._checkout = UserCheckout(self.git, self.main)
        return self._checkout

    def tree_of(self, commit: str) -> str:
        """The tree of ``commit``: known without git when commit_all just made it."""
        made, tree = self._made
        return tree if commit == made else self.wt.run("rev-parse", f"{commit}^{{tree}}").strip()

    def prepare(self, branch: str | None = None) -> Path:
        """Reset the worktree to the tip of main on a fresh ``branch`` and return its path.

        Creates the worktree on first use and recovers one whose directory was deleted, whose
        registration is locked or stale, or which a killed git left half-made. Tracked changes
        and untracked files of the previous attempt are discarded; ignored files (build caches,
        virtualenvs) are kept because they are expensive to rebuild and git never lands them.
        """
        if not self._configured:
            configure_shared_repo(self.git)
            self._hide_from_user_status()
            self._configured = True
        tip = self.git.resolve(f"refs/heads/{self.main}")
        if tip is None:
            raise GitError(["rev-parse", self.main], 1, f"branch {self.main!r} does not exist")
        with exclusive(self.git, "worktrees"):
            self._ensure_worktree(tip)
        self._remove_stale_locks()
        branch = branch or f"stigmergy/{self.agent}"
        previous = self.wt.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip()
        # Detach first (the slow part, outside the lock): it clears merge state and unmerged
        # entries, and frees the old branch name so a new name nesting under it can be made.
        self.wt.run("checkout", "--quiet", "--force", "--detach", tip)
        with exclusive(self.git, "worktrees"):  # both commands list every worktree
            if previous and previous != branch and previous.startswith("stigmergy/"):
                self.wt.run("branch", "--quiet", "-D", previous, check=False)
            self.wt.run("checkout", "--quiet", "--no-track", "-B", branch, tip)
        # -ff: also remove nested repositories the model may have created with `git init`.
        self.wt.run("clean", "-ffdq")
        return self.path

    def commit_all(self, message: str, author: Identity | None = None) -> str | None:
        """Commit everything the agent changed (new files included, .gitignore respected) as one
        child of HEAD; return its sha, or None when nothing changed.

        Plumbing rather than ``git commit``: the target's hooks and signing config must not run
        in agents' worktrees, and a conflict-resolution worktree (MERGE_HEAD present) still
        yields a single-parent commit — landing squashes it onto main either way.
        """
        ident = author or self.identity
        self.wt.run("add", "--all")
        tree = self.wt.run("write-tree").strip()
        known = self.wt.call("rev-parse", "HEAD^{commit}", "HEAD^{tree}")  # both in one git process
        head, head_tree = known.stdout.split() if known.returncode == 0 else (None, None)
        if head is not None and tree == head_tree:
            return None
        parents = ["-p", head] if head else []
        sha = self.wt.run(
            "commit-tree", tree, *parents, "-F", "-", input=message, env=ident.env()
        ).strip()
        self.wt.run("update-ref", "-m", f"stigmergy: commit by {self.agent}", "HEAD", sha,
                    head or ZERO_OID)
        merging = (self._admin / "MERGE_HEAD").exists() if self._admin else self.wt.resolve("MERGE_HEAD")
        if merging:
            self.wt.run("merge", "--quit")
        self._made = (sha, tree)
        return sha

    def _ensure_worktree(self, tip: str) -> None:
        if self._healthy():
            return
        if (self.path / ".git").is_file():
            # The admin dir under .git/worktrees may have moved or been renamed: repair relinks.
            self.git.run("worktree", "repair", str(self.path), check=False)
            if self._healthy():
                return
        if self.path.exists():
            shutil.rmtree(self.path)  # ours alone: a half-made or foreign directory at our path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # `-f -f` drops a stale registration of this one path, even one locked by a killed
        # `worktree add` ("initializing"). Never `git worktree prune`: it sweeps every entry and
        # races with other agents' `worktree add` in flight, deleting their half-made admin dir.
        self.git.run("worktree", "add", "--quiet", "-f", "-f", "--detach", str(self.path), tip)

    def _healthy(self) -> bool:
        """The directory is a working worktree of *this* repository rooted exactly at our path
        (without the last check, a worktree root inside the repo would find the user's repo)."""
        if not (self.path / ".git").exists():
            return False
        done = self.wt.call("rev-parse", "--path-format=absolute", "--show-toplevel",
                            "--git-common-dir", "--git-dir", "--verify", "HEAD")
        if done.returncode != 0:
            return False
        top, common, gitdir, _head = done.stdout.splitlines()
        mine = self.git.common_dir().resolve()
        healthy = Path(top).resolve() == self.path and Path(common).resolve() == mine
        self._gitdir = gitdir if healthy else None
        return healthy

    def _remove_stale_locks(self) -> None:
        # The admin dir _healthy just read (one git process fewer per task), or ask for it when
        # the worktree was made afresh.
        known, self._gitdir = self._gitdir, None
        gitdir = Path(known or self.wt.run("rev-parse", "--path-format=absolute", "--git-dir").strip())
        self._admin = gitdir
        for name in ("index.lock", "HEAD.lock"):
            (gitdir / name).unlink(missing_ok=True)

    def _hide_from_user_status(self) -> None:
        """Nested worktrees under the user's checkout would show as untracked: exclude them."""
        try:
            rel = self.root.relative_to(self.repo)
        except ValueError:
            return  # outside the checkout: nothing to hide
        if rel.parts:
            exclude(self.git, f"/{rel.as_posix()}/")


def exclude(git: Git, line: str) -> None:
    """Add ``line`` to the repository's info/exclude (not the user's .gitignore) unless it is there."""
    path = Path(git.run("rev-parse", "--path-format=absolute", "--git-path", "info/exclude").strip())
    existing = path.read_text().splitlines() if path.exists() else []
    if line not in existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:  # one append: concurrent starters at worst duplicate it
            fh.write(("\n" if existing and existing[-1] else "") + line + "\n")
