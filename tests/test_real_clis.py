"""The real agent CLIs, installed from npm at pinned versions, each landing a task through its
preset as shipped (in the default sandbox) against the fake server, with a prompt over 200 KiB
that the server must see exactly once. Skipped, saying why, where npm is missing or the install
fails; the install is cached (STIGMERGY_CLI_CACHE, default ~/.cache/stigmergy-harness/agent-clis)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import file_on_main, landed_ids, set_config
from harness.colony import Colony
from harness.models.fake_server import FakeServer
from harness.tasks import Task

CLIS = {"codex": ("@openai/codex", "0.171.0"), "claude": ("@anthropic-ai/claude-code", "2.1.197")}
KEY = "sk-fake-cli-key-0123456789"
# Over 200 KiB, under the task file's 256 KiB cap.
SENTINEL = "sentinel: the last line of the long task body"
BODY = "".join(f"line {i}: context the CLI must read once, no matter how long it is\n" for i in range(3100)) + SENTINEL


def cache() -> Path:
    return Path(os.environ.get("STIGMERGY_CLI_CACHE") or Path.home() / ".cache/stigmergy-harness/agent-clis")


def install(name: str) -> Path:
    """The folder holding the pinned CLI's executable (node_modules/.bin), installed once."""
    package, version = CLIS[name]
    prefix = cache() / f"{package.rsplit('/', 1)[-1]}-{version}"
    bin_dir = prefix / "node_modules" / ".bin"
    if (bin_dir / name).exists():
        return bin_dir
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot install {package}@{version}")
    try:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
                               f"{package}@{version}"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {package}@{version} took over 10 minutes")
    if done.returncode != 0 or not (bin_dir / name).exists():
        pytest.skip(f"npm install {package}@{version} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return bin_dir


def setup_codex(home: Path, url: str) -> dict[str, str]:
    codex_home = home / "codex-home"
    codex_home.mkdir(parents=True)
    # Codex ignores OPENAI_BASE_URL: a custom endpoint is a provider in config.toml, on the Responses API.
    (codex_home / "config.toml").write_text(f"""model = "gpt-test"
model_provider = "fake"

[model_providers.fake]
name = "fake"
base_url = "{url}/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
""")
    return {"CODEX_HOME": str(codex_home), "OPENAI_API_KEY": KEY}


def setup_claude(home: Path, url: str) -> dict[str, str]:
    (home / ".claude").mkdir(parents=True)
    (home / ".claude.json").write_text("{}")
    # IS_SANDBOX: as root, --dangerously-skip-permissions is refused without it.
    return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY, "IS_SANDBOX": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}


# The CLI's one shell call: the work, plus the task CLI by absolute path (Codex's shell may lose PATH).
WORK = 'echo 42 > answer.txt && "$STIGMERGY_BIN" agent heartbeat --agent "$STIGMERGY_AGENT" && echo beat'
TOOL_CALL = {"codex": {"tool": "exec_command", "input": {"cmd": WORK}},
             "claude": {"tool": "Bash", "input": {"command": WORK, "description": "write the answer"}}}


@pytest.mark.parametrize("name", sorted(CLIS))
def test_a_real_cli_lands_a_long_task_through_its_preset(name: str, colony: Colony, tmp_path: Path) -> None:
    bin_dir = install(name)
    script = [{"match": "Write the answer", "replies": [TOOL_CALL[name], {"text": "answer written"}]}]
    home = tmp_path / "home"
    with FakeServer(script, api_key=KEY) as srv:
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(home), "LANG": "C.UTF-8",
               **(setup_codex if name == "codex" else setup_claude)(home, srv.base_url)}
        # The CLI lives under home, which the sandbox hides: make its install visible (README: The sandbox).
        colony = set_config(colony, sandbox_read=[str(cache())])
        colony.add(Task(id="big", title="Write the answer", body=BODY))
        proc = subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--id", f"{name}-agent", "--repo",
                               str(colony.repo), "--workspaces", str(tmp_path / "ws"), "--backend", "command",
                               "--agent-cmd", name, "--until-empty"],
                              capture_output=True, text=True, timeout=300,
                              env={**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
        requests = srv.requests
    logs = "\n".join(p.read_text() for p in (colony.home / "runs" / "big").glob("*/agent-cli-*.log"))
    prompts = list((colony.home / "runs" / "big").glob("*/prompt-0.md"))
    assert prompts and prompts[0].stat().st_size > 200 * 1024
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}\n{logs[-3000:]}"
    assert landed_ids(colony.repo) == ["big"], f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}\n{logs[-3000:]}"
    assert file_on_main(colony.repo, "answer.txt") == "42\n"
    assert colony.last_beat(f"{name}-agent") is not None  # the task CLI ran from inside the CLI's shell
    turns = [r for r in requests if SENTINEL in json.dumps(r["body"])]
    assert len(turns) == 2, [r["path"] for r in requests]  # the tool call, then the answer
    first: Any = turns[0]["body"]
    assert json.dumps(first).count(SENTINEL) == 1  # the prompt reached the model exactly once
