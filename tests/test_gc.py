"""`stigmergy gc` on real repositories, worktrees and agent processes: what finished work and
stopped agents left goes, unlanded work is kept (and survives `git gc`), a live agent is left be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import advance_main, cli, landed_ids, wait_for
from harness import gc
from harness.colony import Colony
from harness.git import Git
from harness.fence import Fence, Fenced
from harness.integrate import Landed, land
from harness.tasks import Task
from harness.workspace import Workspace

pytestmark = pytest.mark.usefixtures("no_user_git_config")


def git(repo: Path, *args: str) -> str:
    return Git(repo).run(*args)


def refs(repo: Path, prefix: str = "refs/") -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
    return dict(line.split(" ", 1) for line in out.splitlines())


def worktrees(repo: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def agent_ws(colony: Colony, root: Path, agent: str) -> Workspace:
    """An agent's worktree as the agent makes it; its heartbeat makes it one of the colony's agents."""
    colony.heartbeat(agent, pid=None, state="exited")
    ws = Workspace(colony.repo, root, agent)
    ws.prepare()
    return ws


def land_task(colony: Colony, ws: Workspace, task_id: str, files: dict[str, str]) -> str:
    """Claim, work, land and finish one task the way an agent does; the landed commit."""
    colony.add(Task(id=task_id, title=f"do {task_id}"))
    got = colony.claim(ws.agent)
    assert got is not None and got[0].task_id == task_id
    claim = got[0]
    fence = Fence.acquire(ws.git, task_id, claim.generation, claim.token)
    assert isinstance(fence, Fence)
    ws.prepare()
    for name, text in files.items():
        (ws.path / name).write_text(text)
    commit = ws.commit_all(f"do {task_id}\n\nTask-Id: {task_id}\nAgent: {ws.agent}\n")
    assert commit is not None
    result = land(ws, commit, title=f"do {task_id}", fence=fence, verify=lambda p: True)
    assert isinstance(result, Landed)
    colony.done(task_id, ws.agent, claim.token, commit=result.commit)
    return result.commit


def state(colony: Colony, root: Path) -> tuple[object, ...]:
    """Everything gc could change: refs, worktrees, and every file under .stigmergy/ and the
    agents' worktrees with its size and mtime."""
    files = []
    for top in (colony.home, root):
        for dirpath, dirs, names in os.walk(top):
            for name in [*dirs, *names]:
                st = os.lstat(os.path.join(dirpath, name))
                files.append((os.path.join(dirpath, name), st.st_size, st.st_mtime_ns))
    return refs(colony.repo), worktrees(colony.repo), sorted(files)


@pytest.fixture
def mixed(colony: Colony, tmp_path: Path) -> tuple[Colony, Path, dict[str, str]]:
    """Three stopped agents: a1 landed its task (and main changed the same line since), a2 has a
    commit that never landed, a3 left uncommitted work in its worktree."""
    root = tmp_path / "ws"
    a1, a2, a3 = (agent_ws(colony, root, a) for a in ("a1", "a2", "a3"))
    land_task(colony, a1, "t1", {"a.txt": "from a1\n"})
    advance_main(colony.repo, "a.txt", "changed by the user since\n")  # a1's tip no longer merges clean
    (a2.path / "b.txt").write_text("a2's unlanded work\n")
    unlanded = a2.commit_all("unlanded\n\nTask-Id: t2\nAgent: a2\n")
    assert unlanded is not None
    (a3.path / "c.txt").write_text("a3's uncommitted work\n")
    (a3.path / "README.md").write_text("edited, not committed\n")
    return colony, root, {"a2": unlanded, "a3_head": str(a3.wt.resolve("HEAD"))}


