"""Supervision you can trust overnight: one live process per agent id, one launcher per colony, a
relaunched launcher that adopts the agents still alive, a closed terminal, and a deadline that holds
with no launcher. Real launchers, real agents, real signals, the scripted model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import cli, landed_ids, wait_for
from harness.colony import Colony
from harness.pidlock import agent_processes
from test_swarm import Launcher, add_tasks, alive, beat, colony, events, launcher, slow, write_task

__all__ = ["colony", "launcher"]  # the fixtures, shared with test_swarm


def changed_files(repo: Path, commit: str) -> list[str]:
    out = subprocess.run(["git", "diff-tree", "--no-commit-id", "--name-only", "-r", f"{commit}^", commit],
                         cwd=repo, capture_output=True, text=True, check=True).stdout
    return out.split()


def landings(repo: Path) -> dict[str, list[str]]:
    """Task id -> the files its landed commit changed, for every Task-Id commit on main's first parents."""
    out = subprocess.run(["git", "log", "--first-parent", "--format=%H %(trailers:key=Task-Id,valueonly,separator=)",
                          "main"], cwd=repo, capture_output=True, text=True, check=True).stdout
    landed: dict[str, list[str]] = {}
    for line in out.splitlines():
        commit, _, tid = line.partition(" ")
        if tid.strip():
            assert tid.strip() not in landed, f"{tid.strip()} landed twice"
            landed[tid.strip()] = changed_files(repo, commit)
    return landed


def launcher_log(colony: Colony) -> str:
    path = colony.home / "launcher.log"
    return path.read_text() if path.exists() else ""


# -- one live process per agent id --------------------------------------------------------------------
def test_a_second_agent_with_a_running_id_exits_2_naming_the_holder(
        colony: Colony, launcher: Launcher, tmp_path: Path) -> None:
    add_tasks(colony, "t1")
    launcher.start([write_task("t1", *slow(3))], "--agents", "1")
    first = launcher.agent_pid("coder-01")
    wait_for(lambda: events(colony, "claim", task="t1"), 30, "the claim of t1")
    second = subprocess.run(
        [sys.executable, "-m", "harness", "agent", "run", "--id", "coder-01", "--repo", str(colony.repo),
         "--model", f"scripted:{tmp_path / 'script.yaml'}", "--workspaces", str(tmp_path / "ws")],
        capture_output=True, text=True, timeout=60)
    assert second.returncode == 2, second.stderr
    assert f"agent coder-01 is already running (pid {first} on " in second.stderr
    assert "stop it or choose another --id" in second.stderr
    # The holder never noticed: same process, same heartbeat, and its task lands once.
    assert alive(first) and beat(colony, "coder-01")["pid"] == first  # type: ignore[index]
    wait_for(lambda: landed_ids(colony.repo) == ["t1"], 60, "t1 to land")
    assert landings(colony.repo) == {"t1": ["t1.txt"]}
    assert agent_processes(colony.repo) == {"coder-01": [first]}


def test_a_killed_agent_frees_its_id_even_while_its_commands_live_on(
        colony: Colony, launcher: Launcher, tmp_path: Path) -> None:
    add_tasks(colony, "t1")
    # The model's command outlives its agent (it runs in a session of its own): it must not have
    # inherited the agent's lock, or the restarted agent would find its own id taken. Only the
    # first attempt sleeps; it leaves its pid outside the worktree. Unsandboxed: in bwrap a command
    # dies with its agent (--die-with-parent) and cannot write outside its worktree.
    marker = tmp_path / "orphan.pid"
    launcher.start([write_task("t1", {"bash": f"[ -e {marker} ] || {{ echo $$ > {marker}; exec sleep 8; }}"})],
                   "--agents", "1", "--until-empty", "--sandbox", "none")
    first = launcher.agent_pid("coder-01")
    wait_for(marker.exists, 30, "the model's command to start")
    orphan = int(marker.read_text())
    os.kill(first, signal.SIGKILL)
    launcher.agent_pid("coder-01", not_=first)  # the restarted agent took the id: it beats
    assert alive(orphan)  # while the dead agent's command still runs
    code, out = launcher.wait(60)
    assert code == 0, out
    assert [e["code"] for e in events(colony, "agent_exit", by="launcher")] == [-signal.SIGKILL, 0]
    assert not events(colony, "agent_adopt")
    assert landed_ids(colony.repo) == ["t1"]
    os.kill(orphan, signal.SIGKILL)


