"""Landing on main with real repositories and real processes: CAS, verify, fencing, conflicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.git import Git
from harness.fence import AlreadyLanded, Fence, Fenced
from harness.integrate import (
    CONFLICTS,
    Conflict,
    Contended,
    Landed,
    Verdict,
    VerifyFailed,
    land,
    prepare_conflict_worktree,
)
from conftest import advance_main, make_repo, wait_for
from harness.workspace import Workspace



# Agents must commit where no git identity is configured at all.
pytestmark = pytest.mark.usefixtures("no_user_git_config")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", {"shared.txt": "one\ntwo\nthree\n", ".gitignore": ".stigmergy/\n"})


def workspace(repo: Path, agent: str) -> Workspace:
    ws = Workspace(repo, repo.parent / "workspaces", agent)
    ws.prepare()
    return ws


def work(ws: Workspace, files: dict[str, str]) -> str:
    for name, text in files.items():
        (ws.path / name).write_text(text)
    sha = ws.commit_all(f"work by {ws.agent}")
    assert sha is not None
    return sha


def fence(ws: Workspace, task: str, generation: int = 1, token: str | None = None) -> Fence:
    got = Fence.acquire(ws.git, task, generation, token or f"tok-{ws.agent}")
    assert isinstance(got, Fence)
    return got


class Recorder:
    """A verify callback that records which trees it saw and can fail on demand."""

    def __init__(self, fail_when: str | None = None) -> None:
        self.trees: list[str] = []
        self.fail_when = fail_when

    def __call__(self, path: Path) -> Verdict:
        self.trees.append(Git(path).run("rev-parse", "HEAD^{tree}").strip())
        bad = self.fail_when is not None and any(
            self.fail_when in p.read_text() for p in path.glob("*.txt"))
        return Verdict(not bad, "FAILED: found forbidden text" if bad else "ok")


def first_parent_log(git: Git, since: str) -> list[str]:
    return git.run("rev-list", "--first-parent", f"{since}..main").split()


def trailers(git: Git, commit: str) -> dict[str, str]:
    out = git.run("log", "-1", "--format=%(trailers:only,unfold)", commit)
    return dict(line.split(": ", 1) for line in out.splitlines() if line)


def test_land_makes_one_single_parent_commit_with_trailers(target: Path) -> None:
    ws = workspace(target, "ant-1")
    base = str(ws.git.resolve("main"))
    c = work(ws, {"feature.txt": "feature\n"})
    verify = Recorder()

    result = land(ws, c, title="Add feature", fence=fence(ws, "feat-1a2b"), verify=verify)

    assert isinstance(result, Landed)
    assert verify.trees == []  # main had not moved: C's own (verified) tree lands as is
    assert first_parent_log(ws.git, base) == [result.commit]
    assert ws.git.run("rev-list", "--parents", "-1", result.commit).split() == [result.commit, base]
    assert trailers(ws.git, result.commit) == {"Task-Id": "feat-1a2b", "Agent": "ant-1"}
    assert ws.git.run("log", "-1", "--format=%s|%an <%ae>", result.commit).strip() == (
        "Add feature|ant-1 <ant-1@stigmergy.local>")
    assert ws.git.run("show", "main:feature.txt") == "feature\n"


def test_main_moved_so_the_new_merge_result_is_verified_before_landing(target: Path) -> None:
    ws = workspace(target, "ant-1")
    c = work(ws, {"feature.txt": "feature\n"})
    moved = advance_main(target, "other.txt", "other\n")
    verify = Recorder()

    result = land(ws, c, title="Add feature", fence=fence(ws, "feat-1"), verify=verify)

    assert isinstance(result, Landed)
    landed_tree = ws.git.run("rev-parse", f"{result.commit}^{{tree}}").strip()
    assert verify.trees == [landed_tree]  # exactly the landed tree, verified once
    assert ws.git.run("rev-parse", f"{result.commit}^").strip() == moved
    assert ws.git.run("ls-tree", "--name-only", "main").split() == [
        ".gitignore", "feature.txt", "other.txt", "shared.txt"]


def test_merge_result_failing_verify_never_reaches_main(target: Path) -> None:
    ws = workspace(target, "ant-1")
    c = work(ws, {"feature.txt": "feature\n"})
    moved = advance_main(target, "other.txt", "BROKEN together with feature\n")
    f = fence(ws, "feat-1")

    result = land(ws, c, title="Add feature", fence=f, verify=Recorder(fail_when="BROKEN"))

    assert isinstance(result, VerifyFailed)
    assert "FAILED" in result.log
    assert ws.git.resolve("main") == moved
    assert f.holds()  # not landed: the claim is still a live claim
    # The failing candidate is left checked out for the agent to fix and land again.
    assert ws.wt.resolve("HEAD") == result.commit
    (ws.path / "other.txt").write_text("fixed\n")
    fix = ws.commit_all("fix")
    assert fix is not None
    again = land(ws, fix, title="Add feature", fence=f, verify=Recorder(fail_when="BROKEN"))
    assert isinstance(again, Landed)
    assert first_parent_log(ws.git, moved) == [again.commit]


def test_main_moving_during_verify_triggers_another_verify(target: Path) -> None:
    ws = workspace(target, "ant-1")
    c = work(ws, {"feature.txt": "feature\n"})
    advance_main(target, "a.txt", "a\n")
    moves: list[str] = []

    def verify(path: Path) -> bool:
        if not moves:  # while we verify, someone lands
            moves.append(advance_main(target, "b.txt", "b\n"))
        recorder(path)
        return True

    recorder = Recorder()
    result = land(ws, c, title="Add feature", fence=fence(ws, "feat-1"), verify=verify)

    # Two verify runs, and the compare-and-swap lost to the move in between.
    assert isinstance(result, Landed) and result.attempts == 3
    assert len(recorder.trees) == 2
    assert recorder.trees[-1] == ws.git.run("rev-parse", f"{result.commit}^{{tree}}").strip()
    assert ws.git.run("rev-parse", f"{result.commit}^").strip() == moves[0]


def test_main_moving_on_every_attempt_gives_up_without_landing(target: Path) -> None:
    ws = workspace(target, "ant-1")
    c = work(ws, {"feature.txt": "feature\n"})
    count = iter(range(100))

    def verify(path: Path) -> bool:
        advance_main(target, f"n{next(count)}.txt", "x\n")
        return True

    advance_main(target, "start.txt", "s\n")
    result = land(ws, c, title="t", fence=fence(ws, "feat-1"), verify=verify, max_attempts=3)
    assert isinstance(result, Contended) and result.attempts >= 3  # verify runs and lost swaps
    assert "feature.txt" not in ws.git.run("ls-tree", "--name-only", "main")


def test_conflict_keeps_the_work_and_reports_both_sides(target: Path) -> None:
    ws = workspace(target, "ant-1")
    c = work(ws, {"shared.txt": "one\nTWO by agent\nthree\n", "mine.txt": "mine\n"})
    ours = advance_main(target, "shared.txt", "one\ntwo by user\nthree\n")

    result = land(ws, c, title="Edit shared", fence=fence(ws, "edit-1"), verify=Recorder())

    assert isinstance(result, Conflict)
    assert result.paths == ["shared.txt"]
    assert result.ref == CONFLICTS + "edit-1" and ws.git.resolve(result.ref) == c
    assert (result.ours, result.theirs) == (ours, c)
    assert result.base == ws.git.run("merge-base", ours, c).strip()
    assert "+two by user" in result.ours_diff and "+TWO by agent" in result.theirs_diff
    assert any("shared.txt" in m for m in result.messages)
    assert ws.git.resolve("main") == ours
    # Nothing lost: the kept ref still has every file the agent wrote.
    assert ws.git.run("show", f"{result.ref}:mine.txt") == "mine\n"


def test_conflict_resolution_lands_as_one_commit_resolving_the_original(target: Path) -> None:
    ws = workspace(target, "ant-1")
    c = work(ws, {"shared.txt": "one\nTWO by agent\nthree\n", "mine.txt": "mine\n"})
    ours = advance_main(target, "shared.txt", "one\ntwo by user\nthree\n")
    conflict = land(ws, c, title="Edit shared", fence=fence(ws, "edit-1"), verify=Recorder())
    assert isinstance(conflict, Conflict)

    fixer = workspace(target, "ant-2")
    paths = prepare_conflict_worktree(fixer, conflict.ref)
    assert paths == ["shared.txt"]
    marked = (fixer.path / "shared.txt").read_text()
    assert "<<<<<<<" in marked and "two by user" in marked and "TWO by agent" in marked
    assert (fixer.path / "mine.txt").read_text() == "mine\n"  # the clean part is merged already
    (fixer.path / "shared.txt").write_text("one\ntwo by user, TWO by agent\nthree\n")
    resolved = fixer.commit_all("resolve")
    assert resolved is not None
    advance_main(target, "meanwhile.txt", "m\n")  # main moves again before the fix lands

    result = land(fixer, resolved, title="Resolve conflict on edit-1",
                  fence=fence(fixer, "conflict-edit-1"), verify=Recorder(fail_when="<<<<<<<"),
                  trailers=[("Resolves", "edit-1")])

    assert isinstance(result, Landed)
    assert first_parent_log(fixer.git, ours) == [
        result.commit, str(fixer.git.resolve("main^"))]
    assert trailers(fixer.git, result.commit) == {
        "Task-Id": "conflict-edit-1", "Agent": "ant-2", "Resolves": "edit-1"}
    assert fixer.git.run("show", "main:shared.txt") == "one\ntwo by user, TWO by agent\nthree\n"
    assert fixer.git.run("show", "main:mine.txt") == "mine\n"
    assert fixer.git.run("show", "main:meanwhile.txt") == "m\n"


def test_a_newer_claimant_fences_out_the_old_owner(target: Path) -> None:
    old_ws, new_ws = workspace(target, "ant-1"), workspace(target, "ant-2")
    main_before = old_ws.git.resolve("main")
    old_fence = fence(old_ws, "task-9", generation=1)
    old_commit = work(old_ws, {"old.txt": "stale owner\n"})
    # ant-1 is paused past its lease; ant-2 breaks the claim (generation 2) and takes the fence.
    new_fence = fence(new_ws, "task-9", generation=2)

    result = land(old_ws, old_commit, title="t", fence=old_fence, verify=Recorder())

    assert isinstance(result, Fenced) and "taken over" in result.reason
    assert old_ws.git.resolve("main") == main_before
    # A late acquire by the old owner cannot push the new one out either.
    assert isinstance(Fence.acquire(old_ws.git, "task-9", 1, "tok-ant-1"), Fenced)
    new_commit = work(new_ws, {"new.txt": "current owner\n"})
    assert isinstance(land(new_ws, new_commit, title="t", fence=new_fence, verify=Recorder()),
                      Landed)


def test_fence_lost_between_checks_makes_the_transaction_fail(target: Path) -> None:
    """The fence is checked inside git's ref transaction, not just before it."""
    ws, thief = workspace(target, "ant-1"), workspace(target, "ant-2")
    c = work(ws, {"f.txt": "x\n"})
    advance_main(target, "other.txt", "o\n")
    main_before = ws.git.resolve("main")
    mine = fence(ws, "task-7", generation=1)

    def verify(path: Path) -> bool:  # the claim is taken over while we verify
        fence(thief, "task-7", generation=2)
        return True

    result = land(ws, c, title="t", fence=mine, verify=verify)
    assert isinstance(result, Fenced)
    assert ws.git.resolve("main") == main_before


