"""`stigmergy logs AGENT [-f] [-n N]` and the rotation of agent logs, with real files and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import cli, set_config, wait_for
from harness import agentlog
from harness.colony import Colony


def agent_log(colony: Colony, agent: str, text: str) -> Path:
    log = colony.home / "agents" / agent / "agent.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)
    return log


def test_rotation_keeps_three_and_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    for n in range(1, 6):
        log.write_text(f"run {n}\n" * 20)
        assert agentlog.rotate(log, max_bytes=50)
        assert not log.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.log.1", "agent.log.2", "agent.log.3"]
    assert [(tmp_path / f"agent.log.{i}").read_text().split("\n")[0] for i in (1, 2, 3)] == ["run 5", "run 4", "run 3"]
    log.write_text("small\n")
    assert not agentlog.rotate(log, max_bytes=50) and not agentlog.rotate(log, max_bytes=0)
    assert log.read_text() == "small\n"


def test_the_launcher_rotates_a_big_log_when_it_starts_the_agent(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, log_max_bytes=1000)
    old = agent_log(colony, "coder-01", "an old night\n" * 200)
    script = tmp_path / "none.yaml"
    script.write_text("[]\n")
    done = cli("run", "--agents", "1", "--until-empty", "--model", f"scripted:{script}", "--repo",
               str(colony.repo), "--workspaces", str(tmp_path / "ws"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"rotated {old}" in done.stderr
    assert old.with_name("agent.log.1").read_text() == "an old night\n" * 200
    assert old.read_text().startswith("--- launcher ") and "an old night" not in old.read_text()


def test_logs_prints_the_last_lines_reaching_into_the_rotated_log(colony: Colony) -> None:
    log = agent_log(colony, "a1", "".join(f"line {i}\n" for i in range(100)))
    done = cli("logs", "a1", "-n", "3", "--repo", str(colony.repo))
    assert done.returncode == 0 and done.stdout == "line 97\nline 98\nline 99\n"
    assert cli("logs", "a1", "--repo", str(colony.repo)).stdout.splitlines()[0] == "line 50"  # 50 by default
    os.replace(log, log.with_name("agent.log.1"))
    log.write_text("new 0\nnew 1\n")
    assert cli("logs", "a1", "-n", "4", "--repo", str(colony.repo)).stdout == "line 98\nline 99\nnew 0\nnew 1\n"


def test_logs_of_an_unknown_agent_names_the_known_ones(colony: Colony) -> None:
    agent_log(colony, "a1", "x\n")
    done = cli("logs", "nobody", "--repo", str(colony.repo))
    assert done.returncode == 2 and "no agent 'nobody' in this colony; known: a1" in done.stderr


def test_follow_survives_rotation_and_ends_quietly_on_ctrl_c(colony: Colony, tmp_path: Path) -> None:
    log = agent_log(colony, "a1", "before\n")
    out = tmp_path / "out.txt"
    with open(out, "wb") as sink:
        follower = subprocess.Popen([sys.executable, "-m", "harness", "logs", "a1", "-f", "--repo", str(colony.repo)],
                                    stdout=sink, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: out.read_text() == "before\n", timeout=30, what="the last lines")
        with open(log, "a") as f:
            f.write("appended\n")
        wait_for(lambda: "appended\n" in out.read_text(), timeout=10, what="the appended line")
        with open(log, "a") as f:  # written just before the rotation: still shown
            f.write("last of the old\n")
        os.replace(log, log.with_name("agent.log.1"))
        log.write_text("first of the new\n")
        wait_for(lambda: "first of the new\n" in out.read_text(), timeout=10, what="the new log")
        with open(log, "a") as f:
            f.write("and more\n")
        wait_for(lambda: out.read_text().endswith("and more\n"), timeout=10, what="the new log's growth")
        assert out.read_text() == "before\nappended\nlast of the old\nfirst of the new\nand more\n"
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(timeout=10)
    assert follower.stderr is not None
    assert code == 0 and follower.stderr.read() == b""
