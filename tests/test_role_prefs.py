"""A role's front matter at work: `prefers:` orders picking (never excluding anything), and
`model:`, `tools:` and `max_steps:` shape the attempts of its tasks; a stuck model releases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import cli, file_on_main, landed_ids, set_config, wait_for
from harness import roles
from harness.colony import Colony
from harness.errors import UsageError
from harness.tasks import Task
from test_agent import start_agent, write_script


def claim_order(colony: Colony, agent: str, role: str | None) -> list[str]:
    order = []
    while (got := colony.claim(agent, role)) is not None:
        claim, task = got
        order.append(task.id)
        colony.done(task.id, agent, claim.token)
    return order


def test_a_role_goes_first_for_what_it_prefers_by_kind_title_or_path(colony: Colony) -> None:
    colony.add_many([Task(id="feature", title="Add a feature", priority=55),
                     Task(id="cover", title="Add tests for the parser", priority=50),
                     Task(id="by-path", title="Cover the lexer", outputs=["tests/test_lexer.py"], priority=45),
                     Task(id="slow", title="The parser is slow", priority=44)])
    # A tester: both of its tasks first (50 + 15, 45 + 15 over 55), then the rest by priority.
    assert claim_order(colony, "t1", "tester") == ["cover", "by-path", "feature", "slow"]


def test_the_same_pool_in_another_role_order(colony: Colony) -> None:
    colony.add_many([Task(id="feature", title="Add a feature", priority=55),
                     Task(id="cover", title="Add tests for the parser", priority=50),
                     Task(id="slow", title="The parser is slow", priority=44)])
    assert claim_order(colony, "o1", "optimizer") == ["slow", "feature", "cover"]


def test_preferences_never_starve_other_work(colony: Colony) -> None:
    hours_ago = time.time() - 12 * 3600
    colony.add_many([Task(id=f"test-{i}", title=f"Add tests for module {i}", priority=50) for i in range(5)]
                    + [Task(id="urgent", title="Fix the crash on start", priority=70),
                       Task(id="old", title="Rename the config key", priority=30, created_at=hours_ago),
                       Task(id="hinted", title="Add tests for the docs build", role="documenter", priority=60),
                       Task(id="plain", title="Tidy the imports", priority=40)])
    order = claim_order(colony, "t1", "tester")
    # Higher priority beats the bonus (70 over 50 + 15); a title the tester likes, hinted for another
    # role, earns it no bonus (60); aging lifts a task left waiting (30 + 2/h x 12 h = 54) over a
    # fresh one of higher priority (40); and a tester alone still empties the pool.
    assert order[0] == "urgent"
    assert set(order[1:6]) == {f"test-{i}" for i in range(5)}
    assert order[6:] == ["hinted", "old", "plain"]
    assert sorted(order) == sorted(t.id for _, t in colony.listing("done"))


def test_task_list_shows_the_priority_a_role_sees(colony: Colony) -> None:
    colony.add_many([Task(id="cover", title="Add tests for the parser", priority=50),
                     Task(id="feature", title="Add a feature", priority=55)])
    repo = ["--repo", str(colony.repo), "--json"]
    seen = {r["id"]: r["effective_priority"] for r in json.loads(cli("task", "list", "--role", "tester", *repo,
                                                                     check=True).stdout)}
    assert seen["cover"] == pytest.approx(65, abs=0.5) and seen["feature"] == pytest.approx(55, abs=0.5)


def test_an_any_agent_takes_the_role_a_title_names_over_a_kind_alone(colony: Colony) -> None:
    anyone = roles.agent_role(roles.ANY, colony.home)
    # The coder prefers every plain task (kind `task`); a title match is more specific.
    assert roles.for_task(anyone, Task(id="a", title="Add tests for the parser"), colony.home).name == "tester"
    assert roles.for_task(anyone, Task(id="b", title="Make startup faster"), colony.home).name == "optimizer"
    assert roles.for_task(anyone, Task(id="c", title="Add a feature"), colony.home).name == "coder"
    assert roles.for_task(anyone, Task(id="d", title="x", kind="idea"), colony.home).name == "critic"


TESTER = """---
name: tester
description: "A tester on its own small model, with a short leash."
prefers:
  titles: ["\\\\btests?\\\\b"]
