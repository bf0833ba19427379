"""Role mixes (the launcher's default mix, --roles) and `any` agents, which take each task's role."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import cli, landed_ids
from harness import roles, swarm
from harness.colony import Colony
from harness.errors import UsageError
from harness.tasks import Task
from test_agent import start_agent, write_script

LINTER = """---
name: linter
description: "Keeps the code tidy."
prefers:
  titles: ["\\\\blint\\\\b"]
---
You lint.
"""


@pytest.mark.parametrize("agents,mix", [
    (1, {"coder": 1}),
    (3, {"coder": 3}),
    (4, {"coder": 3, "merger": 1}),
    (8, {"coder": 6, "merger": 1, "tester": 1}),
    (12, {"coder": 9, "merger": 1, "tester": 1, "critic": 1}),
    (16, {"coder": 12, "merger": 2, "tester": 1, "critic": 1}),
])
def test_default_mix_by_agent_count(agents: int, mix: dict[str, int]) -> None:
    specs = swarm.plan(agents, None)
    assert Counter(s.role for s in specs) == mix
    assert specs[0].id == "coder-01" and [s.role for s in specs[:mix["coder"]]] == ["coder"] * mix["coder"]
    assert len({s.id for s in specs}) == agents


def test_default_mix_without_agents_is_four_with_a_merger() -> None:
    assert [s.id for s in swarm.plan(None, None)] == ["coder-01", "coder-02", "coder-03", "merger-01"]


def test_explicit_roles_keep_their_meaning() -> None:
    # The rest are coders, not the default mix: 16 agents asked as coder=14 get no tester or critic.
    assert Counter(s.role for s in swarm.plan(16, "merger=2")) == {"merger": 2, "coder": 14}
    assert [s.id for s in swarm.plan(None, "any=3")] == ["any-01", "any-02", "any-03"]
    assert Counter(s.role for s in swarm.plan(6, "any=4,merger=1")) == {"any": 4, "merger": 1, "coder": 1}


def test_for_task_resolves_hint_then_preference_then_coder(colony: Colony) -> None:
    home = colony.home
    (home / "roles" / "linter.md").parent.mkdir(exist_ok=True)
    (home / "roles" / "linter.md").write_text(LINTER)
    anyone = roles.agent_role(roles.ANY, home)
    assert anyone.name == "any" and anyone.when_idle is None
    assert roles.for_task(anyone, Task(id="a", title="x", role="tester"), home).name == "tester"
    assert roles.for_task(anyone, Task(id="b", title="Fix lint warnings"), home).name == "linter"
    assert roles.for_task(anyone, Task(id="c", title="x", kind="merge_conflict"), home).name == "merger"
    assert roles.for_task(anyone, Task(id="d", title="Add a feature"), home).name == "coder"
    coder = roles.agent_role("coder", home)
    assert roles.for_task(coder, Task(id="e", title="x", role="tester"), home) is coder  # a role agent keeps its own


def test_any_is_no_role_file(colony: Colony) -> None:
    with pytest.raises(UsageError, match="no role file"):
        roles.load_role("any", colony.home)
    (colony.home / "roles").mkdir(exist_ok=True)
    (colony.home / "roles" / "any.md").write_text("---\nname: any\n---\nx\n")
    with pytest.raises(UsageError, match=r"any\.md:1: 'any' is reserved"):
        roles.load_all(colony.home)


def system_prompt(colony: Colony, task: str) -> str:
    for line in (colony.home / "runs" / task / "001" / "transcript.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("kind") == "user" and "system" in event:
            return str(event["system"])
    raise AssertionError(f"no system prompt in {task}'s transcript")


def test_any_agent_renders_each_tasks_role_and_has_no_bonus(colony: Colony, tmp_path: Path) -> None:
    (colony.home / "roles").mkdir(exist_ok=True)
    (colony.home / "roles" / "linter.md").write_text(LINTER)
    model = write_script(tmp_path / "script.yaml", [{"match": ".", "actions": [{"finish": "nothing to do"}]}])
    # Claimed in priority order: a critic would take the review first (50 + role bonus 15 > 60).
    colony.add_many([Task(id="plain", title="Add a feature", priority=60),
                     Task(id="hinted", title="Cover the parser", role="tester", priority=55),
                     Task(id="lint", title="Fix lint warnings", priority=52),
                     Task(id="review", title="Look over the parser", kind="review", priority=50)])
    proc = start_agent(colony, "any-01", model, tmp_path, "--role", "any", "--until-empty")
    assert proc.wait(timeout=120) == 0, (tmp_path / "any-01.log").read_text()
    claims = [e["task"] for e in colony.events() if e["event"] == "claim"]
    assert claims == ["plain", "hinted", "lint", "review"]
    assert "agent any-01 (coder)" in system_prompt(colony, "plain")
    assert "agent any-01 (tester)" in system_prompt(colony, "hinted")
    assert "agent any-01 (linter)" in system_prompt(colony, "lint") and "You lint." in system_prompt(colony, "lint")
    assert "agent any-01 (critic)" in system_prompt(colony, "review")
    assert colony.last_beat("any-01")["role"] == "any"  # type: ignore[index]


def test_prompt_render_with_role_any(colony: Colony) -> None:
    colony.add(Task(id="hinted", title="Cover the parser", role="tester"))
    out = cli("prompt", "render", "--task", "hinted", "--role", "any", "--repo", str(colony.repo), check=True).stdout
    assert "(tester)" in out.splitlines()[1]


def test_launcher_runs_any_agents(colony: Colony, tmp_path: Path) -> None:
    model = write_script(tmp_path / "script.yaml", [{"match": ".", "actions": [
        {"write": {"path": "t1.txt", "content": "done\n"}}, {"finish": "wrote it"}]}])
    colony.add(Task(id="t1", title="write t1", role="tester"))
    proc = cli("run", "--roles", "any=2", "--repo", str(colony.repo), "--model", model, "--until-empty",
               "--workspaces", str(tmp_path / "ws"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    launch = next(e for e in colony.events() if e["event"] == "launch")
    assert {a: v["role"] for a, v in launch["agents"].items()} == {"any-01": "any", "any-02": "any"}
    assert colony.get("t1")[0] == "done" and landed_ids(colony.repo) == ["t1"]
