"""Issue 14, item 8: what the model may file.

create_task (through the agent's real Sink into a real colony) and an agent CLI's `stigmergy task
add` (a real subprocess with STIGMERGY_AGENT set) refuse junk roles, kinds, titles and paths with a
tool error naming the field and what is accepted, leave one note per attempt and reason on the
task at hand, file nothing once a stop has begun, and still cap a flood of valid filings.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import cli, landed_ids, set_config
from harness import deadline
from harness.agent import Sink
from harness.colony import Colony
from harness.models.base import ToolCall
from harness.tasks import Task
from harness.tools import Toolbox

PROSE = "function that will create a task with the parsed arguments"


def at_work(colony: Colony, tmp: Path, stopping: bool = False) -> tuple[Toolbox, Path]:
    """Agent a1 holds task `work`; its toolbox files through the real Sink from worktree `wt`."""
    colony.add(Task(id="work", title="the task at hand"))
    got = colony.claim("a1")
    assert got is not None
    wt = tmp / "wt"
    wt.mkdir()
    sink = Sink(colony, "a1", got[1], wt, stopping=lambda: stopping)
    return Toolbox(wt, None, sink), wt


def create(box: Toolbox, **fields: Any) -> tuple[bool, str]:
    result = box.run(ToolCall("c", "create_task", fields))
    return result.is_error, result.content


def filed(colony: Colony) -> list[Task]:
    return [t for _, t in colony.listing("all") if t.id != "work"]


def refusal_notes(colony: Colony) -> list[str]:
    return [n["text"] for n in colony.notes("work") if n["kind"] == "filing_refused"]


@pytest.mark.parametrize(("fields", "named", "accepted"), [
    ({"role": PROSE}, "field 'role'", "use one of coder, critic"),
    ({"kind": "bug"}, "field 'kind'", "use one of task, merge_conflict"),
    ({"outputs": [PROSE]}, "field 'outputs'", "spaces, and no such path"),
    ({"outputs": ["/etc/passwd"]}, "field 'outputs'", "(absolute)"),
    ({"inputs": ["src/../../other/secret.txt"]}, "field 'inputs'", "a '..' component"),
    ({"inputs": ["src/a\x1b[31m.py"]}, "field 'inputs'", "control characters"),
    ({"outputs": ["d/" + "x" * 199]}, "field 'outputs'", "201 characters"),
    ({"outputs": [f"f{i}.py" for i in range(51)]}, "field 'outputs'", "at most 50"),
    ({"title": " "}, "field 'title'", "1-200 characters"),
    ({"title": "t" * 201}, "field 'title'", "1-200 characters"),
])
def test_junk_is_refused_with_the_field_and_what_is_accepted_and_noted_once(
        colony: Colony, tmp_path: Path, fields: dict[str, Any], named: str, accepted: str) -> None:
    box, _ = at_work(colony, tmp_path)
    call = {"title": "A follow-up", **fields}
    for _ in range(3):  # the model retries the same junk: still one note
        error, said = create(box, **call)
        assert error and named in said and accepted in said, said
    assert filed(colony) == []
    notes = refusal_notes(colony)
    assert len(notes) == 1 and named in notes[0] and notes[0].startswith("task not filed:")


def test_valid_filings_pass_with_roles_of_the_colony_and_real_paths(colony: Colony, tmp_path: Path) -> None:
    (colony.home / "roles").mkdir(exist_ok=True)
    (colony.home / "roles" / "auditor.md").write_text("---\nname: auditor\n---\nAudit things.\n")
    box, wt = at_work(colony, tmp_path)
    (wt / "my notes.txt").write_text("a path with a space, and it exists\n")
    error, said = create(box, title="Test the parser", role="tester", kind="review",
                         inputs=["src/app.py", "my notes.txt"], outputs=["tests/*.py", "docs/"])
    assert not error, said
    error, said = create(box, title="Audit the parser", role="auditor")  # the colony's own role
    assert not error, said
    tasks = {t.title: t for t in filed(colony)}
    review = tasks["Test the parser"]
    assert (review.role, review.kind, review.inputs, review.outputs) == (
        "tester", "review", ["src/app.py", "my notes.txt"], ["tests/*.py", "docs/"])
    assert review.created_by == "a1" and review.discovered_from == "work"
    assert tasks["Audit the parser"].role == "auditor"
    assert refusal_notes(colony) == []


def test_nothing_is_filed_once_the_stop_has_begun(colony: Colony, tmp_path: Path) -> None:
    box, _ = at_work(colony, tmp_path, stopping=True)
    error, said = create(box, title="A fine task")
    assert error and "the colony is stopping" in said and "add_note" in said
    assert filed(colony) == [] and len(refusal_notes(colony)) == 1


def test_a_flood_is_capped_and_junk_does_not_count_as_filing(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, max_new_tasks_per_attempt=3)
    box, _ = at_work(colony, tmp_path)
    for i in range(5):
        assert create(box, title=f"junk {i}", role=PROSE)[0]
    results = [create(box, title=f"real {i}") for i in range(6)]
    assert [error for error, _ in results] == [False] * 3 + [True] * 3  # all three valid ones filed
    assert "max_new_tasks_per_attempt: 3" in results[-1][1]
    assert sorted(t.title for t in filed(colony)) == ["real 0", "real 1", "real 2"]
    assert [n["kind"] for n in colony.notes("work")] == ["filing_refused", "filing_capped"]


# -- the whole agent: a stop laid while the model is at work --------------------------------------------

def test_an_agent_files_nothing_after_stop_but_finishes_its_task(colony: Colony, tmp_path: Path) -> None:
    colony.add(Task(id="late", title="a task during which the stop comes"))
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump([{"match": "^late$", "actions": [
        {"bash": f"touch {colony.stop_path}"},  # a person runs `stigmergy stop` meanwhile
        {"create_task": {"title": "A follow-up", "outputs": ["docs/"]}},
        {"write": {"path": "late.txt", "content": "done\n"}}, {"finish": "ok"}]}]))
    proc = subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--id", "a1", "--repo", str(colony.repo),
                           "--workspaces", str(tmp_path / "ws"), "--model", f"scripted:{script}", "--sandbox", "none"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [t.id for _, t in colony.listing("all")] == ["late"]  # the follow-up was not filed
    assert landed_ids(colony.repo) == ["late"]  # a plain STOP lets the task at hand finish
    transcript = next((colony.home / "runs" / "late").glob("*/transcript.jsonl")).read_text()
    assert "the colony is stopping" in transcript
    assert [n["kind"] for n in colony.notes("late")] == ["filing_refused"]


# -- `stigmergy task add` ------------------------------------------------------------------------------

def task_add(colony: Colony, *args: str, agent: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"STIGMERGY_AGENT": "a1", "STIGMERGY_TASK": "work"} if agent else {}
    return cli("task", "add", *args, "--repo", str(colony.repo), cwd=colony.repo, env=env, timeout=60)


def test_an_agent_cli_s_task_add_gets_the_same_checks(colony: Colony) -> None:
    colony.add(Task(id="work", title="the task at hand"))
    assert colony.claim("a1") is not None
    for args, named in ((("x", "--output", PROSE), "field 'outputs'"), (("x", "--role", PROSE), "field 'role'"),
                        (("x", "--input", "/etc/passwd"), "field 'inputs'")):
        proc = task_add(colony, *args)
        assert proc.returncode == 2 and named in proc.stderr, proc.stderr
        assert "accepted: paths relative" in proc.stderr or "use one of coder" in proc.stderr
    (colony.repo / "my notes.txt").write_text("exists\n")
    ok = task_add(colony, "A real follow-up", "--output", "my notes.txt", "--role", "tester")
    assert ok.returncode == 0, ok.stderr
    assert [(t.title, t.created_by) for t in filed(colony)] == [("A real follow-up", "a1")]
    notes = [n["text"] for n in colony.notes("work") if n["kind"] == "filing_refused"]
    assert len(notes) == 3 and all(sum(f in n for n in notes) == 1
                                   for f in ("field 'inputs'", "field 'outputs'", "field 'role'"))

    deadline.write(colony.home, time.time() - 1, 0)  # --max-hours passed: the stop has begun
    late = task_add(colony, "After the deadline")
    assert late.returncode == 2 and "the colony is stopping" in late.stderr
    assert len(filed(colony)) == 1


def test_a_person_s_task_add_keeps_its_rules_but_names_only_known_roles(colony: Colony) -> None:
    proc = task_add(colony, "x", "--role", "any", agent=False)
    assert proc.returncode == 2 and "'any', not a role of this colony: use one of coder, critic, deduplicator, " \
        "documenter, merger, optimizer, tester" in proc.stderr, proc.stderr
    ok = task_add(colony, "A person's task", "--output", "the parser and its docs", "--role", "merger", agent=False)
    assert ok.returncode == 0, ok.stderr  # prose in a path is a person's business
    task = colony.get(ok.stdout.strip())[1]
    assert task.outputs == ["the parser and its docs"] and task.created_by == "human"