model: {model}
tools: [bash]
max_steps: 3
---
You test, as {{{{ agent }}}} on branch {{{{ branch }}}}.
"""


def test_a_roles_model_tools_and_max_steps_shape_its_attempts(colony: Colony, tmp_path: Path) -> None:
    # The agent's own model would write a file with the edit tool; the tester's model uses bash.
    colony_model = write_script(tmp_path / "colony.yaml", [{"match": ".", "actions": [
        {"write": {"path": "by-colony-model.txt", "content": "x\n"}}, {"finish": "done"}]}])
    role_model = write_script(tmp_path / "tester.yaml", [
        {"match": "steps", "actions": [{"bash": "true"}, {"bash": "true"}, {"bash": "true"}, {"bash": "true"},
                                       {"finish": "never reached"}]},
        {"match": ".", "actions": [{"write": {"path": "edited.txt", "content": "x\n"}},
                                   {"bash": "echo tested > tested.txt"}, {"finish": "tested"}]}])
    (colony.home / "roles").mkdir()
    (colony.home / "roles" / "tester.md").write_text(TESTER.format(model=role_model))
    colony.add_many([Task(id="cover", title="Add tests for the parser", priority=60),
                     Task(id="steps", title="Tests that take many steps", priority=50)])
    colony = set_config(colony, retry_backoff=0, max_attempts=1)
    proc = start_agent(colony, "tester-01", colony_model, tmp_path, "--role", "tester", "--until-empty")
    assert proc.wait(timeout=120) == 0, (tmp_path / "tester-01.log").read_text()

    assert landed_ids(colony.repo) == ["cover"]
    assert file_on_main(colony.repo, "tested.txt") == "tested\n"
    assert file_on_main(colony.repo, "edited.txt") == ""  # the edit tool was refused: nothing of it landed
    transcript = [json.loads(line) for line in
                  (colony.home / "runs" / "cover" / "001" / "transcript.jsonl").read_text().splitlines()]
    request = next(e for e in transcript if e["kind"] == "request")
    assert request["model"] == role_model
    refused = next(e for e in transcript if e["kind"] == "tool_result")
    assert refused["is_error"] and "not one of your tools here (the tester role's `tools:`)" in refused["content"]
    system = next(e for e in transcript if e.get("kind") == "user" and "system" in e)["system"]
    assert "You test, as tester-01 on branch main." in system
    ledger = [json.loads(line) for line in (colony.home / "ledger" / "tester-01.jsonl").read_text().splitlines()]
    assert {r["model"] for r in ledger} == {role_model}
    # max_steps 3 (over the default 100): the long task stopped at its third step, its one attempt.
    state, steps = colony.get("steps")
    assert state == "failed"
    stop = [json.loads(line) for line in
            (colony.home / "runs" / "steps" / "001" / "transcript.jsonl").read_text().splitlines()][-1]
    assert stop["kind"] == "stop" and stop["stopped_by"] == "steps" and stop["steps"] == 3


def test_a_stuck_model_releases_the_task_with_its_summary_and_lands_nothing(colony: Colony, tmp_path: Path) -> None:
    model = write_script(tmp_path / "script.yaml", [{"match": ".", "actions": [
        {"write": {"path": "half.txt", "content": "a guess\n"}},
        {"stuck": "tried the parser's lookahead; the grammar is ambiguous at `else`"}]}])
    colony.add(Task(id="hard", title="Fix the dangling else"))
    proc = start_agent(colony, "coder-01", model, tmp_path, "--until-empty")
    # The back-off (30 s) keeps it pending: stop the agent once it has released it.
    wait_for(lambda: any(e["event"] == "release" for e in colony.events()), what="a release")
    colony.request_stop()
    assert proc.wait(timeout=60) == 0, (tmp_path / "coder-01.log").read_text()
    state, task = colony.get("hard")
    assert state == "pending" and task.skip_count == 1 and task.not_before is not None
    assert any("the grammar is ambiguous" in n["text"] for n in colony.notes("hard"))
    assert landed_ids(colony.repo) == [] and file_on_main(colony.repo, "half.txt") == ""


@pytest.mark.parametrize("front,problem", [
    ("prefers:\n  kinds: [tests]\n", r"tester\.md:3: prefers\.kinds: 'tests' is no task kind"),
    ("model: haiku\n", r"tester\.md:3: model: unknown model spec 'haiku'"),
    ("tools: [bash, browse]\n", r"tester\.md:3: tools: .*unknown: 'browse'"),
])
def test_bad_front_matter_names_file_and_line(colony: Colony, front: str, problem: str) -> None:
    (colony.home / "roles").mkdir()
    (colony.home / "roles" / "tester.md").write_text(f"---\nname: tester\n{front}---\nYou test.\n")
    with pytest.raises(UsageError, match=problem):
        roles.load_role("tester", colony.home)


def test_a_broken_role_body_is_refused_at_launch_with_its_line(colony: Colony, tmp_path: Path) -> None:
    (colony.home / "roles").mkdir()
    (colony.home / "roles" / "tester.md").write_text("---\nname: tester\n---\nYou test.\n\nAs {{ agnet }}.\n")
    model = write_script(tmp_path / "script.yaml", [{"match": ".", "actions": [{"finish": "x"}]}])
    proc = cli("run", "--agents", "1", "--repo", str(colony.repo), "--model", model, "--until-empty")
    assert proc.returncode == 2
    assert f"{colony.home / 'roles' / 'tester.md'}:6: 'agnet' is undefined in the role's prompt" in proc.stderr


def test_a_usd_budget_with_a_roles_unpriced_model_is_refused_at_launch(colony: Colony, tmp_path: Path) -> None:
    (colony.home / "roles").mkdir()
    (colony.home / "roles" / "merger.md").write_text(
        "---\nname: merger\nmodel: openai/some-local-model\n---\nYou merge.\n")
    model = write_script(tmp_path / "script.yaml", [{"match": ".", "actions": [{"finish": "x"}]}])
    proc = cli("run", "--agents", "4", "--repo", str(colony.repo), "--model", model, "--budget-usd", "5",
               "--until-empty")
    assert proc.returncode == 2 and "the spend of model openai/some-local-model cannot be counted" in proc.stderr
    # Without a merger in the mix its model is not this run's concern.
    ok = cli("run", "--agents", "1", "--repo", str(colony.repo), "--model", model, "--budget-usd", "5",
             "--until-empty", "--workspaces", str(tmp_path / "ws"), timeout=120)
    assert ok.returncode == 0, ok.stderr
