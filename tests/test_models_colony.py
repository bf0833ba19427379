"""Real agent processes, real SDKs, real HTTP: the model providers inside a working colony.

Every test here starts `python -m harness agent run` subprocesses against the shipped fake API
server (in this process, so its recorded requests can be inspected, or as `python -m harness
fake-server`), and checks what reached main, the ledgers, the event log and the server.

Streaming is turned on the way a user does it: `model_options: {stream: true}` in config.yaml.
"""

from __future__ import annotations

import json
import re
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import file_on_main, landed_ids, set_config, wait_for
from harness.colony import Colony
from harness.meter import PRICES
from harness.models.fake_server import FakeServer
from harness.tasks import Task

KEY = "sk-test-SECRET-1234567890abcdef"
OTHER_KEY = "sk-test-OTHER-SECRET-fedcba0987654321"

# The env vars a developer's shell may carry that would point an agent somewhere else.
_PROVIDER_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE")


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_ENV}
    env.update(extra)
    return env


def start(colony: Colony, agent: str, model: str, tmp: Path, env: dict[str, str],
          *extra: str) -> subprocess.Popen[bytes]:
    # stdout and stderr both go to one log per agent: the secrets test greps it.
    log = open(tmp / f"{agent}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "agent", "run", "--id", agent, "--model", model, "--repo",
         str(colony.repo), "--workspaces", str(tmp / "ws"), "--until-empty", *extra],
        stdout=log, stderr=log, env=env)


def finish(*procs: subprocess.Popen[bytes], tmp: Path, timeout: float = 90) -> None:
    """Every agent exits 0; on failure show their logs, the only place a crash is visible."""
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    if codes != [0] * len(procs):
        logs = "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(tmp.glob("*.log")))
        raise AssertionError(f"agent exit codes {codes}\n{logs}")


def turn(body: dict[str, Any]) -> int:
    """Which turn of its conversation a request is: the number of assistant messages it carries."""
    return sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")


def first_user(body: dict[str, Any]) -> str:
    for m in body.get("messages", []):
        if m.get("role") == "user":
            c = m["content"]
            return c if isinstance(c, str) else " ".join(b.get("text", "") for b in c if isinstance(b, dict))
    return ""


def edit(command: str, path: str, **fields: Any) -> dict[str, Any]:
    return {"tool": "str_replace_based_edit_tool", "input": {"command": command, "path": path, **fields}}


def bash(command: str) -> dict[str, Any]:
    return {"tool": "bash", "input": {"command": command}}


def done(summary: str = "done") -> dict[str, Any]:
    return {"tool": "finish", "input": {"summary": summary}}


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    """Fake API servers a test starts (its script may name tmp paths); stopped afterwards."""
    started: list[FakeServer] = []
    yield started
    for srv in started:
        srv.stop()


def serve(started: list[FakeServer], script: list[dict[str, Any]]) -> FakeServer:
    srv = FakeServer(script, api_key=KEY)  # any other key gets 401: proves the key reached the SDK
    srv.start()
    started.append(srv)
    return srv


# -- a multi-step tool loop with each provider ------------------------------------------------------

PY = shlex.quote(sys.executable)


