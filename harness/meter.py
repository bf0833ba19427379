"""What the colony spends: a price table, per-call cost, and append-only JSONL ledgers.

Each agent process appends to its own ledger file; ``colony_spend`` sums every ledger in the
directory, so the fleet-wide budget needs no shared counter and no lock.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import fsutil
from harness.errors import UsageError
from harness.models.base import Usage


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write: float


# USD per million tokens, taken from the cost map bundled with litellm 1.110.2 (late 2026) for
# the models people are likely to point a colony at. Looked up by exact id, after dropping a
# trailing date (claude-sonnet-4-5-20250929 -> claude-sonnet-4-5); prefix matching would price
# gpt-5.5-pro as gpt-5.5 and be wrong by 6x. Anything else costs 0 while its tokens are still
# counted; pass price={...} to load_model to set one. OpenAI has no cache-write surcharge, so its
# cache_write is the input price (and its replies never report cache writes anyway).
PRICES: dict[str, Price] = {
    "claude-opus-5-5": Price(4.0, 20.0, 0.20, 5.0),
    "claude-opus-5": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-8": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-7": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-6": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-5": Price(5.0, 25.0, 0.50, 6.25),
    "claude-sonnet-5-5": Price(2.0, 10.0, 0.10, 2.5),
    "claude-sonnet-5": Price(2.0, 10.0, 0.20, 2.5),
    "claude-sonnet-4-6": Price(3.0, 15.0, 0.30, 3.75),
    "claude-sonnet-4-5": Price(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-5-5": Price(0.10, 0.50, 0.01, 0.125),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    "claude-fable-5-1": Price(10.0, 50.0, 0.25, 12.5),
    "claude-fable-5": Price(10.0, 50.0, 1.0, 12.5),
    "claude-mythos-5-1": Price(10.0, 50.0, 0.25, 12.5),
    "claude-mythos-5": Price(10.0, 50.0, 1.0, 12.5),
    "gpt-6.1-sol": Price(2.0, 10.0, 0.10, 2.5),
    "gpt-6.1-terra": Price(1.0, 5.0, 0.05, 1.25),
    "gpt-6-sol": Price(2.0, 10.0, 0.20, 2.5),
    "gpt-6-luna": Price(0.10, 0.50, 0.01, 0.125),
    "gpt-6-astra": Price(10.0, 50.0, 1.0, 12.5),
    "gpt-5.5": Price(5.0, 30.0, 0.50, 5.0),
    "gpt-5.4": Price(2.5, 15.0, 0.25, 2.5),
    "gpt-5.4-mini": Price(0.75, 4.5, 0.075, 0.75),
    "gpt-5.4-nano": Price(0.20, 1.25, 0.02, 0.20),
    "gpt-5": Price(1.25, 10.0, 0.125, 1.25),
    "gpt-5-mini": Price(0.25, 2.0, 0.025, 0.25),
    "gpt-5-nano": Price(0.05, 0.40, 0.005, 0.05),
    "gpt-4.1": Price(2.0, 8.0, 0.50, 2.0),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10, 0.40),
    "gpt-4o": Price(2.50, 10.0, 1.25, 2.50),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075, 0.15),
}

_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")

FREE = Price(0.0, 0.0, 0.0, 0.0)


def price_for(model: str, override: dict[str, float] | None = None) -> Price:
    """The price of ``model`` (a bare id or a ``provider/id`` spec); ``override`` wins.

    An override needs ``input`` and ``output``; cache prices default to the input price, which
    over- rather than under-counts.
    """
    if override is not None:
        try:
            inp, out = float(override["input"]), float(override["output"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"price must be {{'input': USD/Mtok, 'output': USD/Mtok}}, got {override!r}") from exc
        return Price(inp, out, float(override.get("cache_read", inp)), float(override.get("cache_write", inp)))
    return known_price(model) or FREE


def known_price(model: str) -> Price | None:
    """``model``'s entry in PRICES (a bare id or a ``provider/id`` spec), or None: not ours to price."""
    bare = model.rsplit("/", 1)[-1]
    return PRICES.get(bare) or PRICES.get(_DATE_SUFFIX.sub("", bare))


def cost_usd(usage: Usage, price: Price) -> float:
    """Cost of one call. ``usage.input_tokens`` is the uncached input (cache hits are separate)."""
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_read_tokens * price.cache_read
        + usage.cache_write_tokens * price.cache_write
    ) / 1_000_000


class Ledger:
    """One JSON line per model call, appended to ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def record(
        self, *, agent: str, task: str, model: str, usage: Usage, cost_usd: float, ts: float | None = None
    ) -> dict[str, Any]:
        entry = {
            "agent": agent,
            "task": task,
            "model": model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cost_usd": round(cost_usd, 8),
            "ts": time.time() if ts is None else ts,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.append_line(self.path, entry)
        return entry


TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass
class Totals:
    """What every ledger of a colony adds up to."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    calls: int = 0

    @property
    def tokens(self) -> int:
        """Every token a token budget counts: input, output, cache reads and cache writes."""
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


def ledger_entries(ledger_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every call on every ``*.jsonl`` ledger in ``ledger_dir`` (missing dir: none), with
    ``cost_usd`` a float and each of TOKEN_KEYS an int. The one reader of ledgers: the budgets,
    the status line and the report count the very same lines."""
    directory = Path(ledger_dir)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.jsonl")):
        yield from file_entries(path)


def file_entries(path: Path) -> Iterator[dict[str, Any]]:
    """The calls on one ledger (``ledger_entries``)."""
    try:
        data = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    for line in data.splitlines():
        try:
            entry = json.loads(line)
            entry["cost_usd"] = float(entry.get("cost_usd", 0.0) or 0.0)
            for key in TOKEN_KEYS:
                entry[key] = int(entry.get(key, 0) or 0)
        except (ValueError, AttributeError, TypeError):
            # A torn last line (writer killed mid-write) or stray junk: skip, never fail the
            # budget check over it.
            continue
        yield entry


def ledger_totals(ledger_dir: str | os.PathLike[str]) -> Totals:
    """Cost, tokens and calls summed over ``ledger_entries`` (a budget, a status line)."""
    return totals_of(ledger_entries(ledger_dir))


def totals_of(entries: Iterable[dict[str, Any]]) -> Totals:
    totals = Totals()
    for entry in entries:
        totals.cost_usd += entry["cost_usd"]
        totals.input_tokens += entry["input_tokens"]
        totals.output_tokens += entry["output_tokens"]
        totals.cache_read_tokens += entry["cache_read_tokens"]
        totals.cache_write_tokens += entry["cache_write_tokens"]
        totals.calls += 1
    return totals


def budget_reached(totals: Totals, usd: float | None, tokens: int | None) -> str | None:
    """What the colony's ledgers (``totals``) have reached of its budgets, said for a log; None: neither."""
    if usd is not None and totals.cost_usd >= usd:
        return f"colony budget of ${usd} reached"
    if tokens is not None and totals.tokens >= tokens:
        return f"colony token budget of {tokens} reached ({totals.tokens} tokens used)"
    return None


def colony_spend(ledger_dir: str | os.PathLike[str]) -> float:
    """Total ``cost_usd`` over every ``*.jsonl`` ledger in ``ledger_dir`` (missing dir: 0)."""
    return ledger_totals(ledger_dir).cost_usd