# -- one launcher per colony, and a relaunched one adopts ---------------------------------------------
def test_a_second_launcher_on_a_live_colony_exits_2(colony: Colony, launcher: Launcher, tmp_path: Path) -> None:
    launcher.start([], "--agents", "1")
    pid = launcher.agent_pid("coder-01")
    assert launcher.proc is not None
    second = cli("--agents", "2", "--repo", str(colony.repo), "--model", f"scripted:{tmp_path / 'script.yaml'}",
                 "--workspaces", str(tmp_path / "ws"))
    assert second.returncode == 2, second.stderr
    assert f"a launcher is already running on this colony (pid {launcher.proc.pid} on " in second.stderr
    assert len(events(colony, "launch")) == 1
    assert agent_processes(colony.repo) == {"coder-01": [pid]}
    assert launcher.proc.poll() is None
    launcher.proc.send_signal(signal.SIGTERM)
    code, out = launcher.wait(30)
    assert code == 0, out


def test_a_relaunched_launcher_adopts_live_agents_and_never_doubles_an_id(
        colony: Colony, launcher: Launcher) -> None:
    ids = [f"t{i}" for i in range(1, 9)]
    add_tasks(colony, *ids)
    entries = [write_task(t, *slow(2)) for t in ids]  # ~2 s each: kills land mid-task
    launcher.start(entries, "--agents", "2", "--until-empty")
    launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")
    doubled: list[dict[str, list[int]]] = []

    def watch(seconds: float) -> None:
        """Sample the colony's agent processes every 0.1 s; keep any moment an id ran twice."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and launcher.proc is not None and launcher.proc.poll() is None:
            seen = agent_processes(colony.repo)
            launcher.agents.update(p for pids in seen.values() for p in pids)
            if any(len(pids) > 1 for pids in seen.values()):
                doubled.append(seen)
            time.sleep(0.1)

    outs = []
    for _ in range(3):
        watch(2.5)
        assert launcher.proc is not None
        launcher.proc.kill()
        outs.append(launcher.wait(10)[1])
        launcher.start(entries, "--agents", "2", "--until-empty")
    watch(90)
    code, out = launcher.wait(10)
    assert code == 0, out
    assert not doubled, f"two live processes under one id: {doubled[:3]}"
    assert landings(colony.repo) == {t: [f"{t}.txt"] for t in ids}  # each once, with only its own file
    assert sorted(t.id for _, t in colony.listing("done")) == sorted(ids)
    adopted = events(colony, "agent_adopt")
    assert adopted and {e["agent"] for e in adopted} <= {"coder-01", "coder-02"}
    assert "adopted" in "".join(outs[1:]) + out
    assert not agent_processes(colony.repo)


def two_agents_then_relaunch(launcher: Launcher, *args: str) -> list[int]:
    """Two idle agents under a launcher that is SIGKILLed and started again with `args`; their pids."""
    launcher.start([], "--agents", "2")
    pids = [launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")]
    assert launcher.proc is not None
    launcher.proc.kill()
    launcher.wait(10)
    launcher.start([], *args)
    return pids


def test_adopted_agents_are_restarted_when_they_crash_and_stopped_with_the_colony(
        colony: Colony, launcher: Launcher) -> None:
    pids = two_agents_then_relaunch(launcher, "--agents", "2")
    wait_for(lambda: len(events(colony, "agent_adopt")) == 2, 30, "both agents adopted")
    assert sorted(e["pid"] for e in events(colony, "agent_adopt")) == sorted(pids)
    os.kill(pids[0], signal.SIGKILL)  # an adopted agent crashes: no goodbye heartbeat
    fresh = launcher.agent_pid("coder-01", not_=pids[0])
    assert [r["delay"] for r in events(colony, "agent_restart", agent="coder-01")] == [1.0]
    assert agent_processes(colony.repo) == {"coder-01": [fresh], "coder-02": [pids[1]]}
    launcher.proc.send_signal(signal.SIGTERM)  # reaches the adopted coder-02 as well as its own child
    code, out = launcher.wait(30)
    assert code == 0, out
    assert not any(alive(p) for p in (*pids, fresh))
    exits = {(e["agent"], e["pid"]): e["code"] for e in events(colony, "agent_exit", by="launcher")}
    assert exits == {("coder-01", pids[0]): None, ("coder-01", fresh): 0, ("coder-02", pids[1]): 0}
    assert "died without its goodbye heartbeat" in out


def test_a_relaunch_with_fewer_agents_names_the_ones_it_leaves_unsupervised(
        colony: Colony, launcher: Launcher) -> None:
    pids = two_agents_then_relaunch(launcher, "--agents", "1")
    wait_for(lambda: "unsupervised" in launcher_log(colony), 30, "the launcher to name coder-02")
    assert f"coder-02 is still running (pid {pids[1]} on " in launcher_log(colony)
    launcher.proc.send_signal(signal.SIGTERM)
    code, out = launcher.wait(30)
    assert code == 0, out
    assert not alive(pids[0]) and alive(pids[1])  # only its own (adopted) agent was stopped


# -- a closed terminal, and a deadline that needs no launcher -----------------------------------------
def test_sighup_with_the_terminal_gone_leaves_the_launcher_supervising(colony: Colony, launcher: Launcher) -> None:
    ids = ["t1", "t2", "t3", "t4"]
    add_tasks(colony, *ids)
    proc = launcher.start([write_task(t, *slow(2)) for t in ids], "--agents", "2")
    pids = [launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")]
    assert landed_ids(colony.repo) == []
    assert proc.stdout is not None
    proc.stdout.close()  # the terminal is gone: every write to it now fails (EPIPE)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "terminal closed (SIGHUP)" in launcher_log(colony), 10, "the launcher to log the hang-up")
    assert f"stigmergy stop --repo {colony.repo}" in launcher_log(colony)
    wait_for(lambda: sorted(landed_ids(colony.repo)) == ids, 60, "every task landed after the hang-up")
    assert proc.poll() is None and all(alive(p) for p in pids)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not any(alive(p) for p in pids)
    assert "all agents have exited" in launcher_log(colony).split("terminal closed (SIGHUP)")[1]
    assert [e["code"] for e in events(colony, "agent_exit", by="launcher")] == [0, 0]


def test_max_hours_holds_with_the_launcher_killed(colony: Colony, launcher: Launcher) -> None:
    add_tasks(colony, "t1")
    # A deadline about 6 s away; t1 takes longer than that, and is finished, not aborted.
    launcher.start([write_task("t1", *slow(7))], "--agents", "2", "--max-hours", "0.0017")
    assert launcher.proc is not None
    pids = [launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")]
    deadline = json.loads((colony.home / "deadline.json").read_text())
    assert deadline["launcher"] == launcher.proc.pid and deadline["until"] > time.time()
    wait_for(lambda: events(colony, "claim", task="t1"), 30, "the claim of t1")
    launcher.proc.kill()
    launcher.wait(10)
    wait_for(lambda: colony.stop_path.exists(), 30, "an agent to lay STOP at the deadline")
    assert time.time() >= deadline["until"] - 0.5
    assert colony.stop_path.read_text() == ""  # the plain STOP: finish the current task
    wait_for(lambda: not any(alive(p) for p in pids), 40, "the agents to leave by themselves")
    assert landed_ids(colony.repo) == ["t1"]
    assert all(beat(colony, a)["state"] == "exited" for a in ("coder-01", "coder-02"))  # type: ignore[index]


def test_a_deadline_left_from_an_earlier_run_is_removed_at_launch(colony: Colony, launcher: Launcher) -> None:
    (colony.home / "deadline.json").write_text(json.dumps({"until": time.time() - 60, "launcher": 1}))
    launcher.start([], "--agents", "1")
    pid = launcher.agent_pid("coder-01")
    time.sleep(1.5)  # an agent honouring the old deadline would have laid STOP and left by now
    assert alive(pid) and not colony.stop_path.exists()
    assert not (colony.home / "deadline.json").exists()
    assert launcher.proc is not None
    launcher.proc.send_signal(signal.SIGTERM)
    code, out = launcher.wait(30)
    assert code == 0 and "deadline" in out, out
