"""The launcher with real agent processes, real signals and the scripted model on a real repository."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import cli, landed_ids, set_config, wait_for
from harness import swarm
from harness.colony import Colony
from harness.errors import UsageError
from harness.pidlock import running
from harness.tasks import Task


# -- helpers ------------------------------------------------------------------------------------------


alive = running  # running, not a zombie


def beat(colony: Colony, agent: str) -> dict | None:
    return colony.last_beat(agent)


def events(colony: Colony, name: str, **match: object) -> list[dict]:
    return [e for e in colony.events() if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def write_task(task_id: str, *before: dict) -> dict:
    """A script entry: optional slow steps, then a file of its own, then finish."""
    return {"match": f"^{task_id}$", "actions": [
        *before, {"write": {"path": f"{task_id}.txt", "content": f"{task_id}\n"}}, {"finish": "done"}]}


def slow(seconds: int) -> list[dict]:
    """Many short sleeps, each followed by a model call: the agent can abort between any two."""
    return [step for _ in range(seconds) for step in ({"sleep": 1}, {"bash": "true"})]


@pytest.fixture
def colony(repo: Path) -> Colony:
    c = Colony.init(repo)
    # Short beats so liveness shows within a test; no verify: these tests are about processes.
    return set_config(c, heartbeat_interval=0.5, lease_ttl=30)


class Launcher:
    """`python -m harness ...` as a real process; every pid it or its agents had is killed at the end."""

    def __init__(self, colony: Colony, tmp: Path) -> None:
        self.colony, self.tmp = colony, tmp
        self.proc: subprocess.Popen[str] | None = None
        self.agents: set[int] = set()

    def start(self, entries: list[dict], *args: str) -> subprocess.Popen[str]:
        script, text = self.tmp / "script.yaml", yaml.safe_dump(entries, sort_keys=False)
        if not script.exists() or script.read_text() != text:  # running agents may be reading it
            script.write_text(text)
        # No "run": the CLI inserts it when the first argument is an option.
        # Its own session and process group, like a shell job: os.killpg stands in for Ctrl-C.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "--repo", str(self.colony.repo), "--model", f"scripted:{script}",
             "--workspaces", str(self.tmp / "ws"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return self.proc

    def agent_pid(self, agent: str, not_: int | None = None) -> int:
        """The pid in the agent's heartbeat, once there is one (other than `not_`)."""
        def fresh() -> bool:
            b = beat(self.colony, agent)
            return bool(b and b.get("pid") and b["pid"] != not_)
        wait_for(fresh, 30, f"a heartbeat from {agent}")
        pid = int(beat(self.colony, agent)["pid"])  # type: ignore[index]
        self.agents.add(pid)
        return pid

    def wait(self, timeout: float = 60) -> tuple[int, str]:
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"launcher still running after {timeout}s:\n{out}") from None
        return self.proc.returncode, out

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        for path in (self.colony.home / "agents").glob("*/heartbeat.json"):
            pid = (json.loads(path.read_text()) or {}).get("pid")
            if pid:
                self.agents.add(int(pid))
        for pid in self.agents:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launcher(colony: Colony, tmp_path: Path) -> Iterator[Launcher]:
    lch = Launcher(colony, tmp_path)
    yield lch
    lch.cleanup()


def add_tasks(colony: Colony, *ids: str) -> None:
    colony.add_many([Task(id=i, title=f"write {i}.txt") for i in ids])


def no_claim_held(colony: Colony) -> bool:
    return all(colony.current_claim(t.id) is None for _, t in colony.listing("all"))


# -- planning (no processes) ------------------------------------------------------------------------
def test_plan_fills_with_coders_and_numbers_per_role() -> None:
    specs = swarm.plan(5, "merger=2,critic=1")
    assert [(s.id, s.role) for s in specs] == [
        ("merger-01", "merger"), ("merger-02", "merger"), ("critic-01", "critic"),
        ("coder-01", "coder"), ("coder-02", "coder")]
    assert [s.id for s in swarm.plan(None, "coder=3,merger=1")] == ["coder-01", "coder-02", "coder-03", "merger-01"]
    assert len(swarm.plan(None, None)) == swarm.DEFAULT_AGENTS
    assert [s.id for s in swarm.plan(100, "")][-1] == "coder-100"  # explicit: the rest are coders
    assert [s.id for s in swarm.plan(100, None)][85:88] == ["coder-86", "merger-01", "merger-02"]  # the default mix


@pytest.mark.parametrize("agents,roles,msg", [
    (2, "coder=2,merger=1", "asks for 3 agents"), (2, "coder", "ROLE=COUNT"), (2, "Coder=1", "not a valid role"),
    (0, None, "at least 1"), (3, "coder=1,coder=1", "twice")])
