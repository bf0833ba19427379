"""Roles and prompt templates where users see and tune them: the shipped ones render, overrides win
and show in `roles list` / `prompt render`, a broken one stops the launch, and a wheel carries them."""

from __future__ import annotations

import json

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from harness import briefing, roles, shipped, tasks
from harness.colony import Colony
from harness.git import Git
from harness.templates import Templates

from conftest import cli

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_ROLES = sorted(p.stem for p in (ROOT / "roles").glob("*.md"))
SHIPPED_TEMPLATES = sorted(p.stem for p in (ROOT / "prompts").glob("*.j2"))


def add_task(colony: Colony, *args: str) -> str:
    proc = cli("task", "add", "Add a greeting", "--repo", str(colony.repo), *args, check=True)
    return proc.stdout.strip().splitlines()[-1]


def test_the_source_checkout_ships_its_roles_and_templates_from_the_top_level_folders() -> None:
    assert shipped.folder("roles") == ROOT / "roles" and shipped.folder("prompts") == ROOT / "prompts"
    assert not (ROOT / "harness" / "roles").exists() and not (ROOT / "harness" / "prompts").exists()
    assert len(SHIPPED_ROLES) == 7 and set(SHIPPED_TEMPLATES) == set(briefing.TEMPLATES)
    assert roles.shipped() == SHIPPED_ROLES


@pytest.mark.parametrize("role_name", SHIPPED_ROLES)
@pytest.mark.parametrize("cli_backend", [False, True])
def test_each_shipped_role_renders_into_both_system_prompts_and_the_task(colony: Colony, role_name: str,
                                                                         cli_backend: bool) -> None:
    task = colony.add(tasks.from_dict({"id": "greet-0001", "title": "Add a greeting", "body": "Print hello.",
                                       "outputs": ["hello.py"]}, "test"))
    task_id = task.id
    role = roles.load_role(role_name, colony.home)
    assert role.name == role_name and role.description and role.source == ROOT / "roles" / f"{role_name}.md"
    context = briefing.repo_context(Git(colony.repo), "main", task, colony.config)
    system, prompt = briefing.opening(Templates(colony.home), colony, task, agent="a-01", role=role,
                                      verify=["pytest -q"], context=context, cli=cli_backend)
    assert role.prompt in system and "agent a-01" in system
    assert ("stigmergy task add" in system) == cli_backend
    assert system.endswith("The repository: 1 file on main, by folder:\n./: README.md\n")
    assert f"Task {task_id}: Add a greeting" in prompt and "Print hello." in prompt
    assert "Expected to touch: hello.py" in prompt and "pytest -q" in prompt
    assert f"- {context.tip} init (user)\n" in prompt


def test_every_shipped_template_passes_the_launch_check_and_verify_feedback_renders(colony: Colony) -> None:
    briefing.check(colony)  # every role and template, with samples: raises if anything is broken
    text = briefing.feedback(Templates(colony.home), "E  assert 1 == 2", 1, 3, cli=False)
    assert "round 1 of 3" in text and "assert 1 == 2" in text and "call finish again" in text


def test_overrides_win_and_show_in_roles_list_roles_show_and_prompt_render(colony: Colony) -> None:
    (colony.home / "prompts").mkdir()
    (colony.home / "prompts" / "task.j2").write_text("OVERRIDDEN TASK {{ task.id }} after {{ context.log[0] }}\n")
    (colony.home / "roles").mkdir()
    (colony.home / "roles" / "coder.md").write_text(
        "---\nname: coder\ndescription: Our own coder.\n---\nWrite Rust only.\n")
    task_id = add_task(colony)
    repo = ["--repo", str(colony.repo)]

    listing = cli("roles", "list", *repo, check=True).stdout.splitlines()
    entries = {pair[0].split()[0]: " ".join(pair) for pair in zip(listing[::2], listing[1::2])}  # two lines a role
    assert "Our own coder." in entries["coder"] and f"override {colony.home / 'roles' / 'coder.md'}" in entries["coder"]
    assert "prefers nothing" in entries["coder"] and "sleeps when idle" in entries["coder"]
    assert f"shipped {ROOT / 'roles' / 'tester.md'}" in entries["tester"] and "sweeps when idle" in entries["tester"]
    assert len(entries) == len(SHIPPED_ROLES) == len(listing) // 2
    as_json = {r["name"]: r for r in json.loads(cli("roles", "list", "--json", *repo, check=True).stdout)}
    assert as_json["merger"]["prefers"]["kinds"] == ["merge_conflict"] and as_json["coder"]["model"] is None

    shown = cli("roles", "show", "coder", *repo, check=True).stdout
    assert shown.startswith(f"# override {colony.home / 'roles' / 'coder.md'}\n")
    assert "description: Our own coder.\n---\nWrite Rust only.\n" in shown

    out = cli("prompt", "render", "--task", task_id, *repo, check=True).stdout
    system, _, first = out.partition("===== first user message")
    assert f"({ROOT / 'prompts' / 'system.j2'})" in system  # not overridden: the shipped one
    assert "Write Rust only." in system and "careful software engineer" not in system
    # The repository context is read from git when no agent worktree exists: main's one commit.
    tip = Git(colony.repo).run("rev-parse", "--short", "main").strip()
    assert f"({colony.home / 'prompts' / 'task.j2'}) =====\nOVERRIDDEN TASK {task_id} after {tip} init (user)\n" in first

    # A role override absent from the shipped set is a role of its own.
    (colony.home / "roles" / "auditor.md").write_text("---\nname: auditor\ndescription: Audits.\n---\nAudit.\n")
    out = cli("prompt", "render", "--task", task_id, "--role", "auditor", "--backend", "command", *repo,
              check=True).stdout
    assert "You are agent auditor-01 (auditor)" in out and "Audit." in out and "system_command.j2" in out