def test_dry_run_changes_nothing_and_says_what_would_go(mixed: tuple[Colony, Path, dict[str, str]]) -> None:
    colony, root, _ = mixed
    before = state(colony, root)
    done = cli("gc", "--dry-run", "--runs-older-than", "0", "--repo", str(colony.repo))
    assert done.returncode == 0, done.stderr
    assert state(colony, root) == before
    out = done.stdout
    assert out.startswith("gc --dry-run (nothing changed): would remove 3 worktree(s), 3 branch(es)")
    assert "refs/stigmergy/claims/t1" in out and "stigmergy/a2" in out
    assert "would keep 2 unlanded item(s)" in out
    assert "branch stigmergy/a2" in out and "uncommitted changes in" in out
    assert "branch stigmergy/a1" not in out  # landed: nothing of a1's to keep


def test_unlanded_work_is_kept_and_survives_git_gc_and_worktree_prune(
        mixed: tuple[Colony, Path, dict[str, str]]) -> None:
    colony, root, sha = mixed
    dry = cli("gc", "--dry-run", "--repo", str(colony.repo)).stdout
    done = cli("gc", "--repo", str(colony.repo))
    assert done.returncode == 0, done.stderr
    assert "gc: removed 3 worktree(s), 3 branch(es), 1 ref(s) (1 claims, 0 conflicts)" in done.stdout
    def sources(out: str) -> list[str]:  # what each kept line says it kept, as the dry run said it
        return [line.split("  ")[-1] for line in out.splitlines() if line.startswith("  refs/stigmergy/kept/")]
    assert sources(done.stdout) == sources(dry) and len(sources(dry)) == 2
    assert worktrees(colony.repo) == [str(colony.repo)]
    assert not refs(colony.repo, "refs/heads/stigmergy/") and not root.joinpath("a1").exists()
    kept = refs(colony.repo, "refs/stigmergy/kept/")
    assert len(kept) == 2, kept
    (a2_ref,) = [r for r in kept if r.startswith("refs/stigmergy/kept/a2-")]
    (a3_ref,) = [r for r in kept if r.startswith("refs/stigmergy/kept/a3-")]
    assert kept[a2_ref] == sha["a2"] and a3_ref.endswith("-uncommitted")
    assert git(colony.repo, "rev-parse", f"{a3_ref}^").strip() == sha["a3_head"]
    # What a person may run at any time afterwards keeps every kept ref and its commits.
    git(colony.repo, "worktree", "prune")
    git(colony.repo, "reflog", "expire", "--expire=now", "--all")
    git(colony.repo, "gc", "--prune=now", "--quiet")
    assert refs(colony.repo, "refs/stigmergy/kept/") == kept
    assert git(colony.repo, "show", f"{a2_ref}:b.txt") == "a2's unlanded work\n"
    assert git(colony.repo, "show", f"{a3_ref}:c.txt") == "a3's uncommitted work\n"
    assert git(colony.repo, "show", f"{a3_ref}:README.md") == "edited, not committed\n"
    again = cli("gc", "--repo", str(colony.repo))  # nothing left to do, and nothing kept twice
    assert "removed 0 worktree(s), 0 branch(es), 0 ref(s)" in again.stdout and "kept" not in again.stdout
    assert refs(colony.repo, "refs/stigmergy/kept/") == kept


