"""The command backend: an external agent CLI (here a small shell stand-in) does the work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import landed_ids
from harness.colony import Colony
from harness.tasks import Task

STAND_IN = """#!/bin/bash
# A stand-in agent CLI: reads its prompt from the file it is given, works in the cwd, uses the task CLI.
set -e
prompt=$(cat "$2")
echo "$prompt" | grep -q "Task $STIGMERGY_TASK" || { echo "prompt lacks the task"; exit 1; }
stigmergy agent heartbeat --agent "$STIGMERGY_AGENT"
echo "made by $STIGMERGY_AGENT for $STIGMERGY_TASK" > "$STIGMERGY_TASK.txt"
if [ "$STIGMERGY_TASK" = committing ]; then
  git add -A && git -c user.name=cli -c user.email=cli@x commit -qm "cli commit"
fi
if [ "$STIGMERGY_TASK" = first ]; then stigmergy task add "Found by the CLI" --id from-cli; fi
echo "all good"
"""


def test_command_backend_lands_work_and_uses_the_task_cli(colony: Colony, tmp_path: Path) -> None:
    cli = tmp_path / "fake-agent-cli"
    cli.write_text(STAND_IN)
    cli.chmod(0o755)
    for tid in ("first", "committing"):
        colony.add(Task(id=tid, title=f"Task {tid}"))
    proc = subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--id", "cli-agent", "--repo",
                           str(colony.repo), "--workspaces", str(tmp_path / "ws"), "--backend", "command",
                           "--agent-cmd", f"{cli} --prompt {{prompt_file}}", "--until-empty"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(landed_ids(colony.repo)) == ["committing", "first", "from-cli"]
    shown = subprocess.run(["git", "show", "main:first.txt"], cwd=colony.repo, capture_output=True, text=True)
    assert shown.stdout == "made by cli-agent for first\n"
    logs = list((colony.home / "runs" / "first").glob("*/agent-cli-0.log"))
    assert logs and "all good" in logs[0].read_text()
    assert colony.last_beat("cli-agent") is not None


def test_command_backend_needs_a_command(colony: Colony) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--id", "x", "--repo", str(colony.repo),
                           "--backend", "command"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--agent-cmd" in proc.stderr
