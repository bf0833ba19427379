"""What a new user meets at the door: the CLI refuses what would go wrong later, and ends quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import cli
from harness import cli as harness_cli
from harness import tasks
from harness.colony import Colony
from harness.tasks import Task


def events(colony: Colony, kind: str) -> list[dict[str, object]]:
    return [e for e in colony.events() if e.get("event") == kind]


def pending_files(colony: Colony) -> list[str]:
    return sorted(p.name for p in colony.store.task_dir("pending").iterdir())


# -- 1. nothing is filed that a read would quarantine ---------------------------------------------
def test_task_add_refuses_a_body_over_the_size_limit(colony: Colony, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text("y" * tasks.MAX_TASK_BYTES)  # the body alone fits; the file with id and title does not
    proc = cli("task", "add", "too big", "--id", "big", "--body-file", str(body), "--repo", str(colony.repo))
    assert proc.returncode == 2, proc.stderr
    assert "'big' would be quarantined" in proc.stderr and str(tasks.MAX_TASK_BYTES) in proc.stderr
    assert "inputs" in proc.stderr  # and what to do instead
    assert proc.stdout == ""  # no id printed for a task that would vanish
    assert pending_files(colony) == [] and not any(colony.store.task_dir("quarantine").iterdir())
    assert not events(colony, "add")
    # Just under the limit once written is filed, and reads back.
    body.write_text("y" * (tasks.MAX_TASK_BYTES - 200))
    proc = cli("task", "add", "fits", "--id", "fits", "--body-file", str(body), "--repo", str(colony.repo))
    assert (proc.returncode, proc.stdout) == (0, "fits\n"), proc.stderr
    assert [t.id for _, t in Colony.open(colony.repo).listing()] == ["fits"]


def test_task_add_refuses_a_body_file_that_is_not_text(colony: Colony, tmp_path: Path) -> None:
    (tmp_path / "body.bin").write_bytes(b"\xff\xfe\x00binary")
    proc = cli("task", "add", "t", "--body-file", str(tmp_path / "body.bin"), "--repo", str(colony.repo))
    assert proc.returncode == 2 and "not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr


def test_task_import_refuses_an_oversized_task_and_files_none(colony: Colony, tmp_path: Path) -> None:
    items = [{"id": "small", "title": "small"}, {"id": "huge", "title": "huge", "body": "z" * tasks.MAX_TASK_BYTES}]
    (tmp_path / "backlog.yaml").write_text(json.dumps(items))  # JSON is YAML
    proc = cli("task", "import", str(tmp_path / "backlog.yaml"), "--repo", str(colony.repo))
    assert proc.returncode == 2 and "'huge' would be quarantined" in proc.stderr, proc.stderr
    assert pending_files(colony) == []  # all or nothing: `small` is not filed either


def test_serialise_refuses_exactly_what_load_refuses(tmp_path: Path) -> None:
    ok = Task(id="ok", title="fine", body="b" * 1000)
    (tmp_path / "ok.yaml").write_bytes(tasks.serialise(ok))
    assert tasks.load(tmp_path / "ok.yaml") == ok
    big = Task(id="big", title="t", body="b" * tasks.MAX_TASK_BYTES)
    with pytest.raises(tasks.InvalidTask, match="too large"):
        tasks.serialise(big)
    (tmp_path / "big.yaml").write_text(big.to_yaml())  # what add used to write: every read quarantines it
    with pytest.raises(tasks.InvalidTask, match="too large"):
        tasks.load(tmp_path / "big.yaml")
    with pytest.raises(tasks.InvalidTask, match="not valid UTF-8"):
        tasks.serialise(Task(id="bad", title="a \udcff surrogate"))  # an argv byte that was not UTF-8


# -- 2. an empty markdown box ---------------------------------------------------------------------
def test_an_empty_checklist_item_is_skipped_with_its_line_not_merged_into_the_next(colony: Colony,
                                                                                 tmp_path: Path) -> None:
    (tmp_path / "backlog.md").write_text("# Backlog\n- [ ]\n- [ ] Write the parser\n* [ ]   \n- [x] done\n- [ ] Docs\n")
    proc = cli("task", "import", str(tmp_path / "backlog.md"), "--repo", str(colony.repo))
    assert proc.returncode == 0, proc.stderr
    assert "imported 2 task(s)" in proc.stdout
    assert "line 2: an empty checklist item" in proc.stderr and "line 4: an empty checklist item" in proc.stderr
    assert sorted(t.title for _, t in colony.listing()) == ["Docs", "Write the parser"]


def test_a_box_glued_to_its_text_is_no_box() -> None:
    found = harness_cli.parse_import("- [ ]x\n- [ ] real\n", "b.md", warn=lambda text: None)
    assert [t.title for t in found] == ["real"]


# -- 3. dependencies must exist -------------------------------------------------------------------
def test_task_add_refuses_an_unknown_dependency_and_takes_a_known_one_in_any_status(colony: Colony) -> None:
    proc = cli("task", "add", "top", "--depends-on", "no-such-task", "--repo", str(colony.repo))
    assert proc.returncode == 2 and "'no-such-task'" in proc.stderr and "task list --status all" in proc.stderr
    assert pending_files(colony) == []
    colony.add(Task(id="base", title="base"))
    colony.claim("a")
    colony.done("base", "a")
    colony.add(Task(id="failing", title="failing"))
    colony.claim("a")
    colony.fail("failing", "a", note="no")
    proc = cli("task", "add", "top", "--id", "top", "--depends-on", "base", "--depends-on", "failing",
               "--repo", str(colony.repo))
    assert (proc.returncode, proc.stdout) == (0, "top\n"), proc.stderr
    assert colony.get("top")[1].depends_on == ["base", "failing"]


def test_task_import_counts_its_own_tasks_as_known_dependencies(colony: Colony, tmp_path: Path) -> None:
    colony.add(Task(id="old", title="old"))
    (tmp_path / "ok.yaml").write_text("- {id: api, title: API, depends_on: [db, old]}\n- {id: db, title: DB}\n")
    assert cli("task", "import", str(tmp_path / "ok.yaml"), "--repo", str(colony.repo)).returncode == 0
    (tmp_path / "bad.yaml").write_text("- {id: ui, title: UI, depends_on: [api, apii]}\n- {id: x, title: X}\n")
    proc = cli("task", "import", str(tmp_path / "bad.yaml"), "--repo", str(colony.repo))
    assert proc.returncode == 2 and "'ui' depends on 'apii'" in proc.stderr, proc.stderr
    assert colony.store.locate("ui") is None and colony.store.locate("x") is None


# -- 4. far more agents than cores ----------------------------------------------------------------
def test_far_more_agents_than_cores_is_refused_unless_forced(colony: Colony) -> None:
    too_many = str(4 * len(os.sched_getaffinity(0)) + 1)
    repo = str(colony.repo)
    for args in (["--agents", too_many], ["--roles", f"coder={too_many}"]):
        proc = cli(*args, "--repo", repo, "--model", "no-such-provider/x")
        assert proc.returncode == 2, proc.stderr
        assert f"{too_many} agents is far more than" in proc.stderr and "--force" in proc.stderr
        assert "runs commands and tests" in proc.stderr  # why
    proc = cli("demo", "--agents", too_many, "--dir", str(colony.repo.parent / "demo"))
    assert proc.returncode == 2 and "--force" in proc.stderr and not (colony.repo.parent / "demo").exists()
    # --force passes this check: the next one (the model spec) is what refuses now, before any agent.
    proc = cli("--agents", too_many, "--force", "--repo", repo, "--model", "no-such-provider/x")
    assert proc.returncode == 2 and "unknown model spec" in proc.stderr and "far more" not in proc.stderr
    assert not events(colony, "launch")


# -- 5. --version -------------------------------------------------------------------------------
def test_version_prints_the_package_version() -> None:
    for args in (["--version"], ["--version", "--repo", "/nonexistent"]):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"stigmergy {metadata.version('stigmergy-harness')}\n"


def test_version_falls_back_to_the_module_without_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness

    assert harness_cli.version() == harness.__version__  # the two agree while installed
    monkeypatch.setattr(metadata, "version", lambda name: (_ for _ in ()).throw(metadata.PackageNotFoundError(name)))
    assert harness_cli.version() == harness.__version__


# -- 6. a reader that goes away -----------------------------------------------------------------
def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI writing into a pipe whose reader has already gone, as under `| head -1` once head
    has its line: every write fails with EPIPE (Python ignores SIGPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "harness", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    finally:
        os.close(write)


def test_output_to_a_closed_pipe_ends_quietly(colony: Colony) -> None:
    colony.add_many([Task(id=f"t-{i:04d}", title=f"task {i} " + "x" * 120) for i in range(1000)])
    repo = str(colony.repo)
    for args in (["task", "list"], ["status"], ["report"], ["status", "--json"]):
        proc = into_closed_pipe(*args, "--repo", repo)
        assert (proc.returncode, proc.stderr) == (0, ""), (args, proc.stderr)
    # And through a real `head`: over 100 KB of listing, far more than a pipe holds.
    cmd = f"{sys.executable} -m harness task list --repo {repo} | head -1; echo \"rc=${{PIPESTATUS[0]}}\""
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[0].split()[2] == "t-0000" and "rc=0" in proc.stdout
    assert proc.stderr == ""


def test_a_usage_error_still_says_so_when_stdout_is_closed(colony: Colony) -> None:
    proc = into_closed_pipe("task", "show", "nope", "--repo", str(colony.repo))
    assert proc.returncode == 2 and "no task 'nope'" in proc.stderr