def test_after_landing_acquire_reports_already_landed_and_late_landers_are_fenced(
    target: Path,
) -> None:
    a, b = workspace(target, "ant-1"), workspace(target, "ant-2")
    fa = fence(a, "task-5", generation=1)
    result = land(a, work(a, {"a.txt": "a\n"}), title="t", fence=fa, verify=Recorder())
    assert isinstance(result, Landed)

    assert Fence.acquire(b.git, "task-5", 2, "tok-b") == AlreadyLanded(result.commit)
    late = land(a, work(a, {"again.txt": "a\n"}), title="t", fence=fa, verify=Recorder())
    assert isinstance(late, Fenced) and result.commit[:12] in late.reason
    assert first_parent_log(a.git, f"{result.commit}") == []



def test_the_claim_ref_of_a_landed_task_is_its_commit_and_older_landed_blobs_still_count(target: Path) -> None:
    a, b = workspace(target, "ant-1"), workspace(target, "ant-2")
    result = land(a, work(a, {"a.txt": "a\n"}), title="t", fence=fence(a, "task-5"), verify=Recorder())
    assert isinstance(result, Landed)
    assert a.git.ref_value("refs/stigmergy/claims/task-5") == result.commit  # no marker blob to write
    assert a.git.run("cat-file", "-t", result.commit).strip() == "commit"

    # A colony from before recorded a landing as a blob `landed <task> <commit>`.
    old = fence(a, "task-6")
    blob = a.git.run("hash-object", "-w", "--stdin", input=f"landed task-6 {result.commit}\n").strip()
    a.git.run("update-ref", old.ref, blob, old.blob)
    assert Fence.acquire(b.git, "task-6", 2, "tok-b") == AlreadyLanded(result.commit)
    late = land(a, work(a, {"b.txt": "b\n"}), title="t", fence=old, verify=Recorder())
    assert isinstance(late, Fenced) and "already landed" in late.reason

