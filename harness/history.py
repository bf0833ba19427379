"""A task's history, read back from the environment: every claim and how it ended, the verify
results of each attempt, and the commit that landed it (``task show``).

An attempt is a claim (event ``claim``, with its generation); it ends with the first of
``release`` / ``done`` / ``fail`` / ``defer`` by its agent, or ``reap`` of its generation by
another. Its verify log is ``runs/<task>/<generation>/verify.log``: every round appends its
commands (``$ cmd``) and, when one fails, ``[verify failed: ...]``. The landed commit is the
``done`` event's ``commit``; a task settled through a conflict task (``done`` with ``via``)
landed as that task's commit.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from harness.colony import Colony
from harness.report import replay

ENDINGS = ("release", "done", "fail", "defer")
OTHER = ("add", "retry", "undefer", "quarantine", "landing_blocked", "filing_capped", "filing_refused")
_FAILED = "[verify failed:"


def build(colony: Colony, task_id: str) -> dict[str, Any]:
    events = colony.events()
    mine = [e for e in events if e.get("task") == task_id]
    attempts = replay(mine)  # the report's replay: one reading of what ends an attempt
    ending = {id(a.ended) for a in attempts if a.ended is not None}
    # What no attempt accounts for: filing, retries, and an ending whose claim the log lost.
    other = [_outcome(e) for e in mine if e.get("event") in OTHER or (
        e.get("event") in ENDINGS and id(e) not in ending and not (e.get("event") == "done" and e.get("via")))]
    done = [e for e in mine if e.get("event") == "done"]
    return {"attempts": [{"generation": a.generation, "agent": a.agent, "ts": a.start, "claimed_at": a.start,
                          "outcome": _outcome(a.ended) if a.ended is not None else None,
                          "verify": verify_result(colony.home / "runs" / task_id / f"{int(a.generation or 0):03d}")}
                         for a in attempts],
            "events": other, "landed": _landing(done[-1], events) if done else None}


def _outcome(e: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("agent", "note", "commit", "via", "waits_on", "change", "skip_count", "created_by", "reason",
            "abandoned_by")
    return {"event": e.get("event"), "ts": e.get("ts"), **{k: e[k] for k in keep if e.get(k) is not None}}


def _landing(done: dict[str, Any], events: list[dict[str, Any]], depth: int = 0) -> dict[str, Any] | None:
    if done.get("commit"):
        return {"commit": str(done["commit"])}
    via = done.get("via")
    if via:  # settled: the conflict task's own done event has the commit (itself perhaps settled)
        for e in events:
            if e.get("event") == "done" and e.get("task") == via and depth < 10:
                return {"via": via, "commit": (_landing(e, events, depth + 1) or {}).get("commit")}
        return {"via": via, "commit": None}
    return None  # done without a change


def verify_result(run: Path) -> dict[str, Any] | None:
    """What an attempt's verify.log says: rounds run, rounds failed, and whether the last passed.
    None when the attempt never ran verify."""
    try:
        text = (run / "verify.log").read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    failed, after_failure, commands = 0, False, 0
    for line in text.splitlines():
        if line.startswith(_FAILED):
            failed, after_failure = failed + 1, False
        elif line.startswith("$ "):
            commands, after_failure = commands + 1, True
    # The last round passed when commands ran after the last failure (or there was none at all).
    passed = commands > 0 and (failed == 0 or after_failure)
    return {"log": str(run / "verify.log"), "failed_rounds": failed, "passed": passed}


def render(h: dict[str, Any]) -> list[str]:
    """Readable lines, oldest first: each attempt with its verify result and how it ended."""
    items: list[tuple[float, list[str]]] = []
    for e in h["events"]:
        text = f"filed by {e.get('created_by', '?')}" if e["event"] == "add" else _describe(e)
        items.append((float(e["ts"] or 0), [f"  {_when(e['ts'])}  {text}"]))
    for a in h["attempts"]:
        lines = [f"  {_when(a['claimed_at'])}  claim, generation {a['generation']}, by {a['agent']}"]
        v = a["verify"]
        if v is not None:
            rounds = v["failed_rounds"]
            verdict = ("passed" + (f" after {rounds} failed round(s)" if rounds else "")) if v["passed"] else (
                "failed" + (f" ({rounds} round(s))" if rounds else ""))
            lines.append(f"  {'':19}    verify {verdict}: {v['log']}")
        o = a["outcome"]
        lines.append(f"  {_when(o['ts']) if o else '':19}    -> {_describe(o)}")
        items.append((float(a["ts"] or 0), lines))  # the event's time: ordered among the other events
    out = ["history:"] + [line for _, lines in sorted(items, key=lambda i: i[0]) for line in lines]
    landed = h["landed"]
    if landed and landed.get("via"):
        out.append(f"landed: through {landed['via']} as {landed.get('commit') or '?'}")
    elif landed:
        out.append(f"landed: {landed['commit']}")
    return out


def _describe(o: dict[str, Any] | None) -> str:
    if o is None:
        return "still held (no outcome yet)"
    kind, note = o["event"], _first_line(o.get("note"))
    if kind == "release":
        return "released" + (f": {note}" if note else "")
    if kind == "reap":
        return f"reaped by {o.get('agent')} (abandoned by {o.get('abandoned_by')})"
    if kind == "done":
        return f"done, landed {o['commit']}" if o.get("commit") else "done without change"
    if kind == "fail":
        return "failed" + (f": {note}" if note else "")
    if kind == "defer":
        return f"deferred into {o.get('waits_on')} (a merge conflict)"
    if kind == "retry":
        return f"re-opened by {o.get('agent')} (task retry)"
    if kind == "undefer":
        return "its conflict task failed: back to work on the current main"
    return str(kind) + (f": {o['reason']}" if o.get("reason") else "")


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:160] if lines else ""


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts))) if ts else "?"
