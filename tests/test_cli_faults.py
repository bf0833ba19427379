"""Issue 13: work that is not work, and faults of an agent CLI. Real agent processes running
stand-in CLIs (small shell scripts written here) on a real repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import advance_main, set_config
from harness import report
from harness.colony import Colony
from harness.tasks import Task


def stand_in(tmp: Path, body: str, name: str = "fake-cli") -> Path:
    path = tmp / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def run_agent(colony: Colony, tmp: Path, cmd: str, *extra: str,
              timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--id", "cli-agent", "--repo",
                           str(colony.repo), "--workspaces", str(tmp / "ws"), "--backend", "command",
                           "--agent-cmd", cmd, "--until-empty", "--sandbox", "none", *extra],
                          capture_output=True, text=True, timeout=timeout)


def main_log(colony: Colony) -> list[str]:
    out = subprocess.run(["git", "log", "--format=%s", "main"], cwd=colony.repo, capture_output=True, text=True)
    return out.stdout.splitlines()


# -- 7: work that is not work ---------------------------------------------------------------------------

def test_a_repair_round_that_undoes_the_change_lands_no_empty_commit(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, verify="test ! -e bad.txt", verify_rounds=2)
    colony.add(Task(id="undo", title="Task undo"))
    # Round 0 writes a file verify refuses; the repair round removes it again: the tree is main's.
    cmd = stand_in(tmp_path, 'if grep -q "verify command failed"; then rm -f bad.txt; else echo x > bad.txt; fi\n')
    proc = run_agent(colony, tmp_path, str(cmd))
    assert proc.returncode == 0, proc.stderr
    assert main_log(colony) == ["init"]  # no empty "Task undo" commit on main
    assert "done without a change" in proc.stderr
    assert colony.get("undo")[0] == "done"
    assert report.build(colony)["tasks"][0]["commit"] is None


def test_a_cli_that_fails_but_exits_0_without_a_change_says_so(colony: Colony, tmp_path: Path) -> None:
    colony.add(Task(id="quiet", title="Task quiet"))
    cmd = stand_in(tmp_path, 'cat >/dev/null; echo "warning: something odd"\n'
                             'echo "error: npm install failed"; exit 0\n')
    proc = run_agent(colony, tmp_path, str(cmd))
    assert proc.returncode == 0, proc.stderr
    assert "done without a change" in proc.stderr and "npm install failed" in proc.stderr
    notes = colony.notes("quiet")
    assert [n["kind"] for n in notes] == ["unchanged"] and "npm install failed" in notes[0]["text"]
    done = [e for e in colony.events() if e["event"] == "done"]
    assert done and done[0]["change"] is False
    assert report.summary_line(report.build(colony)).startswith("0 landed, 1 done without change")


def test_land_refuses_work_that_main_has_already(repo: Path) -> None:
    from harness.fence import Fence
    from harness.integrate import Unchanged, land
    from harness.workspace import Workspace
    ws = Workspace(repo, repo.parent / "workspaces", "a1")
    ws.prepare()
    (ws.path / "same.txt").write_text("same\n")
    commit = ws.commit_all("work")
    assert commit is not None
    advance_main(repo, "same.txt", "same\n")  # someone landed the very same change meanwhile
    tip = ws.git.resolve("refs/heads/main")
    fence = Fence.acquire(ws.git, "t1", 1, "tok")
    assert isinstance(fence, Fence)
    result = land(ws, commit, title="t1", fence=fence, verify=lambda _: True)
    assert result == Unchanged(str(tip)) and ws.git.resolve("refs/heads/main") == tip


def test_an_agent_cli_that_files_tasks_in_a_loop_is_capped(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, max_new_tasks_per_attempt=3)
    colony.add(Task(id="loop", title="Task loop"))
    cmd = stand_in(tmp_path, 'cat >/dev/null; [ "$STIGMERGY_TASK" = loop ] && for i in 1 2 3 4 5 6; do '
                             'stigmergy task add "follow-up $i" || echo "REFUSED $i"; done\n'
                             'echo done > "$STIGMERGY_TASK.txt"\n')
    proc = run_agent(colony, tmp_path, str(cmd), timeout=120)
    filed = [t for _, t in colony.listing("all") if t.id != "loop"]
    assert len(filed) == 3 and {t.created_by for t in filed} == {"cli-agent"}
    out = next((colony.home / "runs" / "loop").glob("*/agent-cli-0.log")).read_text()
    assert "REFUSED 4" in out and "max_new_tasks_per_attempt: 3" in out
    assert [n["kind"] for n in colony.notes("loop")] == ["filing_capped"]  # one note, not one per refusal
    assert proc.returncode == 0, proc.stderr


def test_the_model_s_create_task_is_capped_per_hour(colony: Colony, tmp_path: Path) -> None:
    import yaml
    colony = set_config(colony, max_new_tasks_per_hour=2)
    colony.add(Task(id="gen", title="Task gen"))
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump([
        {"match": "^gen$", "actions": [*({"create_task": {"title": f"more {i}", "priority": 10}} for i in range(4)),
                                       {"write": {"path": "gen.txt", "content": "x\n"}}, {"finish": "ok"}]},
        {"match": ".", "actions": [{"finish": "nothing to do"}]}]))
    proc = subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--id", "m1", "--repo", str(colony.repo),
                           "--workspaces", str(tmp_path / "ws"), "--model", f"scripted:{script}", "--until-empty",
                           "--sandbox", "none"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len([t for _, t in colony.listing("all") if t.created_by == "m1"]) == 2
    transcript = next((colony.home / "runs" / "gen").glob("*/transcript.jsonl")).read_text()
    assert "max_new_tasks_per_hour: 2" in transcript


# -- 8: a crash at start-up ---------------------------------------------------------------------------

def test_an_agent_that_crashes_at_start_up_is_given_up_on_after_three_tries(colony: Colony) -> None:
    import io
    import time

    from harness import swarm
    colony.add(Task(id="waiting", title="never claimed"))
    # The agent process itself cannot start: an import error, before any heartbeat.
    broken = [sys.executable, "-c", "import sys; print('warning: first line'); "
              "raise ImportError('No module named harness_missing_dep')"]
    out = io.StringIO()
    began = time.monotonic()
    code = swarm.run(swarm.Options(repo=colony.repo, agents=1, until_empty=True, agent_cmd=broken, poll=0.05,
                                   backoff_start=0.05), out)
    assert code == swarm.CRASH_EXIT and time.monotonic() - began < 20
    said = out.getvalue()
    assert "3 crashes in a row at start-up" in said and "harness_missing_dep" in said  # its error, from agent.log
    assert len([e for e in colony.events() if e["event"] == "agent_restart"]) == 2
    assert [e["agent"] for e in colony.events() if e["event"] == "agent_given_up"] == ["coder-01"]


# -- 4: the agent CLI's faults are not the model's --------------------------------------------------------

def assert_cli_fault(colony: Colony, proc: subprocess.CompletedProcess[str], *words: str) -> None:
    import json
    assert proc.returncode == 2, proc.stderr
    fault = json.loads((colony.home / "FAULT").read_text())
    assert fault["kind"] == "agent_cli", fault
    for word in words:
        assert word in fault["message"] and word in proc.stderr, (word, fault["message"])
    status, task = colony.get("t1")
    assert (status, task.skip_count) == ("pending", 0)  # not counted against the task
    assert len(list((colony.home / "runs" / "t1").glob("*/agent-cli-0.log"))) == 1  # tried once, not retried


def test_a_missing_agent_cli_stops_the_colony_with_its_error(colony: Colony, tmp_path: Path) -> None:
    colony.add(Task(id="t1", title="Task t1"))
    proc = run_agent(colony, tmp_path, "no-such-agent-cli-xyz -p {prompt_file}")
    assert_cli_fault(colony, proc, "command not found", "no-such-agent-cli-xyz")


def test_an_agent_cli_usage_error_stops_the_colony_showing_its_last_lines(colony: Colony, tmp_path: Path) -> None:
    colony.add(Task(id="t1", title="Task t1"))
    cmd = stand_in(tmp_path, 'cat >/dev/null; echo "warning: config file is old"; echo "usage: fake-cli [-p PROMPT]"\n'
                             'echo "error: unrecognized option --bogus" >&2; exit 2\n')
    proc = run_agent(colony, tmp_path, f"{cmd} --bogus")
    assert_cli_fault(colony, proc, "unrecognized option --bogus", "refused its arguments")


def test_an_agent_cli_that_is_not_logged_in_stops_the_colony(colony: Colony, tmp_path: Path) -> None:
    colony.add(Task(id="t1", title="Task t1"))
    cmd = stand_in(tmp_path, 'cat >/dev/null; echo "starting"; echo "Invalid API key · Please run /login"; exit 1\n')
    proc = run_agent(colony, tmp_path, str(cmd))
    assert_cli_fault(colony, proc, "Please run /login", "not logged in")


def test_a_failing_cli_that_changed_files_is_the_task_s_and_the_log_shows_its_last_lines(
        colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, max_attempts=1)
    colony.add(Task(id="t1", title="Task t1"))
    cmd = stand_in(tmp_path, 'cat >/dev/null; echo "warning: telemetry is on"; echo half > t1.txt\n'
                             'echo "error: ran out of ideas (401 tokens left)"; exit 1\n')
    proc = run_agent(colony, tmp_path, str(cmd))
    assert proc.returncode == 0, proc.stderr
    assert not (colony.home / "FAULT").exists()
    assert colony.get("t1")[0] == "failed"
    assert "error: ran out of ideas" in proc.stderr  # the CLI's error, not only its first line
    assert "error: ran out of ideas" in colony.notes("t1")[-1]["text"]  # and the next claimant sees it


def test_an_agent_cli_that_waits_forever_is_stopped_after_the_stall_limit(colony: Colony, tmp_path: Path) -> None:
    import time
    colony = set_config(colony, cli_stall_seconds=1, max_attempts=1)
    colony.add(Task(id="t1", title="Task t1"))
    # Works a little (output, then a file), then waits on a question nobody answers.
    cmd = stand_in(tmp_path, 'cat >/dev/null; echo thinking; sleep 0.5; echo x > t1.txt; sleep 0.5\n'
                             'echo "Allow this tool? [y/N]"; sleep 300\n')
    began = time.monotonic()
    proc = run_agent(colony, tmp_path, str(cmd), "--max-seconds", "120")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began < 30  # not --max-seconds
    assert colony.get("t1")[0] == "failed"
    assert "stalled for 1s" in proc.stderr and "Allow this tool?" in proc.stderr


# -- 5: the prompt speaks in the CLI's terms ----------------------------------------------------------------

def test_an_agent_cli_gets_a_prompt_in_its_terms(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, verify_rounds=1)
    colony.add(Task(id="t1", title="Task t1", verify="test -e ok.txt"))
    # Round 0 forgets ok.txt, so the repair prompt is seen too.
    cmd = stand_in(tmp_path, 'if grep -q "verify command failed"; then echo y > ok.txt; else echo x > t1.txt; fi\n')
    proc = run_agent(colony, tmp_path, str(cmd))
    assert proc.returncode == 0, proc.stderr
    run = next((colony.home / "runs" / "t1").glob("*/"))
    first, repair = (run / "prompt-0.md").read_text(), (run / "prompt-1.md").read_text()
    for absent in ("str_replace_based_edit_tool", "create_task", "add_note", "call finish", "Call finish"):
        assert absent not in first + repair, absent
    for present in ("stigmergy task add", "stigmergy agent heartbeat", "STIGMERGY_TASK", "STIGMERGY_AGENT",
                    "exit with status 0", "Task t1"):
        assert present in first, present
    assert "exit when it passes" in repair


def test_an_agent_cli_that_cannot_reach_its_endpoint_is_an_outage_not_the_task_s(
        colony: Colony, tmp_path: Path) -> None:
    import json

    from conftest import wait_for
    colony.add(Task(id="t1", title="Task t1"))
    cmd = stand_in(tmp_path, 'cat >/dev/null; echo "warning: update available"\n'
                             'echo "API Error: connect ECONNREFUSED 127.0.0.1:443"; exit 1\n')
    proc = subprocess.Popen([sys.executable, "-m", "harness", "agent", "run", "--id", "cli-agent", "--repo",
                             str(colony.repo), "--workspaces", str(tmp_path / "ws"), "--backend", "command",
                             "--agent-cmd", str(cmd), "--until-empty", "--sandbox", "none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(e["event"] == "release" for e in colony.events()), 60, "the release")
        (colony.home / "STOP").write_text("")
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert not (colony.home / "FAULT").exists()
    status, task = colony.get("t1")
    assert (status, task.skip_count) == ("pending", 0)
    assert json.loads((colony.home / "cooldown.json").read_text())["outages"] == 1  # the colony waits it out
    assert "ECONNREFUSED" in err


def test_only_a_cli_s_own_login_error_is_taken_for_one() -> None:
    from harness.command import classify
    from harness.errors import AgentCliNotRunnable
    for said in ("Invalid API key · Please run /login", "Error: 401 Unauthorized", "Not logged in"):
        assert isinstance(classify(1, said, False, "cli"), AgentCliNotRunnable), said
    for said in ("FAILED test_authentication.py", "401 tokens left", "edited credentials.py"):
        assert classify(1, said, False, "cli") is None, said  # the task's failure, counted as usual
    assert classify(1, "Invalid API key", True, "cli") is None  # it did work: not a login problem
    assert isinstance(classify(127, "x: command not found", True, "x"), AgentCliNotRunnable)


def test_a_cli_that_keeps_editing_a_changed_file_is_not_stalled(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, cli_stall_seconds=1)
    colony.add(Task(id="t1", title="Task t1"))
    # Silent, but at work: the same (already changed) file grows for 3 s, longer than the stall limit.
    cmd = stand_in(tmp_path, 'cat >/dev/null; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo $i >> t1.txt; '
                             'sleep 0.25; done\n')
    proc = run_agent(colony, tmp_path, str(cmd))
    assert proc.returncode == 0, proc.stderr
    assert colony.get("t1")[0] == "done" and "stalled" not in proc.stderr