@pytest.mark.parametrize("provider", ["anthropic", "anthropic-stream", "openai", "litellm"])
def test_each_provider_runs_a_tool_loop_that_passes_verify_and_lands(
        provider: str, colony: Colony, tmp_path: Path, servers: list[FakeServer]) -> None:
    # The verify command passes only after all three edits happened in order: create, run, fix.
    verify = f"{PY} -c \"import greet; assert greet.greet('a') == 'hello a'\""
    srv = serve(servers, [{"match": "greet-task", "replies": [
        edit("create", "greet.py", file_text="def greet(n):\n    return 'hi ' + n\n"),
        bash(f"{PY} -c \"import greet; print('ran:' + greet.greet('x'))\""),
        edit("str_replace", "greet.py", old_str="'hi '", new_str="'hello '"),
        done("greet added"),
    ]}])
    # The task's own verify, not the repo-wide one: main is green, only this task's work passes it.
    colony.add(Task(id="greet-task", title="Add greet()", verify=verify))
    if provider == "anthropic-stream":
        colony = set_config(colony, model_options={"stream": True})
    if provider.startswith("anthropic"):
        model, env, extra = "anthropic/claude-test", agent_env(ANTHROPIC_API_KEY=KEY), ["--api-base", srv.base_url]
    elif provider == "openai":  # the base URL through the environment this time, as the README allows
        model, env, extra = "openai/gpt-test", agent_env(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=srv.openai_base_url), []
    else:  # the base URL from config.yaml this time
        colony = set_config(colony, api_base=srv.openai_base_url)
        model, env, extra = "litellm/openai/gpt-test", agent_env(OPENAI_API_KEY=KEY), []
    a = start(colony, "a1", model, tmp_path, env, *extra)
    finish(a, tmp=tmp_path)

    assert landed_ids(colony.repo) == ["greet-task"]
    assert file_on_main(colony.repo, "greet.py") == "def greet(n):\n    return 'hello ' + n\n"
    assert colony.get("greet-task")[0] == "done"
    reqs = srv.requests
    path = "/v1/messages" if provider.startswith("anthropic") else "/v1/chat/completions"
    assert all(bool(r["body"].get("stream")) == (provider == "anthropic-stream") for r in reqs)
    assert [r["path"] for r in reqs] == [path] * 4 and all(r["authorized"] for r in reqs)
    assert [turn(r["body"]) for r in reqs] == [0, 1, 2, 3]
    assert {r["body"]["model"] for r in reqs} == {"claude-test" if provider.startswith("anthropic") else "gpt-test"}
    # The bash step really ran in the worktree and its output went back to the model.
    assert "ran:hi x" in json.dumps(reqs[2]["body"]["messages"])
    ledger = [json.loads(line) for line in (colony.home / "ledger" / "a1.jsonl").read_text().splitlines()]
    assert len(ledger) == 4 and all(e["input_tokens"] > 0 and e["task"] == "greet-task" for e in ledger)
    assert {e["model"] for e in ledger} == {model}


# -- a 429 cools the whole colony down ---------------------------------------------------------------

def test_429_retry_after_holds_every_agent_until_it_has_passed(
        colony: Colony, tmp_path: Path, servers: list[FakeServer]) -> None:
    hold = 2.0
    marker = tmp_path / "steady-is-working"
    srv = serve(servers, [
        # a1 waits until a2 is mid-task, then its next request gets the 429.
        {"match": "Task limited:", "replies": [
            bash(f"for i in $(seq 600); do test -f {marker} && break; sleep 0.05; done"),
            {"status": 429, "retry_after": hold},
            edit("create", "limited.txt", file_text="limited\n"),
            done(),
        ]},
        # a2 touches the marker, then asks again 1 s later: well inside the cool-down, so without the
        # shared cool-down file that request would arrive before retry-after has passed.
        {"match": "Task steady:", "replies": [
            bash(f"touch {marker}; sleep 1"),
            bash("sleep 0.5"),
            edit("create", "steady.txt", file_text="steady\n"),
            done(),
        ]},
    ])
    colony.add(Task(id="limited", title="Rate limited", priority=90))  # a1 claims it first
    colony.add(Task(id="steady", title="Steady", priority=50))
    env = agent_env(OPENAI_API_KEY=KEY)
    # Unsandboxed: the two agents' commands meet through a file outside their worktrees (bwrap hides it).
    a = start(colony, "a1", "openai/gpt-test", tmp_path, env, "--api-base", srv.openai_base_url, "--sandbox", "none")
    wait_for(lambda: colony.get("limited")[0] == "active", timeout=60, what="a1 to claim")
    b = start(colony, "a2", "openai/gpt-test", tmp_path, env, "--api-base", srv.openai_base_url, "--sandbox", "none")
    finish(a, b, tmp=tmp_path)

    assert sorted(landed_ids(colony.repo)) == ["limited", "steady"]
    reqs = srv.requests
    limited = [r for r in reqs if "Task limited:" in first_user(r["body"])]
    steady = [r for r in reqs if "Task steady:" in first_user(r["body"])]
    assert [turn(r["body"]) for r in limited] == [0, 1, 1, 2]  # turn 1 twice: the 429, then its retry
    refused = limited[1]["ts"]
    deadline = refused + hold
    early = [(round(r["ts"] - refused, 3), first_user(r["body"])[:20]) for r in reqs if refused < r["ts"] < deadline]
    assert early == [], f"requests inside the cool-down (seconds after the 429): {early}"
    # a2 was mid-conversation across the window (a request before the 429 and more after it), so
    # the check above really covered an agent that had work to send; it waited instead.
    assert [turn(r["body"]) for r in steady] == [0, 1, 2, 3]
    assert steady[0]["ts"] < refused < steady[-1]["ts"]
    assert json.loads((colony.home / "cooldown.json").read_text())["until"] >= deadline
    # The retry is told where a person looks: the attempt's transcript and the agent's log.
    said = [json.loads(line) for line in next((colony.home / "runs" / "limited").glob("*/transcript.jsonl"))
            .read_text().splitlines()]
    retry = [e for e in said if e["kind"] == "retry"]
    assert len(retry) == 1 and retry[0]["error"] == "ModelRateLimited" and retry[0]["status"] == 429, said
    assert re.search(r"limited.*retry.*ModelRateLimited", (tmp_path / "a1.log").read_text())


