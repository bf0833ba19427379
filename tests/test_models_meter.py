"""Price table, per-call cost, JSONL ledgers and the colony-wide spend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.meter import FREE, Ledger, Price, colony_spend, cost_usd, price_for
from harness.models.base import Usage


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-5", Price(2.0, 10.0, 0.20, 2.5)),
        ("anthropic/claude-sonnet-4-5-20250929", Price(3.0, 15.0, 0.30, 3.75)),  # date suffix dropped
        ("litellm/openai/gpt-4o-2024-08-06", Price(2.5, 10.0, 1.25, 2.5)),
        ("gpt-5.5", Price(5.0, 30.0, 0.5, 5.0)),
        ("gpt-5.5-pro", FREE),  # not priced as gpt-5.5: a wrong price is worse than none
        ("llama-3-70b", FREE),
    ],
)
def test_price_for(model: str, expected: Price) -> None:
    assert price_for(model) == expected


def test_price_override() -> None:
    assert price_for("claude-sonnet-5", {"input": 1, "output": 2}) == Price(1.0, 2.0, 1.0, 1.0)
    assert price_for("x", {"input": 1, "output": 2, "cache_read": 0.1, "cache_write": 3}) == Price(1, 2, 0.1, 3)
    with pytest.raises(UsageError, match="price"):
        price_for("x", {"input": 1})


def test_cost_counts_every_kind_of_token() -> None:
    usage = Usage(
        input_tokens=1_000_000, output_tokens=2_000_000, cache_read_tokens=3_000_000, cache_write_tokens=4_000_000
    )
    assert cost_usd(usage, Price(1.0, 10.0, 0.1, 2.0)) == pytest.approx(1 + 20 + 0.3 + 8)
    assert cost_usd(usage, FREE) == 0.0


def test_ledger_appends_one_json_line_per_call(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledgers" / "agent-1.jsonl")
    ledger.record(agent="agent-1", task="t-1", model="openai/gpt-4o", usage=Usage(10, 2, 3, 4), cost_usd=0.5, ts=1.0)
    ledger.record(agent="agent-1", task="t-2", model="openai/gpt-4o", usage=Usage(1, 1), cost_usd=0.25)
    lines = (tmp_path / "ledgers" / "agent-1.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {
        "agent": "agent-1",
        "task": "t-1",
        "model": "openai/gpt-4o",
        "input_tokens": 10,
        "output_tokens": 2,
        "cache_read_tokens": 3,
        "cache_write_tokens": 4,
        "cost_usd": 0.5,
        "ts": 1.0,
    }
    assert json.loads(lines[1])["task"] == "t-2" and json.loads(lines[1])["ts"] > 1.0
    assert colony_spend(tmp_path / "ledgers") == pytest.approx(0.75)


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    code = (
        "import sys\n"
        "from harness.meter import Ledger\n"
        "from harness.models.base import Usage\n"
        "ledger = Ledger(sys.argv[1])\n"
        "for i in range(300):\n"
        "    ledger.record(agent=sys.argv[2] * 200, task=str(i), model='m', usage=Usage(1, 1), cost_usd=0.001)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), name]) for name in "abcd"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    lines = path.read_text().splitlines()
    assert len(lines) == 1200
    assert {json.loads(line)["agent"][0] for line in lines} == set("abcd")
    assert colony_spend(tmp_path) == pytest.approx(1.2)


def test_colony_spend_sums_ledgers_and_survives_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"cost_usd": 1.5}) + "\n" + json.dumps({"cost_usd": 0.25}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"cost_usd": 2.0}) + "\n" + '{"cost_usd": 9')  # writer killed
    (tmp_path / "notes.txt").write_text(json.dumps({"cost_usd": 100.0}) + "\n")  # not a ledger
    assert colony_spend(tmp_path) == pytest.approx(3.75)
    assert colony_spend(tmp_path / "missing") == 0.0
