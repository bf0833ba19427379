"""Faults that are not a task's: a red main, a verify command that cannot run, a refused key, an
unknown model, an unreachable endpoint. Real launcher and agent processes, the scripted model and
the fake API server; what must hold is that no such fault counts against any task."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import advance_main, cli, landed_ids, set_config, wait_for
from harness import faults
from harness.colony import Colony
from harness.models.fake_server import FakeServer
from harness.tasks import Task

KEY = "sk-test-RIGHT-KEY-1234567890abcdef"
WRONG = "sk-test-WRONG-KEY-0987654321fedcba"


@pytest.fixture
def colony(repo: Path) -> Colony:
    return set_config(Colony.init(repo), heartbeat_interval=0.5, verify_rounds=0)


def add_tasks(colony: Colony, n: int) -> list[str]:
    ids = [f"t{i}" for i in range(n)]
    colony.add_many([Task(id=i, title=f"task {i}") for i in ids])
    return ids


def script(tmp: Path, ids: list[str], *extra: dict[str, object]) -> Path:
    path = tmp / "script.yaml"
    path.write_text(yaml.safe_dump([*extra, *({"match": f"^{i}$", "actions": [
        {"write": {"path": f"{i}.txt", "content": f"{i}\n"}}, {"finish": "done"}]} for i in ids)]))
    return path


def launch(colony: Colony, tmp: Path, model: str, *args: str, env: dict[str, str] | None = None,
           timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "--repo", str(colony.repo), "--model", model, "--agents", "2",
         "--workspaces", str(tmp / "ws"), *args],
        capture_output=True, text=True, timeout=timeout, env=env)


def attempts(colony: Colony) -> list[str]:
    """One entry per model attempt: the run folders holding a transcript."""
    return sorted(str(p.parent.relative_to(colony.home / "runs"))
                  for p in (colony.home / "runs").glob("*/*/transcript.jsonl"))


def assert_nothing_counted(colony: Colony, ids: list[str]) -> None:
    assert not colony.listing("failed")
    for tid in ids:
        status, task = colony.get(tid)
        assert (status, task.skip_count) == ("pending", 0), tid


def agent_until_empty(colony: Colony, tmp: Path, ids: list[str]) -> subprocess.CompletedProcess[str]:
    """One agent (a1, no launcher) working `ids` with the scripted model until none is left."""
    return subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--id", "a1", "--repo", str(colony.repo),
                           "--model", f"scripted:{script(tmp, ids)}", "--workspaces", str(tmp / "ws"), "--until-empty"],
                          capture_output=True, text=True, timeout=60)


def provider_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    return env | extra


# -- a red main ---------------------------------------------------------------------------------------


def test_a_red_main_costs_one_attempt_then_the_colony_waits_and_no_task_fails(
        colony: Colony, tmp_path: Path) -> None:
    ids = add_tasks(colony, 10)
    fixer = {"match": "^main-red-", "actions": [{"write": {"path": "fix.txt", "content": "tried\n"}},
                                                {"finish": "tried a fix"}]}
    path = script(tmp_path, ids, fixer)
    red = "echo MAIN-IS-BROKEN-HERE; false"
    done = launch(colony, tmp_path, f"scripted:{path}", "--until-empty", "--verify", red)
    assert done.returncode == 2, done.stderr  # the colony ended on a red main: the launcher says so
    assert "main is red" in done.stderr and "fix main or the verify command" in done.stderr

    reds = [t for _, t in colony.listing("all") if t.id.startswith("main-red-")]
    assert len(reds) == 1 and reds[0].kind == "verify_failure" and reds[0].priority == 95
    assert "MAIN-IS-BROKEN-HERE" in reds[0].body  # the failing output is in the task ...
    assert any("MAIN-IS-BROKEN-HERE" in n["text"] for n in colony.notes(reds[0].id))  # ... and its note
    assert attempts(colony) == [f"{reds[0].id}/001"]  # one model attempt in all: the red task's own
    assert_nothing_counted(colony, ids)
    assert landed_ids(colony.repo) == []
    assert "no task" not in done.stderr and "0 failed" in done.stderr  # the launcher's summary
    status = cli("status", "--repo", str(colony.repo), check=True).stdout
    assert "MAIN IS RED since" in status and reds[0].id in status

    # Fixed (here: a verify command that passes on main): the colony goes back to work.
    again = launch(colony, tmp_path, f"scripted:{path}", "--until-empty", "--verify", "true")
    assert again.returncode == 0, again.stderr
    assert sorted(landed_ids(colony.repo)) == ids
    assert colony.get(reds[0].id)[0] == "done"  # obsolete: settled, not worked on again
    assert any(n["kind"] == "obsolete" for n in colony.notes(reds[0].id))
    assert attempts(colony).count(f"{reds[0].id}/001") == 1 and len(attempts(colony)) == 11
    assert "10 landed" in again.stderr and "0 failed" in again.stderr


def test_main_turning_red_under_a_task_is_not_held_against_it(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, verify="test ! -f broken.txt")
    ids = add_tasks(colony, 1)
    path = tmp_path / "script.yaml"
    path.write_text(yaml.safe_dump([{"match": "^t0$", "actions": [
        {"write": {"path": "t0.txt", "content": "t0\n"}}, {"sleep": 2}, {"finish": "done"}]}]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "--repo", str(colony.repo), "--model", f"scripted:{path}", "--agents", "1",
         "--workspaces", str(tmp_path / "ws"), "--until-empty"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        wait_for(lambda: any(e["event"] == "claim" for e in colony.events()), 30, "the claim")
        advance_main(colony.repo, "broken.txt", "a human breaks main\n")  # while the task works
        out, _ = proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "main is red" in out, out
    # Its work passed on the old main; merged onto the new one it fails, and the new main is to blame.
    release = next(e for e in colony.events() if e["event"] == "release" and e["task"] == "t0")
    assert release["skip_count"] == 0 and "not known to pass verify" in release["note"]
    assert_nothing_counted(colony, ids)
    assert [t.id for _, t in colony.listing("all") if t.id.startswith("main-red-")]  # and main's fix is asked for


# -- configuration faults stop the colony -------------------------------------------------------------


def test_a_missing_verify_runner_stops_the_colony_with_exit_2(colony: Colony, tmp_path: Path) -> None:
    ids = add_tasks(colony, 4)
    path = script(tmp_path, ids)
    done = launch(colony, tmp_path, f"scripted:{path}", "--verify", "no-such-runner -q")
    assert done.returncode == 2, done.stderr
    assert "`no-such-runner -q` was not found (exit 127)" in done.stderr and "fix:" in done.stderr
    assert done.stderr.count("was not found") == 1  # said once, by the launcher
    assert attempts(colony) == []  # no model call at all
    assert_nothing_counted(colony, ids)
    assert json.loads(colony.fault_path.read_text())["kind"] == "verify_not_runnable"

    again = launch(colony, tmp_path, f"scripted:{path}", "--until-empty", "--verify", "true")
    assert again.returncode == 0, again.stderr
    assert "FAULT left from an earlier run" in again.stderr
    assert sorted(landed_ids(colony.repo)) == ids


@pytest.fixture
def server() -> Iterator[FakeServer]:
    entries = [{"match": f"Task t{i}:", "replies": [{"text": "never reached"}]} for i in range(4)]
    with FakeServer(entries, api_key=KEY, models=["claude-test"]) as srv:
        yield srv


@pytest.mark.parametrize(("key", "model", "says"), [
    (WRONG, "claude-test", "HTTP 401"),
    (KEY, "claude-tset", "HTTP 404"),  # a typo in the model name
])
def test_a_refused_key_or_unknown_model_stops_the_colony(
        colony: Colony, tmp_path: Path, server: FakeServer, key: str, model: str, says: str) -> None:
    ids = add_tasks(colony, 4)
    done = launch(colony, tmp_path, f"anthropic/{model}", "--api-base", server.base_url,
                  env=provider_env(ANTHROPIC_API_KEY=key))
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "fix:" in done.stderr
    assert ("API key" if says == "HTTP 401" else "model name") in done.stderr
    assert len(server.requests) <= 2  # at most one call per agent, none retried
    assert_nothing_counted(colony, ids)
    fault = colony.fault_path.read_text()
    for shown in (fault, done.stderr, *(p.read_text() for p in colony.home.glob("agents/*/agent.log"))):
        assert WRONG not in shown and KEY not in shown


# -- an outage ----------------------------------------------------------------------------------------


def test_an_unreachable_endpoint_cools_the_colony_down_without_counting_attempts(
        colony: Colony, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    colony = set_config(colony, model_options={"retry": {"attempts": 2, "base_wait": 0.01, "outage_cooldown": 60}})
    ids = add_tasks(colony, 3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "--repo", str(colony.repo), "--model", "anthropic/claude-test",
         "--agents", "2", "--workspaces", str(tmp_path / "ws"), "--api-base", f"http://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=provider_env(ANTHROPIC_API_KEY=KEY))
    try:
        releases = lambda: [e for e in colony.events() if e["event"] == "release"]  # noqa: E731
        wait_for(lambda: releases() and (colony.home / "cooldown.json").exists(), 40, "an outage release")
        cooldown = json.loads((colony.home / "cooldown.json").read_text())
        cli("stop", "--repo", str(colony.repo), check=True)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert cooldown["outages"] >= 1 and cooldown["until"] > releases()[0]["ts"] + 30  # the whole colony holds
    assert "unreachable" in releases()[0]["note"] and releases()[0]["skip_count"] == 0
    assert len([e for e in colony.events() if e["event"] == "claim"]) <= 2  # nothing claimed while cooling
    assert_nothing_counted(colony, ids)


# -- task retry ---------------------------------------------------------------------------------------


def test_task_retry_reopens_failed_tasks_with_their_notes(colony: Colony) -> None:
    colony = set_config(colony, retry_backoff=0)  # each released task is claimed again at once
    for tid in ("a", "b", "c"):
        colony.add(Task(id=tid, title=tid))
        claim, _ = colony.claim("me") or pytest.fail("nothing to claim")
        colony.release(claim.task_id, "me", note=f"first try of {claim.task_id}", token=claim.token)
        claim, _ = colony.claim("me") or pytest.fail("nothing to claim")
        colony.fail(claim.task_id, "me", note=f"{claim.task_id} is impossible", token=claim.token)
    assert colony.claim("me") is None

    one = cli("task", "retry", "b", "--repo", str(colony.repo), check=True)
    assert one.stdout.strip() == "re-opened b"
    status, task = colony.get("b")
    assert (status, task.skip_count) == ("pending", 0)
    assert [n["kind"] for n in colony.notes("b")] == ["release", "fail", "retry"]  # notes kept
    got = colony.claim("me")  # a live agent's index learns it from the `retry` event
    assert got is not None and got[1].id == "b"

    rest = cli("task", "retry", "--failed", "--repo", str(colony.repo), check=True)
    assert rest.stdout.split() == ["re-opened", "a", "re-opened", "c"]
    assert {t.id for _, t in colony.listing("pending")} == {"a", "c"}
    assert [e["task"] for e in colony.events() if e["event"] == "retry"] == ["b", "a", "c"]

    again = cli("task", "retry", "a", "--repo", str(colony.repo))
    assert again.returncode == 2 and "'a' is not failed (it is pending)" in again.stderr
    both = cli("task", "retry", "--repo", str(colony.repo))
    assert both.returncode == 2 and "--failed" in both.stderr


# -- a full disk ---------------------------------------------------------------------------------------

def test_a_disk_short_of_space_holds_the_colony_says_why_and_counts_against_no_task(
        colony: Colony, tmp_path: Path) -> None:
    ids = add_tasks(colony, 2)
    held = set_config(colony, min_free_mb=10**12)  # a petabyte: no disk here has that much free
    agent = subprocess.Popen([sys.executable, "-m", "harness", "agent", "run", "--id", "a1", "--repo", str(held.repo),
                              "--model", f"scripted:{script(tmp_path, ids)}", "--workspaces", str(tmp_path / "ws")],
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "MB free" in str((held.leases.last_beat("a1") or {}).get("waiting")), what="the beat saying why")
        status = " ".join(cli("status", "--repo", str(held.repo), check=True).stdout.split())  # unwrapped
        assert "(min_free_mb: 1e+12): claiming nothing until there is more" in status, status
    finally:
        agent.terminate()
    _, log = agent.communicate(timeout=30)
    assert agent.returncode == 0, log
    assert log.count("MB free on the disk of") == 1, log  # said once, not at every look
    assert [e["event"] for e in held.store.events() if e.get("agent") == "a1"].count("disk_low") == 1
    assert attempts(held) == []
    assert_nothing_counted(held, ids)

    # Room again (here: the setting lowered): the colony goes back to work.
    freed = set_config(held, min_free_mb=0)
    done = launch(freed, tmp_path, f"scripted:{script(tmp_path, ids)}", "--until-empty")
    assert done.returncode == 0, done.stderr
    assert sorted(landed_ids(freed.repo)) == ids


def test_a_disk_that_fills_mid_attempt_counts_against_no_task(colony: Colony, tmp_path: Path) -> None:
    """The attempt's transcript meets a full disk (/dev/full: every write fails with ENOSPC): the
    task goes back uncounted and lands on the next attempt."""
    colony = set_config(colony, retry_backoff=1)
    ids = add_tasks(colony, 1)
    run = colony.store.run_dir("t0", "001")
    (run / "transcript.jsonl").symlink_to("/dev/full")
    done = agent_until_empty(colony, tmp_path, ids)
    assert done.returncode == 0, done.stderr
    assert "not counted against the task: the disk is full" in done.stderr, done.stderr
    assert "the disk was full during the last attempt: claiming nothing for 1 s" in done.stderr
    status, task = colony.get("t0")
    assert status == "done" and task.skip_count == 0 and task.not_before is None
    assert landed_ids(colony.repo) == ids


# -- an agent that crashes on every task ---------------------------------------------------------------

def test_an_agent_crashing_on_task_after_task_stops_the_colony_instead_of_failing_the_backlog(
        colony: Colony, tmp_path: Path) -> None:
    """Every attempt crashes the same way, whatever its task (here: the runs folder is a file, so no
    attempt can make its own): after three tasks in a row the colony stops with a FAULT, three
    tasks hold one counted attempt each, and none fails."""
    ids = add_tasks(colony, 6)
    runs = colony.home / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.write_text("not a folder\n")
    done = agent_until_empty(colony, tmp_path, ids)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("agent crashed: NotADirectoryError") == 3, done.stderr
    fault = faults.read(colony.home) or {}
    assert fault.get("kind") == "crash" and "on 3 different tasks in a row" in fault["message"], fault
    assert "NotADirectoryError" in fault["message"]
    assert not colony.listing("failed")
    assert sorted(t.skip_count for _, t in colony.listing("all")) == [0, 0, 0, 1, 1, 1]
