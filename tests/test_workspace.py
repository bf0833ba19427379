"""Agents' worktrees on real repositories: reset between attempts, recovery, commit_all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.errors import InvalidId
from harness.git import Git
from conftest import USER, advance_main, make_repo
from harness.workspace import Workspace



# Agents must commit where no git identity is configured at all.
pytestmark = pytest.mark.usefixtures("no_user_git_config")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", {"src.txt": "v1\n", ".gitignore": "*.log\n.stigmergy/\n"})


def test_prepare_checks_out_main_on_a_fresh_branch_hidden_from_user_status(target: Path) -> None:
    ws = Workspace(target, target / "workspaces", "ant-1")
    path = ws.prepare("stigmergy/ant-1/t1")
    assert (path / "src.txt").read_text() == "v1\n"
    assert ws.wt.run("symbolic-ref", "--short", "HEAD").strip() == "stigmergy/ant-1/t1"
    assert ws.wt.resolve("HEAD") == ws.git.resolve("main")
    assert ws.git.run("status", "--porcelain", "--untracked-files=all") == ""
    assert ws.git.run("config", "gc.auto").strip() == "0"
    assert ws.git.run("config", "maintenance.auto").strip() == "false"


def test_prepare_discards_the_previous_attempt_and_follows_main(target: Path) -> None:
    ws = Workspace(target, target / "workspaces", "ant-1")
    path = ws.prepare("stigmergy/ant-1/t1")
    (path / "src.txt").write_text("half-done edit\n")
    (path / "leftover.py").write_text("junk\n")
    (path / "nested").mkdir()
    Git(path / "nested").run("init", "-q")  # the model ran `git init` somewhere
    (path / "build.log").write_text("cached\n")
    tip = advance_main(target, "new.txt", "from main\n")

    ws.prepare("stigmergy/ant-1/t2")

    assert ws.wt.resolve("HEAD") == tip
    assert (path / "src.txt").read_text() == "v1\n"
    assert (path / "new.txt").read_text() == "from main\n"
    assert not (path / "leftover.py").exists() and not (path / "nested").exists()
    assert (path / "build.log").exists()  # ignored build output survives on purpose
    branches = ws.git.run("branch", "--list", "stigmergy/*", "--format=%(refname:short)").split()
    assert branches == ["stigmergy/ant-1/t2"]  # the old attempt's branch does not pile up


def test_prepare_clears_an_unfinished_merge(target: Path) -> None:
    ws = Workspace(target, target / "workspaces", "ant-1")
    path = ws.prepare()
    (path / "src.txt").write_text("mine\n")
    ws.commit_all("mine")
    advance_main(target, "src.txt", "theirs\n")
    ws.wt.call("merge", "--no-commit", "main", env=USER.env())  # leaves conflict markers
    assert ws.wt.resolve("MERGE_HEAD")
    ws.prepare()
    assert ws.wt.resolve("MERGE_HEAD") is None
    assert (path / "src.txt").read_text() == "theirs\n"
    assert ws.wt.run("status", "--porcelain") == ""


@pytest.mark.parametrize("damage", ["deleted", "deleted-and-locked", "junk-directory",
                                    "stale-index-lock", "admin-dir-gone"])
def test_prepare_recovers_a_damaged_worktree(target: Path, damage: str) -> None:
    ws = Workspace(target, target.parent / "ws", "ant-1")
    path = ws.prepare()
    gitdir = Path(ws.wt.run("rev-parse", "--path-format=absolute", "--git-dir").strip())
    if damage.startswith("deleted"):
        shutil.rmtree(path)
        if damage == "deleted-and-locked":
            ws.git.run("worktree", "lock", "--reason", "initializing", str(path))
    elif damage == "junk-directory":
        shutil.rmtree(path)
        path.mkdir()
        (path / "junk").write_text("x")
    elif damage == "stale-index-lock":
        (gitdir / "index.lock").write_text("")
        (path / "src.txt").write_text("dirty\n")
    elif damage == "admin-dir-gone":
        shutil.rmtree(gitdir)

    ws.git.lock_timeout = ws.wt.lock_timeout = 1.0
    assert ws.prepare() == path
    assert (path / "src.txt").read_text() == "v1\n"
    assert ws.wt.resolve("HEAD") == ws.git.resolve("main")
    listed = ws.git.run("worktree", "list", "--porcelain")  # no duplicate registration left
    assert listed.count(f"worktree {path}\n") == 1


def test_commit_all_takes_new_files_respects_gitignore_and_skips_no_change(target: Path) -> None:
    ws = Workspace(target, target / "workspaces", "ant-1")
    path = ws.prepare()
    base = ws.wt.resolve("HEAD")
    assert ws.commit_all("nothing") is None

    (path / "src.txt").write_text("v2\n")
    (path / "pkg").mkdir()
    (path / "pkg" / "new.py").write_text("print(1)\n")
    (path / "debug.log").write_text("ignored\n")
    sha = ws.commit_all("work")

    assert sha is not None and ws.wt.resolve("HEAD") == sha
    assert ws.wt.run("rev-list", "--parents", "-1", sha).split() == [sha, base]
    files = ws.wt.run("ls-tree", "-r", "--name-only", sha).split()
    assert "pkg/new.py" in files and "debug.log" not in files
    assert ws.wt.run("log", "-1", "--format=%an <%ae>", sha).strip() == (
        "ant-1 <ant-1@stigmergy.local>")
    assert ws.commit_all("again") is None
    assert ws.git.resolve("main") == base  # committing in a worktree never touches main


def test_agent_names_must_be_safe(target: Path) -> None:
    for bad in ["../up", "a/b", "x.lock", "", "-flag"]:
        with pytest.raises(InvalidId):
            Workspace(target, target / "workspaces", bad)
