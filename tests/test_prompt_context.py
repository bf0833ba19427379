"""What a prompt shows of the repository (harness/repocontext.py) and why it is ordered as it is.

Real repositories: the commits touching a task's files, its inputs within their budget (read at the
landing branch's tip, not from any worktree), a map folded to its budget; the system prompt the
same for two different tasks; and the prompt cache measured on an agent's real requests to the
fake Anthropic API through the real SDK.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from conftest import USER, cli, file_on_main, set_config
from harness import briefing, repocontext, roles, tasks
from harness.colony import Colony
from harness.git import Git, Identity
from harness.models.fake_server import FakeServer
from harness.templates import Templates

KEY = "sk-test-context-0123456789"


def commit(repo: Path, files: dict[str, str | bytes], message: str, who: Identity = USER) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    git = Git(repo)
    git.run("add", "--", *files)
    git.run("commit", "-qm", message, env=who.env())
    return git.run("rev-parse", "--short", "HEAD").strip()


def task(**fields: Any) -> tasks.Task:
    return tasks.from_dict({"id": "t-0001", "title": "A task", **fields}, "test")


def test_commits_touching_the_tasks_files_are_listed_with_their_agent_and_task(colony: Colony) -> None:
    repo = colony.repo
    a = commit(repo, {"src/a.py": "a = 1\n"}, "Add a\n\nTask-Id: add-a\nAgent: coder-01\n", Identity.for_agent("coder-01"))
    commit(repo, {"src/b.py": "b = 1\n"}, "Add b", Identity.for_agent("coder-02"))
    c = commit(repo, {"src/a.py": "a = 2\n", "docs/x.md": "x\n"}, "Change a\n\nTask-Id: change-a\n")
    ctx = repocontext.gather(Git(repo), "main", task(inputs=["docs/x.md"], outputs=["src/a.py"]),
                             inputs_chars=1000, map_chars=1000)
    assert ctx.touching == [f"{c} Change a (user, task change-a)", f"{a} Add a (coder-01, task add-a)"]
    assert ctx.log[:3] == [f"{c} Change a (user, task change-a)", ctx.log[1], f"{a} Add a (coder-01, task add-a)"]
    assert ctx.log[1].endswith(" Add b (coder-02)") and ctx.tip == c
    assert ctx.recent[:3] == ["docs/x.md", "src/a.py", "src/b.py"]  # newest first, each once
    # A merge conflict's files count as its own; no paths at all: no log of them.
    conflict = task(kind="merge_conflict", resolves="x", meta={"ref": "refs/x", "paths": ["src/b.py"]})
    assert [line.split(" ", 1)[1] for line in
            repocontext.gather(Git(repo), "main", conflict, inputs_chars=0, map_chars=0).touching] == ["Add b (coder-02)"]
    assert repocontext.gather(Git(repo), "main", task(), inputs_chars=0, map_chars=0).touching == []


def test_inputs_share_their_budget_small_ones_whole_and_each_says_what_it_is(colony: Colony) -> None:
    repo = colony.repo
    big = "".join(f"line {i:04d} of the big file\n" for i in range(400))  # 10 800 characters
    bigger = "".join(f"entry {i:05d}\n" for i in range(2000))
    commit(repo, {"small.txt": "tiny\n", "big.txt": big, "bigger.txt": bigger, "logo.png": b"\x89PNG\x00\x01",
                  "latin1.txt": "caf\xe9\n".encode("latin-1"), "pkg/one.py": "", "pkg/two.py": "x = 2\n"}, "files")
    inputs = ["small.txt", "big.txt", "bigger.txt", "logo.png", "latin1.txt", "nowhere.txt", "pkg", "pkg/one.py"]
    ctx = repocontext.gather(Git(repo), "main", task(inputs=inputs), inputs_chars=3000, map_chars=1000)
    got = {i.path: i for i in ctx.inputs}
    assert [i.path for i in ctx.inputs] == inputs
    assert got["small.txt"].state == "shown" and got["small.txt"].text == "tiny\n" and got["small.txt"].note == ""
    # The rest of the budget is shared by the two large files, each cut at a line end and saying so.
    for name, whole in (("big.txt", big), ("bigger.txt", bigger)):
        shown = got[name]
        assert shown.state == "cut" and whole.startswith(shown.text) and shown.text.endswith("\n")
        assert 1400 < len(shown.text) <= 1498
        assert shown.note == f"cut at {len(shown.text):,} of {len(whole):,} characters; the rest is in your worktree"
    assert sum(len(i.text) for i in ctx.inputs if i.state in ("shown", "cut")) <= 3000
    assert (got["logo.png"].state, got["logo.png"].text, got["logo.png"].note) == ("binary", "", "binary, not shown")
    assert got["latin1.txt"].state == "binary" and "not UTF-8" in got["latin1.txt"].note
    assert (got["nowhere.txt"].state, got["nowhere.txt"].note) == ("missing", "not on the branch")
    assert got["pkg"].state == "directory" and got["pkg"].text == "one.py\ntwo.py\n" and "2 files" in got["pkg"].note
    assert (got["pkg/one.py"].state, got["pkg/one.py"].note) == ("shown", "an empty file")

    # What the template makes of them: every file says what it is.
    prompt = Templates(colony.home).render("task", task=task(inputs=inputs), notes=[], notes_hidden=0, verify="",
                                           context=ctx)
    assert "The task's inputs as main has them (3000 characters at most in all):\n<file path=\"small.txt\">\ntiny\n</file>" \
           in prompt
    assert f'<file path="big.txt" note="{got["big.txt"].note}">\nline 0000' in prompt
    assert '<file path="logo.png" note="binary, not shown"/>' in prompt
    assert '<file path="nowhere.txt" note="not on the branch"/>' in prompt

    # A budget of 0 shows no file's content, and says why.
    none = repocontext.gather(Git(repo), "main", task(inputs=["big.txt", "small.txt"]), inputs_chars=0, map_chars=0)
    assert [(i.state, i.text) for i in none.inputs] == [("unread", ""), ("unread", "")]
    assert "budget is spent" in none.inputs[0].note and none.map.text == ""


def test_the_context_is_read_at_the_branch_tip_not_from_the_checkout_or_a_worktree(colony: Colony,
                                                                                tmp_path: Path) -> None:
    repo = colony.repo
    commit(repo, {"app.py": "VERSION = 1\n"}, "app")
    (repo / "app.py").write_text("VERSION = 'uncommitted'\n")  # the user's edit, not on main
    (repo / "scratch.txt").write_text("untracked\n")
    side = tmp_path / "side"
    Git(repo).run("worktree", "add", "-q", "-b", "side", str(side))
    commit(side, {"app.py": "VERSION = 'side branch'\n", "new.py": "x\n"}, "side work")
    for where in (repo, side):  # the same whichever checkout's git reads it
        ctx = repocontext.gather(Git(where), "main", task(inputs=["app.py"]), inputs_chars=100, map_chars=100)
        assert ctx.inputs[0].text == "VERSION = 1\n"
        assert "new.py" not in ctx.map.text and "scratch.txt" not in ctx.map.text and "app.py" in ctx.map.text


def test_the_map_keeps_folders_on_their_own_lines_until_it_must_fold_them_and_counts_every_file() -> None:
    paths = ["README.md", "setup.py", *(f"src/core/mod{i:02d}.py" for i in range(30)),
             *(f"src/core/deep/er/f{i}.py" for i in range(5)), *(f"tests/test_{i:02d}.py" for i in range(12)),
             "docs/index.md"]
    whole = repocontext.repo_map(sorted(paths), 10_000)
    assert whole.files == len(paths) and whole.folded == 0
    assert whole.text.splitlines() == [
        "./: README.md setup.py", "docs/: index.md",
        "src/core/: " + " ".join(f"mod{i:02d}.py" for i in range(30)),
        "src/core/deep/er/: f0.py f1.py f2.py f3.py f4.py",
        "tests/: " + " ".join(f"test_{i:02d}.py" for i in range(12))]
    for budget in (600, 400, 200, 120, 40):
        folded = repocontext.repo_map(sorted(paths), budget)
        assert len(folded.text) <= budget and folded.files == len(paths)
        lines = folded.text.splitlines()
        named = sum(len([w for w in line.split(": ", 1)[1].split() if w.endswith((".py", ".md"))]) for line in lines)
        assert named + folded.folded == len(paths), (budget, folded)  # every file is named or counted
    # Lines cut first (every folder kept), then deep folders folded, then the top level alone.
    cut = repocontext.repo_map(sorted(paths), 500).text
    assert "src/core/deep/er/: f0.py" in cut and "src/core/: mod00.py mod01.py" in cut and " … +" in cut
    assert repocontext.repo_map(sorted(paths), 400).text.splitlines()[2].startswith("src/core/: deep/ (5 files) mod00.py")
    assert "src/ (35 files)" in repocontext.repo_map(sorted(paths), 120).text
    assert repocontext.repo_map(sorted(paths), 120).text.count("\n") == 0
    assert repocontext.repo_map([], 100) == repocontext.RepoMap("", 0, 0)


def test_the_system_prompt_is_one_stable_prefix_and_everything_about_the_task_comes_after(colony: Colony) -> None:
    """Two different tasks: the same system prompt to the byte (what a provider caches), with the
    repository's map in it; each task's own parts only in its first message."""
    repo = colony.repo
    commit(repo, {"src/app.py": "def main():\n    return 1\n", "docs/guide.md": "GUIDE TEXT\n"}, "app")
    one = colony.add(tasks.from_dict({"id": "one-0001", "title": "Fix main", "inputs": ["src/app.py"],
                                      "outputs": ["src/app.py"]}, "test"))
    two = colony.add(tasks.from_dict({"id": "two-0001", "title": "Document it", "inputs": ["docs/guide.md"],
                                      "body": "Explain main()."}, "test"))
    colony.add_note("two-0001", "coder-07", "tried a table; it did not render")
    templates, role = Templates(colony.home), roles.load_role("coder", colony.home)
    rendered = {}
    for t in (one, two):
        context = briefing.repo_context(Git(repo), "main", t, colony.config)
        rendered[t.id] = briefing.opening(templates, colony, t, agent="coder-01", role=role, verify=[],
                                          context=context, cli=False)
    (sys_one, first_one), (sys_two, first_two) = rendered["one-0001"], rendered["two-0001"]
    assert sys_one == sys_two
    assert "./: README.md\ndocs/: guide.md\nsrc/: app.py" in sys_one
    for specific in ("one-0001", "two-0001", "Fix main", "GUIDE TEXT", "def main", "tried a table", "Explain"):
        assert specific not in sys_one
    assert "def main():" in first_one and "GUIDE TEXT" not in first_one
    assert "GUIDE TEXT" in first_two and "tried a table" in first_two and "def main():" not in first_two

    # `prompt render` prints the same, and a map budget of 0 leaves the map out.
    out = cli("prompt", "render", "--task", "two-0001", "--repo", str(repo), check=True).stdout
    assert sys_two in out and first_two in out
    colony = set_config(colony, prompt_map_chars=0)
    out = cli("prompt", "render", "--task", "two-0001", "--repo", str(repo), check=True).stdout
    assert "The repository:" not in out and "GUIDE TEXT" in out


def test_a_second_task_reads_the_first_tasks_cached_prefix_through_the_real_sdk(colony: Colony,
                                                                             tmp_path: Path) -> None:
    """An agent on the Anthropic API (the real SDK, the fake server): the first request of its
    first task writes tools + system prompt to the prompt cache, and the first request of its
    second task, a different task, reads all of it back."""
    commit(colony.repo, {"notes.txt": "one\n"}, "notes")
    replies = {t: [{"tool": "str_replace_based_edit_tool",
                    "input": {"command": "str_replace", "path": "notes.txt", "old_str": old, "new_str": new}},
                   {"tool": "finish", "input": {"summary": "done"}}]
               for t, old, new in (("first-task", "one", "two"), ("second-task", "two", "three"))}
    srv = FakeServer([{"match": f"^Task {t}:", "replies": r} for t, r in replies.items()], api_key=KEY)
    srv.start()
    try:
        colony.add(tasks.from_dict({"id": "first-task", "title": "Say two", "priority": 90,
                                    "inputs": ["notes.txt"]}, "test"))
        colony.add(tasks.from_dict({"id": "second-task", "title": "Say three", "priority": 10,
                                    "depends_on": ["first-task"]}, "test"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
        proc = cli("agent", "run", "--id", "a1", "--model", "anthropic/claude-test", "--api-base", srv.base_url,
                   "--repo", str(colony.repo), "--workspaces", str(tmp_path / "ws"), "--until-empty",
                   env={**env, "ANTHROPIC_API_KEY": KEY}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        requests = srv.requests
    finally:
        srv.stop()
    assert file_on_main(colony.repo, "notes.txt") == "three\n"

    firsts = [r for r in requests if len(r["body"]["messages"]) == 1]
    assert [r["body"]["messages"][0]["content"][0]["text"].split(":")[0] for r in firsts] == [
        "Task first-task", "Task second-task"]
    one, two = firsts
    assert one["body"]["system"] == two["body"]["system"] and one["body"]["tools"] == two["body"]["tools"]
    assert one["body"]["messages"] != two["body"]["messages"]
    written = one["usage"]["cache_creation_input_tokens"]
    assert written > 500 and one["usage"]["cache_read_input_tokens"] == 0
    assert two["usage"]["cache_read_input_tokens"] == written and two["usage"]["cache_creation_input_tokens"] == 0
    # The agent's ledger counts what the API reported: the second task's first call read the prefix.
    ledger = [json.loads(line) for line in (colony.home / "ledger" / "a1.jsonl").read_text().splitlines()]
    first_calls = [next(e for e in ledger if e["task"] == t) for t in replies]
    assert [(e["cache_read_tokens"], e["cache_write_tokens"]) for e in first_calls] == [(0, written), (written, 0)]
    print(f"\ncached prefix: {written} tokens written by the first task's first call, read by the second's; "
          f"uncached input of that call: {two['usage']['input_tokens']}", file=sys.stderr)