def test_plan_refuses_bad_roles(agents: int, roles: str | None, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        swarm.plan(agents, roles)


def test_bad_roles_exit_2_before_starting_anything(colony: Colony) -> None:
    proc = cli("--agents", "1", "--roles", "coder=2", "--repo", str(colony.repo), "--model", "scripted:x.yaml")
    assert proc.returncode == 2 and "asks for 2 agents" in proc.stderr
    proc = cli("--agents", "1", "--repo", str(colony.repo))  # no --model, none in config.yaml
    assert proc.returncode == 2 and "no model" in proc.stderr
    assert not events(colony, "launch")


def test_stop_command_lays_the_stop_pheromone(colony: Colony) -> None:
    assert cli("stop", "--repo", str(colony.repo)).returncode == 0
    assert colony.stop_path.read_text().strip() == ""
    assert cli("stop", "--now", "--repo", str(colony.repo)).returncode == 0
    assert colony.stop_path.read_text().strip() == "now"


# -- real agents ----------------------------------------------------------------------------------
def test_until_empty_lands_every_task_then_exits(colony: Colony, launcher: Launcher) -> None:
    add_tasks(colony, "t1", "t2", "t3", "t4")
    launcher.start([write_task(t) for t in ("t1", "t2", "t3", "t4")], "--agents", "2", "--until-empty")
    code, out = launcher.wait(90)
    assert code == 0, out
    assert sorted(t.id for _, t in colony.listing("done")) == ["t1", "t2", "t3", "t4"]
    assert sorted(landed_ids(colony.repo)) == ["t1", "t2", "t3", "t4"]
    exits = events(colony, "agent_exit", by="launcher")
    assert sorted(e["agent"] for e in exits) == ["coder-01", "coder-02"] and all(e["code"] == 0 for e in exits)
    assert not events(colony, "agent_restart")
    log = (colony.home / "agents" / "coder-01" / "agent.log").read_text()
    assert "starting coder-01" in log  # the agent's own output is appended below the launcher's line


def test_a_killed_agent_is_restarted_with_backoff_and_its_task_lands_once(
        colony: Colony, launcher: Launcher) -> None:
    add_tasks(colony, "t1")
    launcher.start([write_task("t1", *slow(3))], "--agents", "1", "--until-empty")
    first = launcher.agent_pid("coder-01")
    wait_for(lambda: events(colony, "claim", task="t1"), 30, "the claim of t1")
    os.kill(first, signal.SIGKILL)  # mid-task: the claim is held by a dead process
    second = launcher.agent_pid("coder-01", not_=first)
    os.kill(second, signal.SIGKILL)  # a crash loop: the next delay doubles
    launcher.agent_pid("coder-01", not_=second)
    code, out = launcher.wait(90)
    assert code == 0, out
    restarts = events(colony, "agent_restart", agent="coder-01")
    assert [r["delay"] for r in restarts] == [1.0, 2.0]
    kills = [e for e in events(colony, "agent_exit", by="launcher") if e["code"] == -signal.SIGKILL]
    assert [e["pid"] for e in kills] == [first, second]
    assert landed_ids(colony.repo) == ["t1"]  # reclaimed from the dead owner, landed exactly once
    assert [t.id for _, t in colony.listing("done")] == ["t1"]


def test_sigterm_stops_agents_mid_task_and_releases_their_claims(colony: Colony, launcher: Launcher) -> None:
    add_tasks(colony, "t1", "t2")
    launcher.start([write_task(t, *slow(60)) for t in ("t1", "t2")], "--agents", "2")
    pids = [launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")]
    wait_for(lambda: len(colony.listing("active")) == 2, 30, "both tasks claimed")
    started = time.monotonic()
    assert launcher.proc is not None
    launcher.proc.send_signal(signal.SIGTERM)
    code, out = launcher.wait(30)
    assert code == 0, out
    assert time.monotonic() - started < 20  # aborted mid-task, not after 60 s of work
    assert not any(alive(p) for p in pids)
    assert no_claim_held(colony)
    assert sorted(t.id for _, t in colony.listing("pending")) == ["t1", "t2"]
    assert landed_ids(colony.repo) == []
    exits = events(colony, "agent_exit", by="launcher")
    assert sorted(e["agent"] for e in exits) == ["coder-01", "coder-02"] and all(e["code"] == 0 for e in exits)


def test_ctrl_c_twice_kills_the_agents_and_the_colony_recovers(colony: Colony, launcher: Launcher) -> None:
    add_tasks(colony, "t1", "t2")
    # A step that shrugs off SIGTERM (ignored by the command and its children), so the first Ctrl-C
    # cannot end it and the agents are still there for the second one.
    # Unsandboxed: under bwrap a SIGTERM ends the sandbox itself, whatever the command ignores.
    stubborn = {"bash": "trap '' TERM; sleep 10"}
    launcher.start([write_task(t, stubborn) for t in ("t1", "t2")], "--agents", "2", "--sandbox", "none")
    pids = [launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")]
    # Both agents inside the stubborn step: its call is in their transcripts (written just before it runs).
    def stubborn_started() -> bool:
        said = "".join(p.read_text() for p in colony.home.glob("runs/t*/*/transcript.jsonl"))
        return said.count("trap '' TERM") >= 2
    wait_for(stubborn_started, 30, "both agents in the stubborn step")
    assert launcher.proc is not None
    time.sleep(0.5)
    os.killpg(launcher.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole group
    time.sleep(0.2)
    os.killpg(launcher.proc.pid, signal.SIGINT)
    code, out = launcher.wait(30)
    assert code == 0, out
    assert "killing every agent" in out
    assert not any(alive(p) for p in pids)
    assert sorted(e["code"] for e in events(colony, "agent_exit", by="launcher")) == [-signal.SIGKILL] * 2
    # Killed holders leave claims behind; their pids are dead, so the next reap frees the tasks.
    assert sorted(colony.reap("test")) == ["t1", "t2"]
    assert no_claim_held(colony) and len(colony.listing("pending")) == 2


def test_max_hours_lays_stop_and_waits_for_the_agents(colony: Colony, launcher: Launcher) -> None:
    launcher.start([], "--agents", "1", "--max-hours", "0.0005")  # 1.8 s
    pid = launcher.agent_pid("coder-01")
    code, out = launcher.wait(30)
    assert code == 0, out
    assert "--max-hours 0.0005 passed" in out and colony.stop_path.exists()
    assert not alive(pid)
    assert [e["code"] for e in events(colony, "agent_exit", by="launcher")] == [0]


def test_stop_file_ends_the_launcher(colony: Colony, launcher: Launcher) -> None:
    colony.stop_path.write_text("")  # left from an earlier stop: removed at launch
    launcher.start([], "--agents", "2")
    pids = [launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")]
    time.sleep(1)  # idle agents keep running: nothing to do is not a reason to leave
    assert all(alive(p) for p in pids) and launcher.proc is not None and launcher.proc.poll() is None
    assert cli("stop", "--repo", str(colony.repo)).returncode == 0
    code, out = launcher.wait(30)
    assert code == 0, out
    assert "STOP file found" in out
    assert not any(alive(p) for p in pids)
    assert all(e["code"] == 0 for e in events(colony, "agent_exit", by="launcher"))


def test_sigkill_of_the_launcher_leaves_the_colony_working(colony: Colony, launcher: Launcher) -> None:
    add_tasks(colony, "t1", "t2", "t3")
    launcher.start([write_task(t, *slow(2)) for t in ("t1", "t2", "t3")], "--agents", "2")
    pids = [launcher.agent_pid("coder-01"), launcher.agent_pid("coder-02")]
    assert launcher.proc is not None
    launcher.proc.kill()
    launcher.wait(10)
    # The agents are in their own sessions and write to files: they carry on, heartbeating and
    # landing, with no launcher at all.
    before = {a: beat(colony, a)["ts"] for a in ("coder-01", "coder-02")}  # type: ignore[index]
    wait_for(lambda: all(beat(colony, a)["ts"] > before[a] + 1 for a in before), 15, "fresh heartbeats")  # type: ignore[index]
    assert all(alive(p) for p in pids)
    wait_for(lambda: sorted(landed_ids(colony.repo)) == ["t1", "t2", "t3"], 90, "every task landed")
    assert all(os.getsid(p) == p for p in pids)  # session leaders: a terminal's Ctrl-C never reaches them
    assert cli("stop", "--repo", str(colony.repo)).returncode == 0
    wait_for(lambda: not any(alive(p) for p in pids), 30, "the agents to leave on STOP")
    assert no_claim_held(colony)
    assert sorted(t.id for _, t in colony.listing("done")) == ["t1", "t2", "t3"]
    assert not colony.listing("active") and not colony.listing("pending")


def test_a_bad_model_spec_is_refused_before_any_agent_starts(colony: Colony) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "--agents", "3", "--repo", str(colony.repo),
                           "--model", "no-such-provider/x"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown model spec 'no-such-provider/x'" in proc.stderr
    assert not events(colony, "launch")


def test_an_agent_that_refuses_its_arguments_is_not_restarted(colony: Colony, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "--agents", "1", "--repo", str(colony.repo),
                           "--model", f"scripted:{tmp_path / 'no-such-script.yaml'}", "--until-empty"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    # The agent's own error line, not just a pointer to its log.
    assert re.search(r"coder-01 refused their arguments \(exit 2\): scripted model: cannot read "
                     rf"{re.escape(str(tmp_path / 'no-such-script.yaml'))}", proc.stderr), proc.stderr
    assert [e["code"] for e in events(colony, "agent_exit", by="launcher")] == [2]
    assert not events(colony, "agent_restart")
