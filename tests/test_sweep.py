"""Idle sweeps: roles with `when_idle` that find nothing ready look for work and file it, one sweep
of a role at a time, rate-limited, never on a red main, their repeats refused. Real agents (in
this process, or as processes and under the launcher) with the scripted model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import cli, set_config, wait_for
from harness import briefing, filing, sweep
from harness.agent import Agent, AgentOptions
from harness.colony import Colony
from harness.errors import FilingRefused, UsageError
from harness.models.scripted import ScriptedModel
from harness.tasks import Task
from harness.tools import Toolbox
from test_agent import start_agent, write_script

CRITIC = """---
name: critic
description: "Reviews, and when idle looks for duplicated helpers."
prefers:
  kinds: [review]
when_idle: |
  Look for helpers written twice.
---
You review.
"""

MERGE = {"title": "Merge the two slugify helpers", "outputs": ["src/util.py"], "body": "util.py:3 and :9"}


def with_critic(colony: Colony, **config: object) -> Colony:
    (colony.home / "roles").mkdir(exist_ok=True)
    (colony.home / "roles" / "critic.md").write_text(CRITIC)
    return set_config(colony, **config) if config else colony


def agent(colony: Colony, tmp_path: Path, script: list[dict], name: str = "critic-01", role: str = "critic",
          **opts: object) -> Agent:
    path = tmp_path / "script.yaml"
    path.write_text(yaml.safe_dump(script, sort_keys=False))
    return Agent(colony, AgentOptions(agent=name, role=role, workspaces=tmp_path / "ws", **opts),  # type: ignore[arg-type]
                 model=ScriptedModel(path))


def events(colony: Colony, kind: str) -> list[dict]:
    return [e for e in colony.events() if e["event"] == kind]


def results(colony: Colony, sid: str) -> list[dict]:
    lines = (colony.home / "runs" / sid / "001" / "transcript.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("kind") == "tool_result"]


# -- one sweep, in this process ---------------------------------------------------------------------
def test_sweep_files_with_discovered_by_refuses_repeats_and_keeps_nothing(colony: Colony, tmp_path: Path) -> None:
    colony = with_critic(colony)
    colony.add(Task(id="parser-tests", title="Add tests for the parser"))
    colony.add(Task(id="old-work", title="Speed up the tokenizer"))
    a = agent(colony, tmp_path, [{"match": "^sweep-critic-", "actions": [
        {"create_task": {"title": "Add parser tests"}},  # repeats the open parser-tests
        {"create_task": MERGE},
        {"create_task": {"title": "Slugify helpers exist twice", "outputs": ["src/util.py"]}},  # same outputs
        {"write": {"path": "junk.txt", "content": "x"}},  # editing is no sweep tool
        {"bash": "echo scratch > scratch.txt && grep -c . scratch.txt"},
        {"finish": "filed one"}]}])
    assert sweep.maybe(a) is True
    new = [t for _, t in colony.listing("pending") if t.id not in ("parser-tests", "old-work")]
    assert [(t.title, t.discovered_by, t.created_by, t.outputs) for t in new] == [
        (MERGE["title"], "critic-01", "critic-01", ["src/util.py"])]
    [start], [end] = events(colony, "sweep_start"), events(colony, "sweep_end")
    assert start["sweep"] == end["sweep"] == "sweep-critic-1" and start["role"] == "critic"
    assert end["filed"] == [new[0].id] and [r.split(":")[0] for r in end["refused"]] == ["duplicate", "duplicate"]
    told = results(colony, "sweep-critic-1")
    assert told[0]["is_error"] and "repeats task parser-tests" in told[0]["content"]
    assert told[2]["is_error"] and f"repeats task {new[0].id}" in told[2]["content"] and "same outputs" in told[2]["content"]
    assert told[3]["is_error"] and "an idle sweep inspects and files tasks but changes nothing" in told[3]["content"]
    assert not told[4]["is_error"] and "1" in told[4]["content"]
    worktree = tmp_path / "ws" / "critic-01"
    assert not (worktree / "scratch.txt").exists() and not (worktree / "junk.txt").exists()
    ledger = [json.loads(line) for line in (colony.home / "ledger" / "critic-01.jsonl").read_text().splitlines()]
    assert len(ledger) == 6 and {r["task"] for r in ledger} == {"sweep-critic-1"}
    shown = cli("task", "show", new[0].id, "--repo", str(colony.repo), check=True).stdout
    assert "discovered_by: critic-01" in shown


def test_sweep_offers_only_inspecting_and_filing_tools(colony: Colony, tmp_path: Path) -> None:
    colony = with_critic(colony)
    box = Toolbox(tmp_path, None, sweep.SweepSink(colony, "critic-01", tmp_path, lambda: False),
                  allowed=sweep.TOOLS, why=sweep.WHY)
    assert [s.name for s in box.specs] == ["bash", "create_task", "finish"]


def test_rate_limit_and_one_sweep_of_a_role_at_a_time(colony: Colony, tmp_path: Path) -> None:
    colony = with_critic(colony, sweep_interval=2)
    script = [{"match": "^sweep-critic-", "actions": [{"create_task": MERGE}, {"finish": "done"}]}]
    a, b = agent(colony, tmp_path, script), agent(colony, tmp_path, script, name="critic-02")
    assert sweep.maybe(a) is True
    assert sweep.maybe(a) is False and sweep.maybe(b) is False  # within sweep_interval, for any agent of the role
    time.sleep(2.1)
    held = colony.leases.take_token(sweep.token("critic"), "critic-02", os.getpid())  # critic-02 sweeping, alive
    assert held is not None and sweep.running(colony)
    assert sweep.maybe(a) is False
    colony.leases.drop_token(held)
    assert not sweep.running(colony)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = colony.leases.take_token(sweep.token("critic"), "critic-03", int(dead.stdout))  # its holder died holding it
    assert stale is not None and not sweep.running(colony)
    assert sweep.maybe(a) is True  # the dead sweeper's token is taken over
    assert [e["sweep"] for e in events(colony, "sweep_start")] == ["sweep-critic-1", "sweep-critic-2"]
    second = events(colony, "sweep_end")[1]
    assert second["filed"] == [] and second["refused"][0].startswith("duplicate")  # the pool has it once
    assert sum(1 for _, t in colony.listing("all") if t.title == MERGE["title"]) == 1


def test_no_sweep_on_a_red_or_unchecked_main(colony: Colony, tmp_path: Path) -> None:
    colony = with_critic(colony, verify="test -f ok.txt")
    a = agent(colony, tmp_path, [{"match": "^sweep-", "actions": [{"finish": "looked"}]}])
    assert sweep.maybe(a) is False  # main not checked yet: not known green
    tree = a.gate.tree()
    a.gate.record(tree, False, "critic-01", code=1)
    assert sweep.maybe(a) is False
    assert events(colony, "sweep_start") == []
    a.gate.record(tree, True, "critic-01")
    assert sweep.maybe(a) is True


def test_no_sweep_when_stopping_over_budget_disabled_or_without_when_idle(colony: Colony, tmp_path: Path) -> None:
    colony = with_critic(colony, sweep_interval=0.01)
    script = [{"match": "^sweep-", "actions": [{"finish": "looked"}]}]
    assert sweep.maybe(agent(colony, tmp_path, script, name="coder-01", role="coder")) is False  # no when_idle
    colony.request_stop()
    assert sweep.maybe(agent(colony, tmp_path, script)) is False
    colony.stop_path.unlink()
    assert sweep.maybe(agent(colony, tmp_path, script, budget_tokens=0)) is False
    assert sweep.maybe(agent(colony, tmp_path, script, name="any-01", role="any")) is False
    once = agent(colony, tmp_path, script, until_empty=True)
    assert sweep.maybe(once) is True
    time.sleep(0.05)
    assert sweep.maybe(once) is False  # --until-empty: at most one sweep per agent
    off = set_config(colony, sweep_max_tasks=0)
    assert sweep.maybe(agent(off, tmp_path, script)) is False
    assert len(events(colony, "sweep_start")) == 1


def test_repeats_of_recently_done_tasks_are_refused_old_ones_not(colony: Colony) -> None:
    colony.add(Task(id="merged", title=MERGE["title"]))
    claim, _ = colony.claim("a1")  # type: ignore[misc]
    colony.done("merged", "a1", claim.token)
    open_, recent = sweep.known_tasks(colony, time.time())
    assert open_ == [] and [t.id for _, t in recent] == ["merged"]
    with pytest.raises(FilingRefused, match=r"repeats task merged \(done"):
        filing.check_duplicate({"title": "Merge two slugify helpers"}, recent)
    later = sweep.known_tasks(colony, time.time() + sweep.RECENT_S + 60)[1]
    assert later == []  # a day later it is history: the finding may be real again
    filing.check_duplicate({"title": "Document the slugify helper"}, recent)  # not alike: accepted


def test_a_broken_idle_template_is_caught_at_launch(colony: Colony) -> None:
    (colony.home / "prompts").mkdir(exist_ok=True)
    (colony.home / "prompts" / "idle.j2").write_text("Sweep {{ sweep }}\n{{ open_taks }}\n")
    with pytest.raises(UsageError, match=r"idle\.j2:2: 'open_taks' is undefined"):
        briefing.check(colony)


# -- several critics as processes --------------------------------------------------------------------
def test_idle_critics_sweep_one_at_a_time_and_file_once(colony: Colony, tmp_path: Path) -> None:
    colony = with_critic(colony, sweep_interval=1)
    model = write_script(tmp_path / "script.yaml", [
        {"match": "^sweep-critic-", "actions": [{"create_task": MERGE}, {"sleep": 1.5}, {"finish": "looked"}]},
        {"match": "slugify", "actions": [{"finish": "nothing to change"}]}])
    procs = [start_agent(colony, f"critic-0{i}", model, tmp_path, "--role", "critic") for i in (1, 2, 3)]
    try:
        wait_for(lambda: len(events(colony, "sweep_end")) >= 3, timeout=90, what="three sweeps")
    finally:
        colony.request_stop()
        codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0, 0, 0]
    starts, ends = events(colony, "sweep_start"), events(colony, "sweep_end")
    spans = sorted(zip((s["ts"] for s in starts), (e["ts"] for e in ends)))
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # never two at once
    assert all(b["ts"] - a["ts"] >= 1 for a, b in zip(starts, starts[1:]))  # sweep_interval apart
    assert [e["sweep"] for e in starts] == [f"sweep-critic-{n}" for n in range(1, len(starts) + 1)]
    filed = [t for _, t in colony.listing("all") if t.title == MERGE["title"]]
    assert len(filed) == 1 and filed[0].discovered_by in ("critic-01", "critic-02", "critic-03")
    assert sum(len(e["filed"]) for e in ends) == 1 and all(e["refused"] for e in ends if not e["filed"])


def test_until_empty_critics_under_the_launcher_sweep_once_and_end(colony: Colony, tmp_path: Path) -> None:
    colony = with_critic(colony)  # sweep_interval 1800: one sweep in this run
    model = write_script(tmp_path / "script.yaml", [
        {"match": "^sweep-critic-", "actions": [{"sleep": 1}, {"create_task": MERGE},
                                                {"create_task": {"title": "Name the magic numbers in app.py"}},
                                                {"finish": "filed two"}]},
        {"match": ".", "actions": [{"finish": "looked, nothing to change"}]}])
    proc = cli("run", "--roles", "critic=3", "--until-empty", "--repo", str(colony.repo), "--model", model,
               "--workspaces", str(tmp_path / "ws"), timeout=240)
    assert proc.returncode == 0, proc.stderr
    [start] = events(colony, "sweep_start")
    [end] = events(colony, "sweep_end")
    assert len(end["filed"]) == 2 and end["agent"] == start["agent"]
    found = colony.listing("all")
    assert sorted(t.title for _, t in found) == sorted([MERGE["title"], "Name the magic numbers in app.py"])
    assert all(st == "done" and t.discovered_by == start["agent"] for st, t in found)
    log = (colony.home / "agents" / start["agent"] / "agent.log").read_text()
    assert "sweep sweep-critic-1 ended (finished): filed 2 task(s)" in log
    assert "tasks created        2 (2 discovered by agents" in proc.stderr  # the launcher's summary counts them


def test_prompt_idle_shows_what_the_next_sweep_sends(colony: Colony) -> None:
    colony = with_critic(colony)
    colony.add(Task(id="parser-tests", title="Add tests for the parser"))
    out = cli("prompt", "idle", "--role", "critic", "--repo", str(colony.repo), check=True).stdout
    assert "agent critic-01 (critic)" in out and "Idle sweep sweep-critic-1:" in out
    assert "Look for helpers written twice." in out and "- parser-tests: Add tests for the parser" in out
    assert "At most 5 tasks" in out
