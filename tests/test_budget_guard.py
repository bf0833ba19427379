"""Issue 14, item 7: spend that cannot be counted, and a budget of tokens.

An unpriced model is logged at $0 a call, so a USD budget with it could never trip: the launcher
(a real `python -m harness run` subprocess) and `agent run` refuse it, say how to price the model or
cap tokens instead, and warn when nothing is capped. --budget-tokens / budget_tokens caps the tokens
every ledger adds up to, exactly as the USD budget caps dollars.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import landed_ids, set_config
from harness.colony import Colony
from harness.config import DEFAULT_CONFIG, Config
from harness.errors import UsageError
from harness.meter import Ledger, budget_reached, colony_spend, ledger_totals
from harness.models.base import Usage
from harness.models.fake_server import FakeServer
from harness.models.registry import spend_countable
from harness.tasks import Task

KEY = "sk-test-budget-0123456789abcdef"
UNPRICED = "openai/smollm2"  # a small model on a local llama.cpp server: in no price table
_PROVIDER_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE")


def harness(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _PROVIDER_ENV}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean, "PYTHONDONTWRITEBYTECODE": "1", **env})


def launch(colony: Colony, tmp: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return harness("run", "--agents", "1", "--repo", str(colony.repo), "--workspaces", str(tmp / "ws"),
                   "--until-empty", "--sandbox", "none", *extra, **env)


def agent_run(colony: Colony, tmp: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return harness("agent", "run", "--id", "a1", "--repo", str(colony.repo), "--workspaces", str(tmp / "ws"),
                   "--until-empty", "--sandbox", "none", *extra, **env)


def claims(colony: Colony) -> list[dict[str, Any]]:
    return [e for e in colony.events() if e.get("event") == "claim"]


def started(colony: Colony) -> list[Path]:
    """What a launch leaves once it started anything: its log, an agent's log."""
    return [*colony.home.glob("launcher.log"), *colony.home.glob("agents/*/agent.log")]


def write_task_server(name: str) -> FakeServer:
    """An OpenAI-compatible fake server whose model writes `<name>.txt` and finishes."""
    srv = FakeServer([{"match": f"Task {name}:", "replies": [
        {"tool": "str_replace_based_edit_tool", "input": {"command": "create", "path": f"{name}.txt",
                                                          "file_text": "ok\n"}},
        {"tool": "finish", "input": {"summary": "wrote it"}}]}], api_key=KEY)
    srv.start()
    return srv


# -- which models can be counted ----------------------------------------------------------------------

def test_spend_countable_knows_our_table_a_price_scripted_and_the_command_backend() -> None:
    assert spend_countable("openai/gpt-4o") and spend_countable("anthropic/claude-sonnet-4-5-20250929")
    assert not spend_countable(UNPRICED) and not spend_countable("anthropic/claude-local")
    assert spend_countable(UNPRICED, {"price": {"input": 0, "output": 0}})  # zeros: free, and said so
    assert spend_countable("scripted:/any.yaml")  # free by design
    assert not spend_countable(None)  # an agent CLI: its calls never reach our ledgers
    with pytest.raises(UsageError, match="price must be"):
        spend_countable(UNPRICED, {"price": {"input": 1}})


def test_spend_countable_asks_litellm_s_cost_map_for_litellm_specs() -> None:
    assert spend_countable("litellm/openai/gpt-4o")  # priced in litellm's map
    assert spend_countable("litellm/groq/gpt-4o")  # not in litellm's map, but in ours by its bare id
    assert not spend_countable("litellm/openai/smollm2")  # in neither
    assert not spend_countable("litellm/ollama/llama2")  # in the map at $0: could never trip a budget
    assert spend_countable("litellm/ollama/llama2", {"price": {"input": 0, "output": 0}})


