"""The offline demo: a real target repository, a backlog, and a colony of scripted agents on it.

    python -m harness demo [--agents 4] [--dir ./stigmergy-demo]

Builds ``textkit`` (a small Python package with a pytest suite, from demo_data/textkit.yaml) at
``--dir``, commits it on ``main``, initialises the colony with ``verify`` set to this
interpreter's pytest, files about 30 tasks and runs the launcher with ``--until-empty`` and the
scripted model (no network, no API key). The backlog is built to show the colony's behaviours:
two dependency chains, a discovered follow-up filed by an agent, and two tasks that rewrite the
same line so that the second to land conflicts and the conflict comes back as a merge_conflict
task that another agent resolves (the data file explains the script).

Exit status 0 only when every task landed exactly once and ``git status`` in the target is clean.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import yaml

from harness import summary, swarm, tasks
from harness.colony import Colony
from harness.errors import UsageError
from harness.git import Git, Identity
from harness.summary import Summary

DATA = "textkit.yaml"
IDENTITY = Identity("stigmergy demo", "demo@stigmergy.local")
SCRIPT_NAME = "demo-script.yaml"  # inside .stigmergy/, whose .gitignore keeps it out of git


def load_data() -> dict[str, Any]:
    text = resources.files("harness").joinpath("demo_data", DATA).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and {"target", "tasks", "script"} <= set(data), f"{DATA} is malformed"
    return data


def script_entries(data: dict[str, Any], agents: int) -> list[dict[str, Any]]:
    """The scripted model's script: the extra entries first, then one per backlog task by exact id.
    A lone agent would wait at each meet for a partner that never comes: it skips them."""
    entries = list(data["script"])
    for item in data["tasks"]:
        actions = [a for a in item["actions"] if agents > 1 or "meet" not in a]
        if not any("finish" in a for a in actions):
            actions.append({"finish": f"done: {item['title']}"})
        entries.append({"match": f"^{re.escape(item['id'])}$", "actions": actions})
    return entries


def backlog(data: dict[str, Any]) -> list[tasks.Task]:
    fields = ("id", "title", "priority", "depends_on", "outputs", "body")
    return [tasks.from_dict({k: item[k] for k in fields if k in item} | {"created_by": "demo"}, f"{DATA}: {item['id']}")
            for item in data["tasks"]]


def verify_command() -> str:
    # This interpreter, which has pytest: `pytest` on PATH might be another Python's, or none.
    # Without autoloading, pytest skips every plugin installed beside the harness (xdist, anyio,
    # ...): the suite needs none, and that halves a run that happens several times per task.
    return f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {shlex.quote(sys.executable)} -m pytest -q -x"


def create_target(directory: Path, files: dict[str, str]) -> Git:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    git = Git(directory)
    git.run("init", "--quiet", "--initial-branch=main")
    _commit(git, "textkit: the demo's target package and its test suite", ".")
    return git


def _commit(git: Git, message: str, *paths: str) -> None:
    git.run("add", "--", *paths)
    git.run("-c", "commit.gpgsign=false", "commit", "--quiet", "-m", message, env=IDENTITY.env())


def configure(colony: Colony, git: Git) -> None:
    """Set verify in config.yaml (keeping its comments) and commit what of .stigmergy/ is shared."""
    path = colony.home / "config.yaml"
    text = path.read_text(encoding="utf-8")
    line = f"verify: {json.dumps(verify_command())}"  # a JSON string is a YAML string
    text, n = re.subn(r'^verify: "".*$', lambda _: line, text, count=1, flags=re.M)
    path.write_text(text if n else text + line + "\n", encoding="utf-8")
    rel = colony.home.relative_to(colony.repo)
    _commit(git, "stigmergy: colony config (verify runs the test suite)",
            str(rel / "config.yaml"), str(rel / ".gitignore"))


def prepare(directory: Path, agents: int) -> tuple[Colony, Path, int]:
    """Target repo, colony, script and backlog; returns the colony, script path and task count."""
    data = load_data()
    git = create_target(directory, data["target"])
    colony = Colony.init(directory)
    configure(colony, git)
    script = colony.home / SCRIPT_NAME
    script.write_text(yaml.safe_dump(script_entries(data, agents), sort_keys=False, allow_unicode=True, width=1000),
                      encoding="utf-8")
    new = backlog(data)
    colony.add_many(new)
    return colony, script, len(new)


def problems(s: Summary, launcher_status: int) -> list[str]:
    """What keeps the demo from being a success: every task done and landed exactly once, and the
    target's checkout clean."""
    found = []
    not_done = sorted(t for t, st in s.statuses.items() if st != "done")
    if not_done:
        found.append(f"not done: {', '.join(f'{t} ({s.statuses[t]})' for t in not_done)}")
    twice = sorted({t for t in s.landed if s.landed.count(t) > 1})
    if twice:
        found.append(f"landed more than once: {', '.join(twice)}")
    missing = sorted(set(s.tasks) - set(s.landed) - set(s.resolved))
    if missing:
        found.append(f"done but not on main: {', '.join(missing)}")
    if s.dirty:
        found.append(f"git status is not clean: {len(s.dirty)} entries")
    if launcher_status != 0:
        found.append(f"the launcher exited with status {launcher_status}")
    return found


def run(directory: Path, agents: int = 4, timeout: float = 600, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    directory = directory.expanduser().absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"{directory} already exists and is not empty: pass another --dir or remove it")
    if agents < 1:
        raise UsageError(f"--agents must be at least 1, got {agents}")
    if timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout}")
    started = time.monotonic()
    colony, script, n = prepare(directory, agents)
    print(f"demo: target repository {directory} with {n} tasks; {agents} scripted agents at work "
          f"(agent logs in {colony.home / 'agents'})", file=out, flush=True)
    if agents == 1:
        print("demo: with one agent nothing runs concurrently, so no merge conflict will arise", file=out)
    # --max-hours is the safety net: a task that can never pass would keep --until-empty agents
    # busy forever; after `timeout` the launcher lays STOP and the summary shows what was left.
    status = swarm.run(swarm.Options(
        repo=directory, agents=agents, model=f"scripted:{script}", until_empty=True,
        workspaces=colony.home / "workspaces", max_hours=timeout / 3600))
    # The launcher has printed the account (summary.lines); the demo adds its verdict on it.
    found = problems(summary.collect(colony, time.monotonic() - started), status)
    lines = ["", f"demo finished in {time.monotonic() - started:.1f}s: {directory}",
             "see: git -C DIR log --first-parent main; python -m harness status --repo DIR".replace("DIR", str(directory))]
    print("\n".join(lines + [f"PROBLEM: {p}" for p in found]), file=out, flush=True)
    return 0 if not found else 1
