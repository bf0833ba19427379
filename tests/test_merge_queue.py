"""The merge queue with real repositories, worktrees and processes: landers verify on top of the
candidates ahead of them in parallel, land in queue order, and every first-parent tree passed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import advance_main, make_repo, wait_for
from harness.git import Git
from harness.fence import Fence
from harness.integrate import Landed, LandResult, Verdict, VerifyFailed, land
from harness.mergequeue import QUEUE_DIR
from harness.workspace import Workspace
from test_integrate import LANDER, first_parent_log, trailers

pytestmark = pytest.mark.usefixtures("no_user_git_config")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", {"shared.txt": "one\n", ".gitignore": ".stigmergy/\n"})


def queued(repo: Path) -> list[dict[str, str]]:
    folder = Git(repo).common_dir() / QUEUE_DIR
    found = []
    for p in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            found.append(json.loads(p.read_text()))
        except FileNotFoundError:
            continue
    return found


class Verifier:
    """One verify callback for several landers: records who verified which files, and when;
    fails a tree holding a file named in ``bad``; ``hold(agent)`` keeps that agent's verify
    running until ``release`` says so."""

    def __init__(self, bad: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.bad = bad
        self.runs: list[tuple[str, frozenset[str], float, float]] = []
        self.holds: dict[str, Callable[[], bool]] = {}
        self.lock = threading.Lock()

    def for_agent(self, agent: str) -> Callable[[Path], Verdict]:
        def verify(path: Path) -> Verdict:
            start = time.monotonic()
            files = frozenset(p.name for p in path.glob("*.txt"))
            until = self.holds.get(agent)
            if until is not None:
                wait_for(until, 60, f"{agent}'s verify to be released")
            else:
                time.sleep(0.1)
            with self.lock:
                self.runs.append((agent, files, start, time.monotonic()))
            bad = files & self.bad
            return Verdict(not bad, f"FAILED: {sorted(bad)}" if bad else "ok")
        return verify

    def files_of(self, agent: str) -> list[frozenset[str]]:
        return [files for who, files, _, _ in self.runs if who == agent]


def prepare(target: Path, agents: list[str]) -> dict[str, tuple[Workspace, str, Fence]]:
    """Each agent's work (its own file) committed on today's main; then main moves, so every
    merge result is a new tree that must be verified: every lander goes through the queue."""
    out = {}
    for agent in agents:
        ws = Workspace(target, target.parent / "ws", agent)
        ws.prepare()
        (ws.path / f"{agent}.txt").write_text(agent + "\n")
        commit = ws.commit_all(f"work by {agent}")
        assert commit is not None
        got = Fence.acquire(ws.git, f"task-{agent}", 1, f"tok-{agent}")
        assert isinstance(got, Fence)
        out[agent] = (ws, commit, got)
    advance_main(target, "moved.txt", "main moved\n")
    return out


def start_in_order(target: Path, work: dict[str, tuple[Workspace, str, Fence]], verifier: Verifier
                   ) -> tuple[dict[str, LandResult], list[threading.Thread]]:
    """Landers started one by one, each once the one before is in the queue: a known order."""
    results: dict[str, LandResult] = {}
    threads = []
    for n, (agent, (ws, commit, fence)) in enumerate(work.items(), start=1):
        def go(agent: str = agent, ws: Workspace = ws, commit: str = commit, fence: Fence = fence) -> None:
            results[agent] = land(ws, commit, title=f"{agent} lands", fence=fence, verify=verifier.for_agent(agent),
                                  commit_verified=True)
        t = threading.Thread(target=go)
        t.start()
        threads.append(t)
        wait_for(lambda n=n: len(queued(target)) >= n, 30, f"{agent} in the queue")
    return results, threads


def test_a_candidate_failing_ahead_is_left_out_and_those_behind_land_verified(target: Path) -> None:
    """a fails; b and c verified stacks holding a's work meanwhile, in parallel with a. Once a
    leaves, they verify again without it, and land in order: b, then c."""
    base = str(Git(target).resolve("main"))
    work = prepare(target, ["a", "b", "c"])
    verifier = Verifier(bad={"a.txt"})
    verifier.holds["a"] = lambda: len(verifier.runs) >= 2  # b and c verified before a finishes
    results, threads = start_in_order(target, work, verifier)
    for t in threads:
        t.join(60)

    assert isinstance(results["a"], VerifyFailed) and "a.txt" in results["a"].log
    assert isinstance(results["b"], Landed) and isinstance(results["c"], Landed)
    git = Git(target)
    log = first_parent_log(git, base)
    assert [trailers(git, c).get("Task-Id") for c in reversed(log)] == [None, "task-b", "task-c"]
    # b and c first verified what main would be with a landed: in parallel with a's own verify.
    assert "a.txt" in verifier.files_of("b")[0] and "a.txt" in verifier.files_of("c")[0]
    a_run = next(r for r in verifier.runs if r[0] == "a")
    assert any(r[2] < a_run[3] and r[0] != "a" for r in verifier.runs)
    # ...then, a gone, what landed: each first-parent tree is one that lander verified.
    assert "a.txt" not in verifier.files_of("b")[-1] and "a.txt" not in verifier.files_of("c")[-1]
    assert_every_first_parent_tree_verified(git, base, verifier)
    assert queued(target) == []


def test_a_candidate_failing_behind_a_passing_one_fails_and_the_one_ahead_lands(target: Path) -> None:
    """b's work fails on top of a's. a lands; main is then exactly what b verified, so b fails
    without verifying again, left at the failing candidate to fix."""
    base = str(Git(target).resolve("main"))
    work = prepare(target, ["a", "b"])
    verifier = Verifier(bad={"b.txt"})
    verifier.holds["a"] = lambda: len(verifier.runs) >= 1
    results, threads = start_in_order(target, work, verifier)
    for t in threads:
        t.join(60)

    assert isinstance(results["a"], Landed)
    failed = results["b"]
    assert isinstance(failed, VerifyFailed) and "b.txt" in failed.log
    assert len(verifier.files_of("b")) == 1 and "a.txt" in verifier.files_of("b")[0]
    git = Git(target)
    assert first_parent_log(git, base)[0] == results["a"].commit
    ws_b = work["b"][0]
    assert ws_b.wt.run("rev-parse", "HEAD").strip() == failed.commit
    assert git.run("rev-parse", f"{failed.commit}^").strip() == results["a"].commit
    assert_every_first_parent_tree_verified(git, base, verifier)


def test_an_agent_killed_in_the_queue_is_passed_over(target: Path, tmp_path: Path) -> None:
    """A lander process SIGKILLed while it verifies at the head: the one behind it verifies
    again without its work and lands; the dead one's entry is removed."""
    base = str(Git(target).resolve("main"))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # The killed lander's verify sleeps for a minute: it is in the queue, verifying, when killed.
    victim = subprocess.Popen([sys.executable, "-c", LANDER, str(target), str(target.parent / "ws"), "victim",
                               str(go), "60", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    wait_for(lambda: (tmp_path / "ready-victim").exists() or victim.poll() is not None, 60, "the victim ready")
    assert victim.poll() is None, victim.communicate()
    work = prepare(target, ["survivor"])
    go.write_text("")
    wait_for(lambda: len(queued(target)) == 1, 30, "the victim in the queue")
    verifier = Verifier()
    results, threads = start_in_order(target, work, verifier)
    wait_for(lambda: len(verifier.runs) >= 1, 30, "the survivor's verify behind the victim")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()  # reaped: its pid is gone, as under the launcher
    threads[0].join(60)

    assert isinstance(results["survivor"], Landed)
    assert "victim.txt" in verifier.files_of("survivor")[0]
    assert "victim.txt" not in verifier.files_of("survivor")[-1]
    git = Git(target)
    assert [trailers(git, c).get("Task-Id") for c in first_parent_log(git, base)] == ["task-survivor", None]
    assert queued(target) == []


def test_many_landers_verify_in_parallel_and_every_first_parent_tree_passed(target: Path, tmp_path: Path) -> None:
    """Six lander processes from one base, each verify 0.5 s: all land once, several verify runs
    overlap (the old one-at-a-time queue had none), and each tree on main's first-parent line
    passes the verify run again afterwards."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "LANDER_LOG": str(tmp_path / "verify.jsonl")}
    agents = [f"ant-{i}" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-c", LANDER, str(target), str(tmp_path / "ws"), agent, str(go),
                               "0.5", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for agent in agents]
    wait_for(lambda: all((tmp_path / f"ready-{a}").exists() for a in agents), 60, "every lander ready")
    base = advance_main(target, "moved.txt", "moved\n")  # no work's own tree can land as it is
    go.write_text("")
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [json.loads(out) for out, _ in outputs if out.strip()]
    assert len(results) == 6, [err[-2000:] for out, err in outputs if not out.strip()]
    assert [r for r in results if r["kind"] != "Landed"] == []

    git = Git(target)
    log = first_parent_log(git, base)
    assert sorted(trailers(git, c)["Task-Id"] for c in log) == sorted(f"task-{a}" for a in agents)
    runs = [json.loads(line) for line in (tmp_path / "verify.jsonl").read_text().splitlines()]
    overlapping = sum(1 for a in runs for b in runs if a is not b and a["start"] < b["start"] < a["end"])
    assert overlapping >= 1, runs
    verified_trees = {r["tree"] for r in runs if r["ok"]}
    for commit in log:  # each first-parent tree: verified by its lander, and passes again now
        tree = git.run("rev-parse", f"{commit}^{{tree}}").strip()
        assert tree in verified_trees
        agent = trailers(git, commit)["Agent"]
        names = git.run("ls-tree", "--name-only", commit).split()
        assert f"{agent}.txt" in names


def assert_every_first_parent_tree_verified(git: Git, base: str, verifier: Verifier) -> None:
    """Each first-parent commit landed (the person's own commit aside) holds files its lander
    verified and saw pass."""
    for commit in first_parent_log(git, base):
        agent = trailers(git, commit).get("Agent")
        if agent is None:
            continue
        files = frozenset(n for n in git.run("ls-tree", "--name-only", commit).split() if n.endswith(".txt"))
        assert files in verifier.files_of(agent), (agent, sorted(files))
        assert not files & verifier.bad


def test_a_wrong_shared_merge_result_never_decides_a_landing(target: Path) -> None:
    """Shared merge results are keyed by the base's tree, not its history, so one may be wrong for
    main (another merge base): it may steer a prediction, never the landing. A planted
    "conflict" for exactly main and our work changes nothing: the work lands, its real merge."""
    work = prepare(target, ["solo"])
    ws, commit, fence = work["solo"]
    git = Git(target)
    main_tree = git.run("rev-parse", "main^{tree}").strip()
    merges = git.common_dir() / QUEUE_DIR / "merges"
    merges.mkdir(parents=True)
    (merges / f"{main_tree}-{commit}").write_text("conflict\n")
    verifier = Verifier()
    result = land(ws, commit, title="solo lands", fence=fence, verify=verifier.for_agent("solo"))
    assert isinstance(result, Landed)
    assert {"solo.txt", "moved.txt"} <= set(git.run("ls-tree", "--name-only", "main").split())
