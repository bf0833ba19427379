"""The git wrapper against real repositories: clean environment, lock retries, errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness.errors import GitError
from harness.git import ZERO_OID, Git, Identity
from harness.redact import redact


@pytest.fixture(autouse=True)
def no_user_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user.name anywhere: agents must commit with the identity passed per call."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                "EMAIL"):
        monkeypatch.delenv(var, raising=False)


def init_repo(path: Path) -> Git:
    path.mkdir(parents=True)
    git = Git(path)
    git.run("init", "-q", "-b", "main")
    (path / "a.txt").write_text("a\n")
    git.run("add", "a.txt")
    git.run("commit", "-qm", "init", env=Identity("t", "t@t").env())
    return git


def test_run_returns_stdout_and_raises_with_stderr(tmp_path: Path) -> None:
    git = init_repo(tmp_path / "r")
    assert git.run("rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    with pytest.raises(GitError) as err:
        git.run("rev-parse", "--verify", "no-such-ref")
    assert err.value.returncode != 0
    assert "no-such-ref" in err.value.stderr or "Needed a single revision" in err.value.stderr
    assert git.run("rev-parse", "--verify", "no-such-ref", check=False) == ""


def test_identity_is_passed_per_call_without_user_config(tmp_path: Path) -> None:
    git = init_repo(tmp_path / "r")
    tree = git.run("rev-parse", "HEAD^{tree}").strip()
    with pytest.raises(GitError):  # proves no identity is configured anywhere
        git.run("commit-tree", tree, "-m", "x")
    sha = git.run("commit-tree", tree, "-m", "x", env=Identity.for_agent("ant-1").env()).strip()
    assert git.run("log", "-1", "--format=%an <%ae>|%cn", sha).strip() == (
        "ant-1 <ant-1@stigmergy.local>|ant-1")


def test_inherited_git_dir_does_not_redirect_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = init_repo(tmp_path / "mine")
    other = init_repo(tmp_path / "other")
    other.run("commit", "--allow-empty", "-qm", "other", env=Identity("t", "t@t").env())
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "other" / ".git"))
    assert mine.run("rev-list", "--count", "HEAD").strip() == "1"


def test_lock_contention_is_retried_until_the_lock_goes(tmp_path: Path) -> None:
    git = init_repo(tmp_path / "r")
    lock = tmp_path / "r" / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text("")
    threading.Timer(0.3, lock.unlink).start()
    head = git.resolve("HEAD")
    new = git.run("commit-tree", f"{head}^{{tree}}", "-p", str(head), "-m", "x",
                  env=Identity("t", "t@t").env()).strip()
    git.run("update-ref", "refs/heads/main", new, str(head))
    assert git.resolve("main") == new


def test_lock_that_never_goes_fails_after_the_timeout(tmp_path: Path) -> None:
    git = Git(init_repo(tmp_path / "r").cwd, lock_timeout=0.3)
    (tmp_path / "r" / ".git" / "index.lock").write_text("")
    (tmp_path / "r" / "b.txt").write_text("b\n")
    started = time.monotonic()
    with pytest.raises(GitError) as err:
        git.run("add", "b.txt")
    assert "index.lock" in err.value.stderr
    assert 0.2 < time.monotonic() - started < 3


def test_failed_compare_and_swap_is_not_retried(tmp_path: Path) -> None:
    git = Git(init_repo(tmp_path / "r").cwd, lock_timeout=5)
    head = str(git.resolve("HEAD"))
    started = time.monotonic()
    with pytest.raises(GitError):
        git.run("update-ref", "refs/heads/main", head, ZERO_OID.replace("0", "1"))
    assert time.monotonic() - started < 1  # a stale old value is final, not contention


def test_credentials_are_redacted() -> None:
    text = "fatal: unable to access 'https://bob:s3cret@example.com/r.git/': 403"
    assert "s3cret" not in redact(text)
    assert "https://***@example.com" in redact(text)
