"""The morning account: what each task went through, what landed, what failed and why, and what
it cost — rebuilt from the event log, the notes and the ledgers alone; then the secrets scan of
everything the run wrote down (secrets_scan.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import secrets_scan
from harness.colony import Colony
from harness.fsutil import read_lines
from harness.redact import redact_data, secret_env


@dataclass
class TaskAccount:
    id: str
    title: str
    status: str
    claims: int = 0
    agents: list[str] = field(default_factory=list)
    commit: str | None = None
    via: str | None = None  # the conflict task that landed it
    reaped: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    first_claim: float | None = None
    finished: float | None = None
    last_note: str | None = None

    @property
    def hours(self) -> float | None:
        if self.first_claim is None or self.finished is None:
            return None
        return (self.finished - self.first_claim) / 3600


def build(colony: Colony) -> dict[str, Any]:
    accounts = {t.id: TaskAccount(t.id, t.title, st) for st, t in colony.listing("all")}
    for ev in colony.events():
        acc = accounts.get(str(ev.get("task")))
        if acc is None:
            continue
        kind, agent = ev.get("event"), ev.get("agent")
        if kind == "claim":
            acc.claims += 1
            acc.first_claim = acc.first_claim or ev.get("ts")
            if agent and agent not in acc.agents:
                acc.agents.append(str(agent))
        elif kind == "done":
            acc.commit, acc.via, acc.finished = ev.get("commit"), ev.get("via"), ev.get("ts")
        elif kind == "fail":
            acc.finished = ev.get("ts")
        elif kind == "reap":
            acc.reaped += 1
    by_agent: dict[str, float] = defaultdict(float)
    by_model: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    for ledger in sorted(colony.home.glob("ledger/*.jsonl")):
        for entry in read_lines(ledger):
            cost = float(entry.get("cost_usd", 0) or 0)
            by_agent[str(entry.get("agent"))] += cost
            by_model[str(entry.get("model"))] += cost
            for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
                tokens[key] += int(entry.get(key, 0) or 0)
            acc = accounts.get(str(entry.get("task")))
            if acc is not None:
                acc.cost_usd += cost
                acc.calls += 1
    for acc in accounts.values():
        if acc.status in ("failed", "pending"):
            notes = colony.notes(acc.id)
            acc.last_note = notes[-1]["text"] if notes else None
    return {"tasks": [asdict(a) | {"hours": a.hours} for a in accounts.values()],
            "cost_by_agent": dict(by_agent), "cost_by_model": dict(by_model), "tokens": dict(tokens),
            "cost_usd": sum(by_agent.values())}


def account(colony: Colony, environ: Mapping[str, str]) -> dict[str, Any]:
    """``build`` plus the secrets scan for the secrets of ``environ`` (the report's environment).
    The account itself is redacted of every written form of them: a failed task's last note is
    shown, and it may be where the key leaked."""
    secrets = secret_env(environ)
    scan = secrets_scan.scan(colony, secrets)
    built: dict[str, Any] = redact_data(build(colony), secrets_scan.literals(secrets))
    return built | {"secrets_scan": scan.as_dict()}


def summary_line(r: dict[str, Any]) -> str:
    """One line: what landed, what was done without a change, failed, is left; the spend."""
    tasks = r["tasks"]
    landed = sum(1 for t in tasks if t["status"] == "done" and (t["commit"] or t["via"]))
    unchanged = sum(1 for t in tasks if t["status"] == "done") - landed
    failed = sum(1 for t in tasks if t["status"] == "failed")
    waiting = sum(1 for t in tasks if t["status"] in ("pending", "active"))
    return (f"{landed} landed, {unchanged} done without change, {failed} failed, {waiting} still pending or "
            f"active; ${r['cost_usd']:.4f} spent")


def render(r: dict[str, Any]) -> str:
    tasks = r["tasks"]
    landed = [t for t in tasks if t["status"] == "done" and (t["commit"] or t["via"])]
    failed = [t for t in tasks if t["status"] == "failed"]
    waiting = [t for t in tasks if t["status"] in ("pending", "active")]
    out = [summary_line(r)]
    if landed:
        out.append("\nlanded:")
        for t in sorted(landed, key=lambda t: t["finished"] or 0):
            where = t["commit"][:10] if t["commit"] else f"via {t['via']}"
            extra = f", {t['claims']} claims" if t["claims"] > 1 else ""
            out.append(f"  {t['id']:<40} {where:<24} {', '.join(t['agents'])}{extra}  ${t['cost_usd']:.4f}")
    for title, group in (("failed", failed), ("not finished", waiting)):
        if group:
            out.append(f"\n{title}:")
            for t in group:
                note = (t["last_note"] or "").splitlines()[0][:100] if t["last_note"] else ""
                out.append(f"  {t['id']:<40} {t['claims']} claims  {note}")
    if r["cost_by_agent"]:
        out.append("\ncost by agent: " + ", ".join(f"{a} ${c:.4f}" for a, c in sorted(r["cost_by_agent"].items())))
        out.append("cost by model: " + ", ".join(f"{m} ${c:.4f}" for m, c in sorted(r["cost_by_model"].items())))
        out.append("tokens: " + ", ".join(f"{k.replace('_tokens', '')} {v}" for k, v in r["tokens"].items()))
    if "secrets_scan" in r:
        out.append("\n" + secrets_scan.render(r["secrets_scan"]))
    return "\n".join(out)