def test_ledger_totals_sum_cost_and_every_kind_of_token(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    Ledger(ledger / "a1.jsonl").record(agent="a1", task="t", model="m", cost_usd=0.5,
                                       usage=Usage(input_tokens=100, output_tokens=20, cache_read_tokens=3,
                                                   cache_write_tokens=4))
    Ledger(ledger / "a2.jsonl").record(agent="a2", task="t", model="m", cost_usd=0.25,
                                       usage=Usage(input_tokens=10, output_tokens=2))
    with open(ledger / "a2.jsonl", "a") as f:
        f.write('{"cost_usd": 9, "input_tok')  # torn by a killed writer: skipped
    totals = ledger_totals(ledger)
    assert (totals.cost_usd, totals.tokens, totals.calls) == (pytest.approx(0.75), 139, 2)
    assert colony_spend(ledger) == pytest.approx(0.75)
    assert budget_reached(totals, None, 140) is None
    assert budget_reached(totals, None, 139) == "colony token budget of 139 reached (139 tokens used)"
    assert budget_reached(totals, 0.75, None) == "colony budget of $0.75 reached"


def test_budget_tokens_is_a_documented_whole_number_setting(colony: Colony) -> None:
    assert "budget_tokens: null" in DEFAULT_CONFIG
    assert Config.load(colony.home / "config.yaml").budget_tokens is None
    assert set_config(colony, budget_tokens=5000).config.budget_tokens == 5000
    with open(colony.home / "config.yaml", "a") as f:
        f.write("budget_tokens: 1.5\n")
    with pytest.raises(UsageError, match="'budget_tokens' has a bad value 1.5"):
        Config.load(colony.home / "config.yaml")


# -- at launch ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "agent run"])
@pytest.mark.parametrize("source", ["flag", "config"])
def test_a_usd_budget_on_an_unpriced_model_is_refused_at_launch(
        colony: Colony, tmp_path: Path, command: str, source: str) -> None:
    colony.add(Task(id="t1", title="never claimed"))
    if source == "config":
        colony = set_config(colony, budget_usd=5)
    budget = ("--budget-usd", "5") if source == "flag" else ()
    go = launch if command == "run" else agent_run
    proc = go(colony, tmp_path, "--model", UNPRICED, *budget, "--api-base", "http://127.0.0.1:9/v1",
              OPENAI_API_KEY=KEY)
    assert proc.returncode == 2, proc.stderr
    said = proc.stderr
    assert UNPRICED in said and "cannot be counted" in said
    assert "model_options: {price:" in said and "price: {input: 0, output: 0}" in said and "--budget-tokens" in said
    assert ("--budget-usd 5" if source == "flag" else "budget_usd in .stigmergy/config.yaml") in said
    assert claims(colony) == [] and started(colony) == []  # nothing was started


def test_a_budget_with_an_agent_cli_is_refused_since_nothing_of_it_is_counted(colony: Colony, tmp_path: Path) -> None:
    for budget in (("--budget-usd", "5"), ("--budget-tokens", "1000")):
        proc = launch(colony, tmp_path, "--backend", "command", "--agent-cmd", "true", *budget)
        assert proc.returncode == 2 and "cannot be enforced with --backend command" in proc.stderr, proc.stderr
    assert started(colony) == []


@pytest.mark.parametrize("priced", [True, False])
def test_an_unpriced_model_runs_with_a_price_or_with_a_warning(colony: Colony, tmp_path: Path, priced: bool) -> None:
    # Priced (zeros: a free local server), the USD budget holds and nothing is said about it; without
    # a price and without a budget, the colony works and the launcher warns once that it shows $0.
    if priced:
        colony = set_config(colony, model_options={"price": {"input": 0, "output": 0}})
    colony.add(Task(id="t1", title="write t1"))
    srv = write_task_server("t1")
    try:
        proc = launch(colony, tmp_path, "--model", UNPRICED, "--api-base", srv.openai_base_url,
                      *(("--budget-usd", "5") if priced else ()), OPENAI_API_KEY=KEY)
    finally:
        srv.stop()
    assert proc.returncode == 0, proc.stderr
    assert landed_ids(colony.repo) == ["t1"]
    warning = f"the spend of model {UNPRICED} cannot be counted: report and status will show $0"
    assert proc.stderr.count(warning) == (0 if priced else 1), proc.stderr
    assert ledger_totals(colony.home / "ledger").calls == 2  # counted in tokens either way


# -- the token budget -------------------------------------------------------------------------------------

def script(tmp: Path, entries: list[dict[str, Any]]) -> str:
    path = tmp / "script.yaml"
    path.write_text(yaml.safe_dump(entries))
    return f"scripted:{path}"


def test_the_launcher_claims_nothing_once_the_ledgers_reach_the_token_budget(colony: Colony, tmp_path: Path) -> None:
    # An earlier run of the colony used 1000 tokens (cache included); the budget is 1000.
    Ledger(colony.home / "ledger" / "old.jsonl").record(
        agent="old", task="x", model="openai/smollm2", cost_usd=0.0,
        usage=Usage(input_tokens=600, output_tokens=300, cache_read_tokens=60, cache_write_tokens=40))
    for n in ("t1", "t2"):
        colony.add(Task(id=n, title=f"write {n}"))
    model = script(tmp_path, [{"match": f"^{n}$", "actions": [{"write": {"path": f"{n}.txt", "content": "x\n"}},
                                                              {"finish": "ok"}]} for n in ("t1", "t2")])
    proc = launch(colony, tmp_path, "--model", model, "--budget-tokens", "1000")
    assert proc.returncode == 0, proc.stderr
    assert claims(colony) == [] and sorted(t.id for _, t in colony.listing("pending")) == ["t1", "t2"]
    assert "colony token budget of 1000 reached (1000 tokens used): agents claimed nothing more" in proc.stderr
    log = (colony.home / "agents" / "coder-01" / "agent.log").read_text()
    assert "colony token budget of 1000 reached (1000 tokens used): claiming nothing more" in log

    # With room in the budget the same colony works: it was the budget, nothing else.
    proc = launch(colony, tmp_path, "--model", model, "--budget-tokens", "1000000")
    assert proc.returncode == 0, proc.stderr
    assert sorted(landed_ids(colony.repo)) == ["t1", "t2"] and "token budget" not in proc.stderr


def test_budget_tokens_in_config_aborts_an_attempt_at_its_next_model_call(colony: Colony, tmp_path: Path) -> None:
    # The scripted model counts ~prompt/4 tokens a call: the first call of the attempt crosses a
    # budget of one token, so the attempt stops before its second call and the task goes back.
    colony = set_config(colony, budget_tokens=1)
    colony.add(Task(id="long", title="a long task"))
    model = script(tmp_path, [{"match": "^long$", "actions": [
        {"write": {"path": "a.txt", "content": "a\n"}}, {"write": {"path": "b.txt", "content": "b\n"}},
        {"finish": "ok"}]}])
    proc = agent_run(colony, tmp_path, "--model", model)
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in (colony.home / "ledger" / "a1.jsonl").read_text().splitlines()]
    assert len(entries) == 1  # no model call after the budget was reached
    assert colony.get("long")[0] == "pending" and landed_ids(colony.repo) == []
    notes = [n["text"] for n in colony.notes("long")]
    assert notes and "stopped before it finished" in notes[-1]
    assert len(claims(colony)) == 1 and "colony token budget of 1 reached" in proc.stderr