LANDER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from pathlib import Path
    from harness.fence import Fence
    from harness.integrate import land
    from harness.workspace import Workspace

    repo, root, agent, go = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    ws = Workspace(repo, root, agent)
    ws.prepare()
    (ws.path / f"{agent}.txt").write_text(agent + "\\n")
    commit = ws.commit_all(f"work by {agent}")
    fence = Fence.acquire(ws.git, f"task-{agent}", 1, f"tok-{agent}")
    (go.parent / f"ready-{agent}").write_text("")
    while not go.exists():
        time.sleep(0.005)
    pause, attempts = (float(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 5 else (0.0, 50)
    log = os.environ.get("LANDER_LOG")

    def verify(path):
        start = time.monotonic()
        time.sleep(pause)
        ok = (path / f"{agent}.txt").exists()
        if log:  # who verified which tree, when: one O_APPEND line per run
            tree = subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=path, capture_output=True,
                                  text=True).stdout.strip()
            with open(log, "a") as fh:
                fh.write(json.dumps({"agent": agent, "tree": tree, "ok": ok, "start": start,
                                     "end": time.monotonic()}) + "\\n")
        return ok
    result = land(ws, commit, title=f"{agent} lands", fence=fence, verify=verify, max_attempts=attempts)
    print(json.dumps({"kind": type(result).__name__, "commit": getattr(result, "commit", None),
                      "attempts": getattr(result, "attempts", 0), "reason": getattr(result, "reason", None)}))
""")


def test_eight_concurrent_landers_all_land_exactly_once(target: Path, tmp_path: Path) -> None:
    """Also races eight `git worktree add`s: git alone lets one die reading another half-made."""
    base = str(Git(target).resolve("main"))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    agents = [f"ant-{i}" for i in range(8)]
    procs = [subprocess.Popen([sys.executable, "-c", LANDER, str(target), str(tmp_path / "ws"),
                               agent, str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for agent in agents]
    wait_for(lambda: all((tmp_path / f"ready-{a}").exists() for a in agents), 60, "every lander ready")
    go.write_text("")
    outputs = [p.communicate(timeout=60) for p in procs]

    results = [json.loads(out) for out, err in outputs if out.strip()]
    assert len(results) == 8, [err for _, err in outputs]
    assert {r["kind"] for r in results} == {"Landed"}, results
    git = Git(target)
    log = first_parent_log(git, base)
    assert sorted(log) == sorted(r["commit"] for r in results)
    assert sorted(trailers(git, c)["Task-Id"] for c in log) == sorted(f"task-{a}" for a in agents)
    files = set(git.run("ls-tree", "--name-only", "main").split())
    assert {f"{a}.txt" for a in agents} <= files
    # The user's clean checkout ended at the tip with every file, whatever the landing order.
    assert all((target / f"{a}.txt").exists() for a in agents)
    assert git.run("status", "--porcelain") == ""


def test_slow_verify_landers_queue_instead_of_invalidating_each_other(target: Path, tmp_path: Path) -> None:
    """Six landers from one base, each re-verify taking 0.4 s: without the landing queue every
    landing invalidates the others' verify runs; with it each lander re-verifies once, in turn."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    agents = [f"slow-{i}" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-c", LANDER, str(target), str(tmp_path / "ws"), agent, str(go),
                               "0.4", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for agent in agents]
    wait_for(lambda: all((tmp_path / f"ready-{a}").exists() for a in agents), 60, "every lander ready")
    go.write_text("")
    results = [json.loads(out) for out, _ in (p.communicate(timeout=90) for p in procs) if out.strip()]
    assert len(results) == 6 and [r for r in results if r["kind"] != "Landed"] == []
    assert max(r["attempts"] for r in results) <= 2