def test_a_running_agent_keeps_its_worktree_branch_and_claim(colony: Colony, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    stopped = agent_ws(colony, root, "done-agent")
    land_task(colony, stopped, "first", {"first.txt": "1\n"})
    colony.add(Task(id="long", title="a long task"))
    script = tmp_path / "slow.yaml"
    script.write_text("- match: long\n  actions:\n    - write: {path: long.txt, content: \"half\\n\"}\n"
                      "    - sleep: 60\n    - finish: never\n")
    log = open(tmp_path / "live.log", "ab")
    live = subprocess.Popen([sys.executable, "-m", "harness", "agent", "run", "--id", "live", "--model",
                             f"scripted:{script}", "--repo", str(colony.repo), "--workspaces", str(root)],
                            stdout=log, stderr=log)
    try:
        wait_for(lambda: list((colony.home / "runs" / "long").glob("*/transcript.jsonl")), what="live working")
        wait_for(lambda: (root / "live" / "long.txt").exists(), what="live's edit")
        done = cli("gc", "--runs-older-than", "0", "--repo", str(colony.repo))
        assert done.returncode == 0, done.stderr
        assert "left alone: live is running (pid" in done.stdout
        assert str(root / "live") in worktrees(colony.repo) and (root / "live" / "long.txt").exists()
        assert str(root / "done-agent") not in worktrees(colony.repo)
        assert "refs/heads/stigmergy/live" in refs(colony.repo)
        assert "refs/stigmergy/claims/long" in refs(colony.repo)  # an active task's claim is live
        assert "refs/stigmergy/claims/first" not in refs(colony.repo)
        assert (colony.home / "runs" / "long").is_dir() and not (colony.home / "runs" / "first").exists()
        assert colony.get("long")[0] == "active"
    finally:
        live.send_signal(signal.SIGTERM)
        assert live.wait(timeout=60) == 0
    # Stopped now: its half-done edit is uncommitted work, and is kept.
    done = cli("gc", "--repo", str(colony.repo))
    assert "removed 1 worktree(s), 1 branch(es)" in done.stdout
    (ref,) = refs(colony.repo, "refs/stigmergy/kept/")
    assert git(colony.repo, "show", f"{ref}:long.txt") == "half\n"


def test_finished_tasks_lose_claims_conflicts_old_locks_and_runs(colony: Colony, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    ws = agent_ws(colony, root, "a1")
    repo = colony.repo
    # `done1` was claimed three times; a fence of its first owner is still around (a late lander).
    colony.add(Task(id="done1", title="done one"))
    stale = None
    for _ in range(2):
        got = colony.claim("a1")
        assert got is not None
        fence = Fence.acquire(ws.git, "done1", got[0].generation, got[0].token)
        assert isinstance(fence, Fence)
        stale = stale or fence
        colony.release("done1", "a1", token=got[0].token, skip=False)
    assert stale is not None
    commit = land_task_after_claims(colony, ws, "done1")
    assert colony.leases.generation("done1") == 3
    colony.add(Task(id="failed1", title="failed one"))
    got = colony.claim("a1")
    assert got is not None
    Fence.acquire(ws.git, "failed1", got[0].generation, got[0].token)
    colony.fail("failed1", "a1", "impossible", token=got[0].token)
    colony.add(Task(id="live1", title="live one"))
    got = colony.claim("a1")
    assert got is not None and got[0].task_id == "live1"
    Fence.acquire(ws.git, "live1", got[0].generation, got[0].token)
    git(repo, "update-ref", "refs/stigmergy/conflicts/done1", commit)
    git(repo, "update-ref", "refs/stigmergy/conflicts/live1", commit)
    old = time.time() - 30 * 86400
    for tid in ("done1", "failed1", "live1"):
        run = colony.store.run_dir(tid, "001")
        (run / "verify.log").write_text("$ true\n")
        for path in (run / "verify.log", run, run.parent):
            os.utime(path, (old, old))
    colony.add(Task(id="sweep-docs-1", title="a pending task that looks like a sweep", priority=1))  # picked last
    for name in ("sweep-critic-1", "sweep-docs-1", "sweep-critic-2"):  # sweeps' runs, and that task's
        run = colony.store.run_dir(name, "001")
        (run / "transcript.jsonl").write_text("{}\n")
        if name != "sweep-critic-2":  # the second sweep ran yesterday
            for path in (run / "transcript.jsonl", run, run.parent):
                os.utime(path, (old, old))
    young = colony.store.run_dir("done1-young", "001")  # a finished task's run of yesterday
    colony.add(Task(id="done1-young", title="young"))
    got = colony.claim("a1")
    assert got is not None and got[0].task_id == "done1-young"
    colony.done("done1-young", "a1", got[0].token)
    (young / "verify.log").write_text("$ true\n")

    result = gc.collect(colony, runs_older_than_days=14)

    left = refs(repo, "refs/stigmergy/")
    assert "refs/stigmergy/claims/done1" not in left and "refs/stigmergy/claims/failed1" not in left
    assert "refs/stigmergy/claims/live1" in left  # held right now
    assert "refs/stigmergy/conflicts/done1" not in left and "refs/stigmergy/conflicts/live1" in left
    # Only the newest generation of a done task keeps its owner; the older ones stay, as tombstones.
    assert [os.readlink(p) == "-" for p in colony.leases.generations("done1")] == [True, True, False]
    assert colony.leases.generation("done1") == 3 and colony.leases.owner("done1", 3) is not None
    assert colony.leases.owner("failed1", 1) is not None and colony.current_claim("live1") is not None
    assert result.lock_generations == 2 and result.bytes_freed > 0
    runs = colony.home / "runs"
    assert not (runs / "done1").exists() and not (runs / "failed1").exists()
    assert (runs / "live1").is_dir() and (runs / "done1-young").is_dir()
    assert not (runs / "sweep-critic-1").exists() and (runs / "sweep-critic-2").is_dir()
    assert (runs / "sweep-docs-1").is_dir()  # a task's, not finished: kept whatever its name
    # The compacted task is still done and cannot be claimed again; the old owner cannot land.
    assert colony.leases.generation("done1") == 3 and colony.current_claim("done1") is None
    assert colony.try_claim("done1", "late") is None and colony.get("done1")[0] == "done"
    ws.prepare()
    (ws.path / "late.txt").write_text("late\n")
    late = ws.commit_all("late")
    assert late is not None
    assert isinstance(land(ws, late, title="late", fence=stale, verify=lambda p: True), Fenced)
    assert landed_ids(repo).count("done1") == 1


def land_task_after_claims(colony: Colony, ws: Workspace, task_id: str) -> str:
    got = colony.claim(ws.agent)
    assert got is not None and got[0].task_id == task_id
    fence = Fence.acquire(ws.git, task_id, got[0].generation, got[0].token)
    assert isinstance(fence, Fence)
    ws.prepare()
    (ws.path / f"{task_id}.txt").write_text("work\n")
    commit = ws.commit_all(f"{task_id}\n\nTask-Id: {task_id}\n")
    assert commit is not None
    result = land(ws, commit, title=task_id, fence=fence, verify=lambda p: True)
    assert isinstance(result, Landed)
    colony.done(task_id, ws.agent, got[0].token, commit=result.commit)
    return result.commit


def test_after_a_demo_colony_gc_leaves_only_main_and_the_colony_still_works(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    done = cli("demo", "--dir", str(target), "--agents", "4", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    colony = Colony.open(target)
    conflict = next(t for _, t in colony.listing("done") if t.kind == "merge_conflict")
    before = landed_ids(target)
    swept = cli("gc", "--runs-older-than", "0", "--repo", str(target))
    assert swept.returncode == 0, swept.stderr
    assert "removed 4 worktree(s), 4 branch(es)" in swept.stdout and "kept" not in swept.stdout
    assert worktrees(target) == [str(target)]
    assert set(refs(target)) == {"refs/heads/main"}  # every branch and ref was landed work
    assert not os.listdir(colony.home / "runs")
    assert landed_ids(target) == before and not git(target, "status", "--porcelain").strip()
    shown = cli("task", "show", str(conflict.resolves), "--repo", str(target)).stdout
    assert f"deferred into {conflict.id}" in shown and f"landed: through {conflict.id} as " in shown
    # An agent started afterwards makes its worktree again and lands.
    colony.add(Task(id="after-gc", title="after gc"))
    script = tmp_path / "after.yaml"
    script.write_text("- match: after-gc\n  actions:\n    - write: {path: after.txt, content: \"x\\n\"}\n"
                      "    - finish: done\n")
    run = cli("agent", "run", "--id", "coder-01", "--model", f"scripted:{script}", "--until-empty", "--repo",
              str(target), "--workspaces", str(colony.home / "workspaces"), timeout=120)
    assert run.returncode == 0, run.stderr
    assert landed_ids(target)[0] == "after-gc"


def test_gc_refuses_a_negative_age(colony: Colony) -> None:
    done = cli("gc", "--runs-older-than", "-1", "--repo", str(colony.repo))
    assert done.returncode == 2 and "--runs-older-than must be 0 or more" in done.stderr
