"""The model's tools against a real shell and real files in a temporary worktree."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InvalidTask
from harness.models.base import ToolCall
from harness.tools import EDIT, TOOL_SPECS, Toolbox, ToolResult, clip_lines


class RecordingColony:
    """The smallest Environment: remembers what the tools filed."""

    def __init__(self) -> None:
        self.tasks: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def create_task(self, fields: dict[str, Any]) -> str:
        if "bad" in fields["title"]:
            raise InvalidTask("title: must not say bad")
        self.tasks.append(fields)
        return f"task-{len(self.tasks)}"

    def add_note(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "wt"
    path.mkdir()
    (path / ".git").write_text("gitdir: /somewhere\n")
    return path


@pytest.fixture
def colony() -> RecordingColony:
    return RecordingColony()


@pytest.fixture
def box(worktree: Path, colony: RecordingColony) -> Toolbox:
    env = {"PATH": os.environ["PATH"], "STIGMERGY_TASK": "t-1"}
    return Toolbox(worktree, env, colony, bash_timeout=1.0, output_limit=2_000)


def call(box: Toolbox, name: str, **args: Any) -> ToolResult:
    return box.run(ToolCall(id="c1", name=name, input=args))


def edit(box: Toolbox, **args: Any) -> ToolResult:
    return call(box, EDIT, **args)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead; only its parent has not collected it yet


# -- bash -------------------------------------------------------------------------------------


def test_bash_runs_in_worktree_with_given_env_and_reports_exit_code(box: Toolbox, worktree: Path) -> None:
    result = call(box, "bash", command='pwd; echo "task=$STIGMERGY_TASK"; echo oops >&2; exit 3')
    assert not result.is_error
    assert str(worktree) in result.content
    assert "task=t-1" in result.content
    assert "oops" in result.content  # stderr merged
    assert result.content.endswith("[exit code 3]")


def test_bash_timeout_kills_the_whole_process_group(box: Toolbox, worktree: Path) -> None:
    started = time.monotonic()
    result = call(box, "bash", command="sleep 30 & echo $! > child.pid; echo started; wait")
    assert time.monotonic() - started < 10
    assert result.is_error
    assert "timed out after 1s" in result.content
    assert "started" in result.content  # output before the kill is kept
    child = int((worktree / "child.pid").read_text())
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_background_job_does_not_outlive_the_command(box: Toolbox, worktree: Path) -> None:
    started = time.monotonic()
    result = call(box, "bash", command="sleep 30 & echo $! > child.pid")
    assert time.monotonic() - started < 1.0  # we did not wait for the background job
    assert not result.is_error
    assert "killed" in result.content
    child = int((worktree / "child.pid").read_text())
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_long_output_keeps_head_tail_and_error_lines(box: Toolbox) -> None:
    command = (
        "seq 1 2000 | sed 's/^/line /'; echo 'Traceback (most recent call last):'; "
        "echo 'ValueError: boom'; echo 'tests/test_x.py::test_y FAILED'; seq 2001 4000 | sed 's/^/line /'"
    )
    result = call(box, "bash", command=command)
    text = result.content
    assert text.startswith("line 1\nline 2\n")
    assert "line 4000\n[exit code 0]" in text
    for kept in ("Traceback (most recent call last):", "ValueError: boom", "test_y FAILED"):
        assert kept in text
    assert "\nline 1000\n" not in text and "\nline 3000\n" not in text
    assert "output truncated" in text and "lines" in text
    assert len(text) < 2_000 + 400


def test_clip_lines_leaves_short_text_alone_and_shortens_giant_lines() -> None:
    assert clip_lines(["a\n", "b"], 100) == "a\nb"
    clipped = clip_lines(["x" * 10_000 + "\n", "end\n"], 1_000)
    assert len(clipped) < 1_500
    assert "chars of this line cut" in clipped and clipped.endswith("end\n")


# -- the edit tool ----------------------------------------------------------------------------


def test_create_view_replace_insert(box: Toolbox, worktree: Path) -> None:
    assert not edit(box, command="create", path="src/app.py", file_text="a = 1\nb = 2\n").is_error
    assert (worktree / "src/app.py").read_text() == "a = 1\nb = 2\n"

    view = edit(box, command="view", path=str(worktree / "src/app.py"))  # absolute inside: fine
    assert view.content == "     1\ta = 1\n     2\tb = 2\n"

    replaced = edit(box, command="str_replace", path="src/app.py", old_str="b = 2", new_str="b = 3")
    assert not replaced.is_error and "b = 3" in replaced.content
    inserted = edit(box, command="insert", path="src/app.py", insert_line=0, insert_text="import os")
    assert not inserted.is_error
    assert (worktree / "src/app.py").read_text() == "import os\na = 1\nb = 3\n"

    ranged = edit(box, command="view", path="src/app.py", view_range=[2, -1])
    assert ranged.content.startswith("     2\ta = 1\n     3\tb = 3\n")
    assert edit(box, command="view", path="src/app.py", view_range=[3, 9]).is_error


def test_view_directory_lists_two_levels_without_hidden(box: Toolbox, worktree: Path) -> None:
    (worktree / "a/b/c").mkdir(parents=True)
    (worktree / "a/b/c/deep.txt").write_text("x")
    (worktree / "a/top.txt").write_text("x")
    (worktree / ".hidden").mkdir()
    listing = edit(box, command="view", path=".").content
    assert "a/b/" in listing and "a/top.txt" in listing
    assert "deep.txt" not in listing and ".hidden" not in listing and ".git" not in listing


def test_str_replace_must_match_exactly_once(box: Toolbox, worktree: Path) -> None:
    target = worktree / "f.txt"
    target.write_text("x = 1\ny = 2\nx = 1\nx = 1\n")
    result = edit(box, command="str_replace", path="f.txt", old_str="x = 1", new_str="x = 9")
    assert result.is_error
    assert "occurs 3 times" in result.content and "lines 1, 3, 4" in result.content
    missing = edit(box, command="str_replace", path="f.txt", old_str="z = 0", new_str="")
    assert missing.is_error and "not found" in missing.content
    assert target.read_text() == "x = 1\ny = 2\nx = 1\nx = 1\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("do not read")
    return path


@pytest.mark.parametrize(
    "path",
    ["../outside/secret.txt", "{outside}/secret.txt", "escape/secret.txt", "escape/new.txt",
     ".git", "sub/../.git/config", "gitlink", "../wt/.git"],
)
def test_paths_are_confined_to_the_worktree(box: Toolbox, worktree: Path, outside: Path, path: str) -> None:
    (worktree / "escape").symlink_to(outside)
    (worktree / "gitlink").symlink_to(worktree / ".git")
    path = path.format(outside=outside)
    for args in ({"command": "view"}, {"command": "create", "file_text": "pwned"},
                 {"command": "str_replace", "old_str": "do not", "new_str": "pwned"}):
        result = edit(box, path=path, **args)
        assert result.is_error, (path, args, result)
        assert "outside the worktree" in result.content or ".git is off limits" in result.content
    assert (outside / "secret.txt").read_text() == "do not read"
    assert not (outside / "new.txt").exists()
    assert (worktree / ".git").read_text() == "gitdir: /somewhere\n"


def test_symlink_within_worktree_is_allowed(box: Toolbox, worktree: Path) -> None:
    (worktree / "real").mkdir()
    (worktree / "alias").symlink_to(worktree / "real")
    assert not edit(box, command="create", path="alias/f.txt", file_text="ok\n").is_error
    assert (worktree / "real/f.txt").read_text() == "ok\n"


# -- malformed calls and colony tools ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad, expect",
    [
        (ToolCall("1", "bash", {}, error="arguments are not valid JSON"), "not valid JSON"),
        (ToolCall("1", "rm_rf", {"path": "/"}), "Unknown tool 'rm_rf'"),
        (ToolCall("1", "bash", {}), "missing required field 'command'"),
        (ToolCall("1", "bash", {"command": ["ls"]}), "must be of type string"),
        (ToolCall("1", EDIT, {"command": "delete", "path": "x"}), "must be one of"),
        (ToolCall("1", EDIT, {"command": "create", "path": "x"}), "create needs file_text"),
        (ToolCall("1", EDIT, {"command": "insert", "path": "x", "insert_text": "y"}), "insert needs insert_line"),
        (ToolCall("1", EDIT, {"command": "view", "path": "nope.txt"}), "does not exist"),
        (ToolCall("1", "create_task", {"title": "t", "priority": True}), "must be of type integer"),
        (ToolCall("1", "create_task", {"title": "t", "priority": 101}), "between 0 and 100"),
        (ToolCall("1", "create_task", {"title": "t", "outputs": [1]}), "list of string"),
        (ToolCall("1", "create_task", {"title": "a bad idea"}), "must not say bad"),
    ],
)
def test_malformed_calls_are_tool_errors(box: Toolbox, bad: ToolCall, expect: str) -> None:
    result = box.run(bad)
    assert result.is_error and result.finished is None
    assert expect in result.content


def test_colony_tools_reach_the_sink_and_finish_ends(box: Toolbox, colony: RecordingColony) -> None:
    created = call(box, "create_task", title="Add tests", priority=60, outputs=["tests/"], extra="dropped")
    assert created.content == "Created task task-1"
    assert colony.tasks == [{"title": "Add tests", "priority": 60, "outputs": ["tests/"]}]
    assert not call(box, "add_note", text="tried X, failed").is_error
    assert colony.notes == ["tried X, failed"]
    done = call(box, "finish", summary="all good")
    assert done.finished == "all good" and not done.is_error


def test_specs_are_anthropic_style() -> None:
    names = [spec.name for spec in TOOL_SPECS]
    assert names == ["bash", "str_replace_based_edit_tool", "create_task", "add_note", "finish"]
    for spec in TOOL_SPECS:
        assert spec.input_schema["type"] == "object" and spec.input_schema["required"]
        assert set(spec.input_schema["required"]) <= set(spec.input_schema["properties"])
