"""Shared fixtures: real git repositories in tmp_path and the CLI as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.colony import Colony
from harness.git import Git, Identity

USER = Identity("user", "user@example.com")  # the person whose repository the colony works on


def make_repo(path: Path, files: dict[str, str] | None = None, branch: str = "main") -> Path:
    """A real repository on `branch` with one commit holding `files`."""
    path.mkdir(parents=True, exist_ok=True)
    git = Git(path)
    git.run("init", "-q", "-b", branch)
    for name, text in (files or {"README.md": "target\n"}).items():
        (path / name).write_text(text)
    git.run("add", "-A")
    git.run("commit", "-qm", "init", env=USER.env())
    return path


def advance_main(repo: Path, name: str, text: str) -> str:
    """The user commits on main (in their checkout); returns the new tip."""
    (repo / name).write_text(text)
    git = Git(repo)
    git.run("add", name)
    git.run("commit", "-qm", f"user adds {name}", env=USER.env())
    return str(git.resolve("HEAD"))


@pytest.fixture(autouse=True)
def no_stigmergy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STIGMERGY_* from whoever runs the suite: run as a colony's verify command (an agent's
    STIGMERGY_HOME, STIGMERGY_AGENT...), these tests would write into that live colony."""
    for var in [v for v in os.environ if v.startswith("STIGMERGY_")]:
        monkeypatch.delenv(var)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target")


@pytest.fixture
def colony(repo: Path) -> Colony:
    return Colony.init(repo)


def set_config(colony: Colony, **values: object) -> Colony:
    """Append settings to config.yaml and return a fresh Colony that has read them."""
    import yaml
    with open(colony.home / "config.yaml", "a") as f:
        f.write(yaml.safe_dump(values))
    return Colony.open(colony.repo)


def cli(*args: str, cwd: Path | None = None, check: bool = False, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def no_user_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.gitconfig, no system config, no identity in the environment: like a fresh machine."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)


def landed_ids(repo: Path, branch: str = "main") -> list[str]:
    """The Task-Id trailers on `branch`'s first-parent line, newest first."""
    out = subprocess.run(["git", "log", "--first-parent", "--format=%(trailers:key=Task-Id,valueonly)", branch],
                         cwd=repo, capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def file_on_main(repo: Path, path: str) -> str:
    return subprocess.run(["git", "show", f"main:{path}"], cwd=repo, capture_output=True, text=True).stdout


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
