"""Golden files: what each shipped role and template renders for one fixed task in one fixed repository.

tests/golden/ holds the expected text: roles/<role>.txt (the system prompt of the tool loop and of
an agent CLI for that role), task.txt (the first message of the sample task), merge_conflict.txt
and verify_failure.txt. A change to a role or a template shows here as a diff to review. After a
deliberate change, rewrite them all with

    STIGMERGY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py

and commit the new files with the change. The repository is built with fixed authors, dates and
contents; commit hashes are written as <C1>, <C2>... (oldest first) all the same, so a golden file
does not depend on how the sample's history was made.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pytest

from harness import briefing, roles, tasks
from harness.colony import Colony
from harness.git import Git, Identity
from harness.templates import Templates

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("STIGMERGY_UPDATE_GOLDEN") == "1"

USAGE = "".join(f"## Example {i}\n\n    wrap(text, width={20 + i})  # wraps at {20 + i} columns\n\n" for i in range(40))
HISTORY = [  # (author, date, message, files): the sample repository's commits, oldest first
    ("user", "2026-01-05T09:00:00+00:00", "Initial textkit", {
        "README.md": "# textkit\n\nSmall text utilities: wrapping and slugs.\n",
        "pyproject.toml": '[project]\nname = "textkit"\nversion = "0.1.0"\n',
        "src/textkit/__init__.py": "from textkit.wrap import wrap\n",
        "src/textkit/wrap.py": ("def wrap(text: str, width: int) -> list[str]:\n"
                                "    \"\"\"Greedy word wrap.\"\"\"\n"
                                "    lines, line = [], ''\n"
                                "    for word in text.split():\n"
                                "        if line and len(line) + 1 + len(word) > width:\n"
                                "            lines.append(line)\n"
                                "            line = word\n"
                                "        else:\n"
                                "            line = f'{line} {word}' if line else word\n"
                                "    return lines + [line] if line else lines\n"),
        "tests/test_wrap.py": "from textkit import wrap\n\n\ndef test_wrap():\n    assert wrap('a b', 1) == ['a', 'b']\n",
        "docs/usage.md": USAGE,
        "assets/logo.png": "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    }),
    ("coder-01", "2026-01-05T10:00:00+00:00", "Add slugify\n\nTask-Id: slug-0001\nAgent: coder-01\n", {
        "src/textkit/slug.py": "def slugify(text: str) -> str:\n    return '-'.join(text.lower().split())\n",
    }),
    ("coder-02", "2026-01-05T11:00:00+00:00", "Keep long words whole\n\nTask-Id: wrap-0000\nAgent: coder-02\n", {
        "tests/test_wrap.py": ("from textkit import wrap\n\n\ndef test_wrap():\n    assert wrap('a b', 1) == ['a', 'b']\n"
                               "\n\ndef test_long_word():\n    assert wrap('abcdef', 3) == ['abcdef']\n"),
    }),
]
SAMPLE = {"id": "wrap-0001", "title": "Wrap at hyphens", "priority": 60, "skip_count": 1,
          "body": "A word with hyphens may break after a hyphen when it does not fit the line.",
          "inputs": ["src/textkit/wrap.py", "docs/usage.md", "assets/logo.png", "src/textkit/hyphen.py", "tests"],
          "outputs": ["src/textkit/wrap.py", "tests/test_wrap.py"], "verify": "python -m pytest -q tests/test_wrap.py"}
CONFLICT = {"id": "wrap-0001-conflict", "title": "Resolve the conflict of wrap-0001", "kind": "merge_conflict",
            "priority": 100, "resolves": "wrap-0001",
            "meta": {"ref": "refs/stigmergy/conflicts/wrap-0001", "paths": ["src/textkit/wrap.py"]},
            "body": "coder-03's change to wrap() conflicted with main's at lines 4-9."}


def build(root: Path) -> Colony:
    repo = root / "textkit"
    repo.mkdir()
    git = Git(repo)
    git.run("init", "-q", "-b", "main")
    for author, date, message, files in HISTORY:
        for name, text in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
        git.run("add", "-A")
        email = "user@example.com" if author == "user" else f"{author}@stigmergy.local"
        git.run("commit", "-q", "-m", message,
                env={**Identity(author, email).env(), "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    colony = Colony.init(repo)
    with open(colony.home / "config.yaml", "a") as f:
        f.write("prompt_inputs_chars: 900\nverify: ruff check .\n")
    colony = Colony.open(repo)
    for task in (SAMPLE, CONFLICT):
        colony.add(tasks.from_dict(dict(task), "the golden sample"))
    colony.add_note("wrap-0001", "coder-04", "Tried re.split on hyphens: it dropped the hyphen from the output. "
                    "Split after each hyphen instead.", kind="release")
    return colony


def normalise(text: str, git: Git) -> str:
    """Commit hashes, full or abbreviated, as <C1>, <C2>... oldest first."""
    commits = git.run("rev-list", "--reverse", "main").split()

    def name(m: re.Match[str]) -> str:
        found = [i for i, c in enumerate(commits, 1) if c.startswith(m.group(0))]
        return f"<C{found[0]}>" if found else m.group(0)
    return re.sub(r"\b[0-9a-f]{7,40}\b", name, text)


def rendered(root: Path) -> dict[str, str]:
    """Every golden file's expected text, by its path under tests/golden/."""
    colony = build(root)
    git, templates = Git(colony.repo), Templates(colony.home)
    out: dict[str, str] = {}
    _, sample = colony.get("wrap-0001")
    _, conflict = colony.get("wrap-0001-conflict")
    first: dict[str, str] = {}
    for name in roles.shipped():
        role = roles.load_role(name, colony.home)
        parts = []
        for cli in (False, True):
            for task in (sample, conflict):
                context = briefing.repo_context(git, "main", task, colony.config)
                system, prompt = briefing.opening(templates, colony, task, agent=f"{name}-01", role=role,
                                                  verify=[c for c in (colony.config.verify, task.verify) if c],
                                                  context=context, cli=cli)
                first.setdefault(f"{task.kind}-{cli}-{name}", prompt)
            label = "agent CLI (system_command.j2)" if cli else "tool loop (system.j2)"
            parts.append(f"===== system prompt, {label} =====\n{system}")
        out[f"roles/{name}.txt"] = "".join(parts)
    out["task.txt"] = first["task-False-coder"]
    out["merge_conflict.txt"] = first["merge_conflict-False-merger"]
    # The first message is the same whichever role or backend sends it: only the system prompt differs.
    assert {v for k, v in first.items() if k.startswith("task-")} == {out["task.txt"]}
    log = "FAILED tests/test_wrap.py::test_hyphen - AssertionError: assert ['a-', 'b'] == ['a-b']"
    out["verify_failure.txt"] = "".join(
        f"===== {label} =====\n{briefing.feedback(templates, log, 1, 3, cli)}"
        for label, cli in (("tool loop", False), ("agent CLI", True)))
    return {path: normalise(text, git) for path, text in out.items()}


def test_every_shipped_role_and_template_renders_as_its_golden_file(tmp_path: Path) -> None:
    """Compares with tests/golden/; STIGMERGY_UPDATE_GOLDEN=1 rewrites them (and drops stale ones)."""
    expected = rendered(tmp_path)
    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.txt")}
    if UPDATE:
        for path in on_disk - set(expected):
            (GOLDEN / path).unlink()
        for path, text in expected.items():
            (GOLDEN / path).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / path).write_text(text)
        return
    fix = "if the change is deliberate: STIGMERGY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py"
    assert sorted(on_disk) == sorted(expected), f"golden files missing or stale; {fix}"
    for path, text in expected.items():
        golden = (GOLDEN / path).read_text()
        if golden != text:
            diff = "".join(difflib.unified_diff(golden.splitlines(True), text.splitlines(True), f"golden/{path}",
                                                "rendered now"))
            pytest.fail(f"tests/golden/{path} differs from what renders now; {fix}\n{diff}")


def test_the_sample_is_the_same_whenever_it_is_built(tmp_path: Path) -> None:
    """Fixed authors, dates and contents: two builds render the very same text (hashes included)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert rendered(tmp_path / "a") == rendered(tmp_path / "b")
