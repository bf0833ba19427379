"""One small wrapper over the ``git`` command.

Every git call the harness makes goes through :class:`Git`: a clean environment (no prompts,
C locale, no inherited ``GIT_DIR``), retries on ``.lock`` contention, and one error type
(:class:`~harness.errors.GitError`) for everything else. Plain subprocess on purpose: it is the
fastest path and has every verb we need (worktrees, merge-tree, update-ref transactions).
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import GitError
from harness.redact import redact

ZERO_OID = "0" * 40

# Another git process holds a lock (index.lock, <ref>.lock, packed-refs.lock, config.lock): it
# goes away in milliseconds, so retrying is right. "cannot lock ref ...: is at X but expected Y"
# is a failed compare-and-swap, not contention, and must NOT be retried: it does not match.
_LOCK_CONTENTION = re.compile(r"\.lock'?: File exists|could not lock config file")

# Variables that would point git at another repository, index or worktree than `cwd`
# (set, for instance, when the harness itself runs inside a git hook).
_REPO_LOCATORS = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX",
)
_CLEAN_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never wait for a credential prompt nobody will answer
    "GIT_EDITOR": "true",
    "GIT_PAGER": "cat",
    "GIT_OPTIONAL_LOCKS": "0",  # `git status` in the user's checkout must not grab index.lock
    "LC_ALL": "C",  # stderr is parsed (lock contention): keep it in English
    "LANGUAGE": "C",
    "STIGMERGY_GIT": "1",  # a landing waits for git commands in the user's checkout, but not for ours
}


@dataclass(frozen=True)
class Identity:
    """Author and committer of a commit, passed per call: agents commit even where no
    ``user.name`` is configured, and never under the user's name."""

    name: str
    email: str

    @classmethod
    def for_agent(cls, agent: str) -> Identity:
        return cls(agent, f"{agent}@stigmergy.local")

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name, "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name, "GIT_COMMITTER_EMAIL": self.email,
        }


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


class Git:
    """Runs ``git`` in ``cwd``. Cheap to create; holds no process or file open."""

    def __init__(self, cwd: Path, *, lock_timeout: float = 10.0) -> None:
        self.cwd = Path(cwd)
        self.lock_timeout = lock_timeout
        self._common: Path | None = None

    def at(self, cwd: Path) -> Git:
        return Git(cwd, lock_timeout=self.lock_timeout)

    def call(
        self, *args: str, input: str | None = None, env: Mapping[str, str] | None = None
    ) -> Completed:
        """Run git and return whatever happened; only lock contention is retried here."""
        full_env = {k: v for k, v in os.environ.items() if k not in _REPO_LOCATORS}
        full_env.update(_CLEAN_ENV)
        if env:
            full_env.update(env)
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                proc = subprocess.run(
                    ["git", *args], cwd=self.cwd, input=input, env=full_env,
                    capture_output=True, text=True, errors="surrogateescape",
                )
            except OSError as exc:  # git missing, cwd gone: the boundary maps it once
                raise GitError(list(args), -1, str(exc)) from exc
            if proc.returncode == 0 or not _LOCK_CONTENTION.search(proc.stderr):
                return Completed(proc.returncode, proc.stdout, proc.stderr)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Completed(proc.returncode, proc.stdout, proc.stderr)
            # Jitter so that processes that collided once do not collide again in lockstep.
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.25)

    def run(
        self, *args: str, input: str | None = None, env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> str:
        """Run git and return its stdout; raise GitError on a non-zero exit when ``check``."""
        done = self.call(*args, input=input, env=env)
        if check and done.returncode != 0:
            raise GitError(list(args), done.returncode, redact(done.stderr))
        return done.stdout

    def resolve(self, rev: str) -> str | None:
        """The commit ``rev`` names, or None when it does not exist."""
        out = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        return out.strip() or None

    def common_dir(self) -> Path:
        """The repository's shared .git directory, whichever worktree ``cwd`` is in. Asked once:
        a landing needed it seven times, each a git process."""
        if self._common is None:
            self._common = Path(self.run("rev-parse", "--path-format=absolute", "--git-common-dir").strip())
        return self._common

    def ref_value(self, ref: str) -> str | None:
        """The object a ref points to (any type: claim refs point to blobs), or None."""
        out = self.run("rev-parse", "--verify", "--quiet", ref, check=False)
        return out.strip() or None


@contextmanager
def exclusive(git: Git, name: str) -> Iterator[None]:
    """Serialise, across processes, git operations that git itself does not make safe: while a
    ``worktree add`` is half-written, any command that lists worktrees (``worktree add/list``,
    ``checkout -B``, ``branch -D``) can die reading its files. flock, so that a holder killed
    with SIGKILL releases it with its last breath instead of wedging the colony."""
    with (git.common_dir() / f"stigmergy-{name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