def test_prompt_render_refuses_an_unknown_task_or_role(colony: Colony) -> None:
    proc = cli("prompt", "render", "--task", "no-such-task", "--repo", str(colony.repo))
    assert proc.returncode == 2 and "no task 'no-such-task'" in proc.stderr
    task_id = add_task(colony)
    proc = cli("prompt", "render", "--task", task_id, "--role", "poet", "--repo", str(colony.repo))
    assert proc.returncode == 2 and "unknown role 'poet'" in proc.stderr and "coder" in proc.stderr


BROKEN = [
    ("prompts/task.j2", "Task {{ task.id }}\n\n{{ task.title +* 2 }}\n", ":3: template syntax error"),
    ("prompts/system.j2", "You are {{ agent }}.\n\n{{ role.promt }}\n", ":3: "),
    ("prompts/verify_failure.j2", "Failed:\n{{ excerp }}\n", ":2: "),
    ("prompts/context.j2", "Main:\n{{ context.tipp }}\n", ":2: "),  # a template that task.j2 includes
    ("roles/coder.md", "---\nname: coder\ndescription: [unclosed\n---\nbody\n", ":3: front matter is not valid YAML"),
    ("roles/critic.md", "---\ndescription: no name\n---\nbody\n", ":2: front matter needs `name: <role>`"),
    ("roles/tester.md", "just a prompt, no front matter\n", ":1: no front matter"),
]


@pytest.mark.parametrize("relpath,text,expected", BROKEN, ids=[b[0] + str(i) for i, b in enumerate(BROKEN)])
@pytest.mark.parametrize("command", ["run", "agent run"])
def test_a_broken_override_stops_the_launch_naming_file_and_line(colony: Colony, tmp_path: Path, relpath: str,
                                                                 text: str, expected: str, command: str) -> None:
    path = colony.home / relpath
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    add_task(colony)
    script = tmp_path / "script.yaml"
    script.write_text("- match: greeting\n  actions:\n    - bash: echo hello > hello.txt\n    - finish: done\n")
    args = ["--repo", str(colony.repo), "--model", f"scripted:{script}", "--workspaces", str(tmp_path / "ws")]
    args += ["--agents", "1"] if command == "run" else ["--id", "coder-01"]
    proc = cli(*command.split(), *args, "--until-empty", timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}{expected}" in proc.stderr
    if "prompts/" in relpath and "syntax" not in expected:  # StrictUndefined: the typo is named
        assert any(e in proc.stderr for e in ("'excerp' is undefined", "no attribute 'promt'", "no attribute 'tipp'"))
    assert list(colony.home.glob("agents/*/heartbeat.json")) == [] and not (tmp_path / "ws").exists()  # no agent
    assert [t.id for _, t in colony.listing("done")] == []


def test_an_override_template_reaches_the_model_of_a_running_agent(colony: Colony, tmp_path: Path) -> None:
    """The agent renders through the same code path: its transcript carries the override's text."""
    (colony.home / "prompts").mkdir()
    (colony.home / "prompts" / "task.j2").write_text("MARKER-7731 {{ task.title }}\n")
    task_id = add_task(colony)
    script = tmp_path / "script.yaml"
    script.write_text("- match: greeting\n  actions:\n    - bash: echo hello > hello.txt\n    - finish: done\n")
    proc = cli("agent", "run", "--repo", str(colony.repo), "--id", "coder-01", "--model", f"scripted:{script}",
               "--workspaces", str(tmp_path / "ws"), "--until-empty", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [t.id for _, t in colony.listing("done")] == [task_id]
    runs = colony.home / "runs" / task_id
    assert any("MARKER-7731 Add a greeting" in p.read_text(errors="replace")
               for p in runs.rglob("*") if p.is_file())


def test_a_wheel_from_a_clean_checkout_carries_roles_and_prompts_and_runs_a_colony(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    committed = subprocess.run(["git", "ls-files", "roles", "prompts"], cwd=clone, capture_output=True, text=True,
                               check=True).stdout.split()
    assert len(committed) == len(SHIPPED_ROLES) + len(SHIPPED_TEMPLATES)
    dist = tmp_path / "dist"
    # Absolute paths only: a bare name would be taken for a requirement to fetch.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(clone)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = dist.glob("stigmergy_harness-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"harness/_shipped/{p}" for p in committed} <= names
    assert not any(n.startswith(("tests/", "bench/", "harness/_shipped/harness")) for n in names)

    # A fresh venv with the wheel only; its dependencies come from ours, through a .pth line (which,
    # unlike site-packages itself, does not run our editable install's .pth hook).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "from harness import shipped; print(shipped.folder('roles'))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(Path(purelib) / "harness" / "_shipped" / "roles")

    target = tmp_path / "demo"
    proc = subprocess.run([str(python), "-m", "harness", "demo", "--dir", str(target), "--agents", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    everything = Colony.open(target).listing("all")
    assert len(everything) >= 30 and {status for status, _ in everything} == {"done"}