# -- the colony budget -------------------------------------------------------------------------------

def start_fake_server_cli(script: Path, tmp: Path) -> tuple[subprocess.Popen[str], str]:
    """`python -m harness fake-server` on a free port; returns the process and its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", "fake-server", "--port", "0", "--script", str(script),
                             "--api-key", KEY], stdout=subprocess.PIPE, stderr=open(tmp / "server.err", "w"),
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "fake LLM server on http://127.0.0.1:PORT ..."
    assert line.startswith("fake LLM server on http://127.0.0.1:"), (line, (tmp / "server.err").read_text())
    return proc, line.split()[4]


def test_budget_stops_the_colony_and_nothing_is_claimed_after_it(colony: Colony, tmp_path: Path) -> None:
    model = "claude-opus-4-5"  # priced in meter.PRICES: no way to set a price from `agent run`
    per_call = 40_000 * PRICES[model].output / 1e6  # the fake server reports 40k output tokens: $1
    budget = 8.5 * per_call  # crossed by the 9th call: two tasks' worth, then one more
    # Each task takes four calls. A server-side delay on every reply keeps calls long, so the budget
    # is crossed while both agents are mid-task: each must stop before its next call.

    def replies(name: str) -> list[dict[str, Any]]:
        steps = [edit("create", f"{name}.txt", file_text=f"{name}\n"), bash(f"cat {name}.txt"),
                 edit("str_replace", f"{name}.txt", old_str=name, new_str=f"{name} done"), done()]
        return [{"delay": 0.2, "then": {**step, "usage": {"output_tokens": 40_000}}} for step in steps]

    names = ["t1", "t2", "t3", "t4", "t5", "t6"]
    script = tmp_path / "fake.yaml"
    script.write_text(yaml.safe_dump([{"match": f"Task {n}:", "replies": replies(n)} for n in names]))
    for i, n in enumerate(names):
        colony.add(Task(id=n, title=f"write {n}", priority=90 - i))
    srv, url = start_fake_server_cli(script, tmp_path)
    try:
        env = agent_env(ANTHROPIC_API_KEY=KEY)
        agents = [start(colony, f"a{i}", f"anthropic/{model}", tmp_path, env, "--api-base", url,
                        "--budget-usd", str(budget)) for i in (1, 2)]
        finish(*agents, tmp=tmp_path)
    finally:
        srv.send_signal(signal.SIGINT)  # serve() ends cleanly on Ctrl-C
        assert srv.wait(timeout=10) == 0

    entries = sorted((json.loads(line) for f in (colony.home / "ledger").glob("*.jsonl")
                      for line in f.read_text().splitlines()), key=lambda e: e["ts"])
    spent, crossed = 0.0, None
    for e in entries:
        spent += e["cost_usd"]
        if crossed is None and spent >= budget:
            crossed = e["ts"]
    assert crossed is not None, f"the budget was never reached: spent {spent}"
    # The agent whose call crossed the budget never calls again; the other may finish the one call
    # it had in flight, and starts none after.
    after = [(e["agent"], e["task"]) for e in entries if e["ts"] > crossed]
    assert len(after) <= 1, f"model calls after the budget was reached: {after}"
    # Ledger ts are full precision, event ts are rounded to the millisecond.
    late = [e for e in colony.events() if e["event"] == "claim" and e["ts"] > crossed + 0.0005]
    assert late == [], f"claimed after the budget was reached at {crossed}: {late}"
    landed = landed_ids(colony.repo)
    assert 1 <= len(landed) <= 3 and all(colony.get(t)[0] == "done" for t in landed)  # work before it lands
    pending = [t.id for _, t in colony.listing("pending")]
    assert sorted(pending + landed) == names  # the rest is left for later: nothing active, nothing failed
    logs = (tmp_path / "a1.log").read_text() + (tmp_path / "a2.log").read_text()
    assert "budget of $8.5 reached: claiming nothing more" in logs


# -- keys never get written down ---------------------------------------------------------------------

def test_api_keys_appear_in_no_transcript_log_commit_or_error(
        colony: Colony, tmp_path: Path, servers: list[FakeServer]) -> None:
    colony = set_config(colony, max_attempts=1)
    srv = serve(servers, [
        {"match": "Task leaky:", "replies": [
            bash("echo key=$ANTHROPIC_API_KEY other=$OPENAI_API_KEY; env"),
            # The model itself repeats a key (it could have learned it anywhere).
            {"text": f"I found the key {KEY}, writing it down", **edit("create", "found.txt", file_text="ok\n")},
            bash("env > env-dump.txt; git status --short"),  # an env dump is committed and lands
            done(f"summary mentioning {KEY}"),
        ]},
        # The API's error message carries the key: it becomes an error, a transcript line and a note.
        {"match": "Task refused:", "replies": [
            {"status": 400, "body": f"invalid x-api-key {KEY}"},
            {"text": "never reached"},
        ]},
    ])
    colony.add(Task(id="leaky", title="Leaky", priority=90))
    colony.add(Task(id="refused", title="Refused", priority=50))
    env = agent_env(ANTHROPIC_API_KEY=KEY, OPENAI_API_KEY=OTHER_KEY, ANTHROPIC_BASE_URL=srv.base_url)
    a = start(colony, "a1", "anthropic/claude-test", tmp_path, env)
    finish(a, tmp=tmp_path)

    assert landed_ids(colony.repo) == ["leaky"]
    dump = file_on_main(colony.repo, "env-dump.txt")
    assert "STIGMERGY_AGENT=a1" in dump  # the env really was dumped and committed ...
    assert "ANTHROPIC_API_KEY" not in dump and "OPENAI_API_KEY" not in dump  # ... without the keys
    assert colony.get("refused")[0] == "failed"
    assert "HTTP 400" in json.dumps(colony.notes("refused"))  # the error was written down, redacted
    transcripts = "".join(p.read_text() for p in (colony.home / "runs").rglob("transcript.jsonl"))
    assert "[REDACTED]" in transcripts  # the model's echo of the key was there, and was redacted

    places: dict[str, bytes] = {str(p): p.read_bytes() for p in colony.home.rglob("*") if p.is_file()}
    places.update({str(p): p.read_bytes() for p in (tmp_path / "ws").rglob("*") if p.is_file()})
    places["a1.log"] = (tmp_path / "a1.log").read_bytes()
    places["git log -p --all"] = subprocess.run(["git", "log", "-p", "--all"], cwd=colony.repo,
                                                capture_output=True, check=True).stdout
    # What the harness told the model: prompts and tool results (the server keeps no credential
    # headers). The model's own earlier turns are replayed to it verbatim, key included: it said it.
    told = [(r["body"].get("system"), [m for m in r["body"]["messages"] if m["role"] != "assistant"])
            for r in srv.requests]
    places["requests"] = json.dumps(told).encode()
    assert len(places) > 10
    for secret in (KEY, OTHER_KEY):
        leaks = [where for where, data in places.items() if secret.encode() in data]
        assert leaks == [], f"{secret} found in {leaks}"
