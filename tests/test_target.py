"""Target repositories as they come (any branch name, empty, detached, bare), and a colony's
commands kept apart from the harness's own environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import cli, landed_ids, make_repo
from harness.colony import Colony
from harness.git import Git
from harness.tasks import Task
from harness.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent


def script(tmp: Path, *ids: str, **extra: list[dict]) -> str:
    """A scripted model writing `<id>.txt` for each task id (after `extra[id]`'s steps, if any)."""
    entries = [{"match": f"^{i}$", "actions": [*extra.get(i, []), {"write": {"path": f"{i}.txt", "content": f"{i}\n"}},
                                                {"finish": "done"}]} for i in ids]
    path = tmp / "script.yaml"
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return f"scripted:{path}"


def launch(colony: Colony, tmp: Path, model: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("--repo", str(colony.repo), "--model", model, "--workspaces", str(tmp / "ws"), "--until-empty",
               *args, timeout=120)


def branches(repo: Path) -> list[str]:
    return Git(repo).run("for-each-ref", "--format=%(refname:short)", "refs/heads/").split()


def started_nothing(colony: Colony) -> bool:
    """No agent started, nothing claimed: no launch event, no heartbeat, no lock."""
    return (not any(e["event"] == "launch" for e in colony.events()) and not any(colony.home.glob("agents/*"))
            and not any(colony.home.glob("locks/*.lock.*")))


# -- the landing branch -------------------------------------------------------------------------------
def test_a_master_repository_lands_on_master_and_main_is_never_created(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", branch="master")
    proc = cli("init", "--repo", str(repo))
    assert proc.returncode == 0 and "branch 'master'" in proc.stdout, proc.stderr
    assert yaml.safe_load((repo / ".stigmergy" / "config.yaml").read_text())["branch"] == "master"
    colony = Colony.open(repo)
    colony.add_many([Task(id=i, title=f"write {i}.txt") for i in ("t1", "t2", "t3")])
    proc = launch(colony, tmp_path, script(tmp_path, "t1", "t2", "t3"), "--agents", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(landed_ids(repo, "master")) == ["t1", "t2", "t3"]
    assert sorted(t.id for _, t in colony.listing("done")) == ["t1", "t2", "t3"]
    assert "main" not in branches(repo) and Git(repo).resolve("refs/heads/main") is None
    assert (repo / "t3.txt").read_text() == "t3\n"  # the user's checkout (on master) followed


def test_branch_flag_overrides_the_config_on_the_launcher_and_on_init(colony: Colony, tmp_path: Path) -> None:
    git = Git(colony.repo)
    git.run("branch", "release")
    main_before = git.resolve("main")
    colony.add(Task(id="fix", title="write fix.txt"))
    proc = launch(colony, tmp_path, script(tmp_path, "fix"), "--agents", "1", "--branch", "release")
    assert proc.returncode == 0, proc.stderr
    assert landed_ids(colony.repo, "release") == ["fix"]
    assert git.resolve("main") == main_before  # the config says main, but --branch won
    assert git.run("show", "release:fix.txt") == "fix\n"
    # `init --branch` rewrites only that setting, keeping the rest of the file.
    config = colony.home / "config.yaml"
    config.write_text(config.read_text() + "verify_rounds: 1\n")
    assert cli("init", "--repo", str(colony.repo), "--branch", "release").returncode == 0
    settings = yaml.safe_load(config.read_text())
    assert settings["branch"] == "release" and settings["verify_rounds"] == 1
    assert "# The branch agents land work on" in config.read_text()


def test_agent_run_honours_branch(colony: Colony, tmp_path: Path) -> None:
    Git(colony.repo).run("branch", "-m", "main", "trunk")
    colony.add(Task(id="one", title="write one.txt"))
    proc = cli("agent", "run", "--id", "a1", "--repo", str(colony.repo), "--model", script(tmp_path, "one"),
               "--workspaces", str(tmp_path / "ws"), "--until-empty", "--branch", "trunk", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert landed_ids(colony.repo, "trunk") == ["one"] and "main" not in branches(colony.repo)


# -- repositories that cannot take work: exit 2, the fix named -----------------------------------------
def test_init_in_an_empty_repository_names_the_first_commit(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    Git(repo).run("init", "-q")
    for extra in ([], ["--branch", "main"]):
        proc = cli("init", "--repo", str(repo), *extra)
        assert proc.returncode == 2
        assert "has no commit yet" in proc.stderr
        assert 'commit --allow-empty -m "initial commit"' in proc.stderr and "init` again" in proc.stderr
    assert not (repo / ".stigmergy").exists()  # nothing half-made to trip over after the fix


def test_init_on_a_detached_head_asks_for_a_branch(repo: Path) -> None:
    Git(repo).run("checkout", "-q", "--detach")
    proc = cli("init", "--repo", str(repo))
    assert proc.returncode == 2
    assert "detached HEAD" in proc.stderr and "--branch NAME" in proc.stderr
    assert not (repo / ".stigmergy").exists()
    assert cli("init", "--repo", str(repo), "--branch", "main").returncode == 0
    assert Colony.open(repo).config.branch == "main"


def test_a_bare_repository_is_told_to_clone(tmp_path: Path) -> None:
    bare = tmp_path / "shared.git"
    Git(tmp_path).run("init", "-q", "--bare", str(bare))
    for args in (["init"], ["task", "list"], ["--agents", "1", "--model", "scripted:x"]):
        proc = cli(*args, "--repo", str(bare))
        assert proc.returncode == 2, args
        assert "is a bare repository" in proc.stderr and "git init" not in proc.stderr
        assert f"git clone {bare} {tmp_path / 'shared'}" in proc.stderr
        assert f"stigmergy init --repo {tmp_path / 'shared'}" in proc.stderr
    assert not (bare / ".stigmergy").exists()


def test_a_folder_that_is_no_repository_keeps_the_git_init_advice(tmp_path: Path) -> None:
    proc = cli("task", "list", "--repo", str(tmp_path))
    assert proc.returncode == 2 and "not inside a git repository; run `git init`" in proc.stderr


def test_a_missing_landing_branch_stops_the_launcher_and_agents_before_any_claim(
        colony: Colony, tmp_path: Path) -> None:
    Git(colony.repo).run("branch", "-m", "main", "master")  # the config, written on main, now names nothing
    colony.add(Task(id="t1", title="write t1.txt"))
    model = script(tmp_path, "t1")
    proc = launch(colony, tmp_path, model, "--agents", "2")
    assert proc.returncode == 2
    assert "landing branch 'main'" in proc.stderr and "does not exist" in proc.stderr
    assert "its branches: master" in proc.stderr and "--branch NAME" in proc.stderr
    assert "config.yaml" in proc.stderr  # where the name came from
    proc = cli("agent", "run", "--id", "a1", "--repo", str(colony.repo), "--model", model,
               "--workspaces", str(tmp_path / "ws"), "--until-empty")
    assert proc.returncode == 2 and "landing branch 'main'" in proc.stderr
    proc = launch(colony, tmp_path, model, "--agents", "1", "--branch", "nosuch")
    assert proc.returncode == 2 and "landing branch 'nosuch' (--branch) does not exist" in proc.stderr
    assert started_nothing(colony)
    assert colony.get("t1")[0] == "pending" and colony.get("t1")[1].skip_count == 0
    proc = cli("init", "--repo", str(colony.repo))  # re-init says so too, and names the fix
    assert proc.returncode == 2 and "stigmergy init --branch NAME" in proc.stderr


def test_a_branch_that_is_not_a_ref_name_is_refused(colony: Colony) -> None:
    proc = cli("init", "--repo", str(colony.repo), "--branch", "main^")
    assert proc.returncode == 2 and "'main^' (--branch) is not a valid branch name" in proc.stderr


# -- the verify command does not see the live colony ---------------------------------------------------
def test_commands_see_only_the_documented_stigmergy_variables(colony: Colony, tmp_path: Path) -> None:
    out = tmp_path / "outside"
    out.mkdir()
    colony.add(Task(id="envy", title="write envy.txt"))
    model = script(tmp_path, "envy", envy=[{"bash": f"env > {out}/bash.env"}])
    proc = cli("agent", "run", "--id", "coder-07", "--role", "coder", "--repo", str(colony.repo), "--model", model,
               "--workspaces", str(tmp_path / "ws"), "--until-empty", "--verify", f"env > {out}/verify.env",
               "--sandbox", "none",  # the commands write outside their worktree, which bwrap hides
               env={"STIGMERGY_HOME": str(colony.home), "STIGMERGY_WORKSPACES": str(tmp_path / "ws"),
                    "STIGMERGY_ANYTHING": "x"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert landed_ids(colony.repo) == ["envy"]  # the explicit STIGMERGY_HOME reached the agent itself
    expected = {"STIGMERGY_AGENT": "coder-07", "STIGMERGY_TASK": "envy", "STIGMERGY_ROLE": "coder",
                "STIGMERGY_REPO": str(colony.repo)}
    for name in ("verify.env", "bash.env"):
        lines = (out / name).read_text().splitlines()
        assert {k: v for k, _, v in (line.partition("=") for line in lines) if k.startswith("STIGMERGY_")} == \
            expected, name


@pytest.mark.parametrize("inside", [False, True], ids=["workspaces-outside", "workspaces-inside-the-repo"])
def test_the_task_cli_finds_the_colony_from_an_agent_worktree(colony: Colony, tmp_path: Path, inside: bool) -> None:
    colony.add(Task(id="visible", title="Seen from the worktree"))
    ws = Workspace(colony.repo, (colony.repo / "workspaces") if inside else (tmp_path / "ws"), "coder-01")
    worktree = ws.prepare()
    (worktree / "src").mkdir()
    for cwd in (worktree, worktree / "src"):
        proc = cli("task", "list", cwd=cwd)
        assert proc.returncode == 0 and "visible" in proc.stdout, proc.stderr
    assert cli("agent", "heartbeat", "--agent", "cli-agent", cwd=worktree).returncode == 0
    assert colony.last_beat("cli-agent") is not None
    assert not (worktree / ".stigmergy").exists()  # nothing was created beside the worktree's files
    # An explicit STIGMERGY_HOME still wins over the repository's own colony.
    proc = cli("task", "list", cwd=worktree, env={"STIGMERGY_HOME": str(tmp_path / "elsewhere")})
    assert proc.returncode == 2 and str(tmp_path / "elsewhere") in proc.stderr


def test_this_suite_leaves_the_colony_in_its_environment_alone(tmp_path: Path) -> None:
    live = tmp_path / "live-colony"
    live.mkdir()
    (live / "marker").write_text("untouched\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMERGY_")}
    env.update(STIGMERGY_HOME=str(live), STIGMERGY_AGENT="coder-01", STIGMERGY_TASK="t", STIGMERGY_ROLE="coder",
               STIGMERGY_REPO=str(tmp_path), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1")
    # Tests that build colonies with Colony.init, which honours STIGMERGY_HOME.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "inner"), "tests/test_colony.py", "-k", "init or priority or release"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout
    assert sorted(p.name for p in live.rglob("*")) == ["marker"]
