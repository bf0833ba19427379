"""What the colony is doing and what it cost, read from the environment alone (nothing is asked
of any agent): tasks by status, who holds what, which agents are alive, tokens and spend."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from harness import faults, gate
from harness.colony import STATUSES, Colony
from harness.meter import ledger_totals


def snapshot(colony: Colony) -> dict[str, Any]:
    now = time.time()
    counts = {s: sum(1 for _ in colony.task_dir(s).glob("*.yaml")) for s in STATUSES}
    counts["quarantine"] = sum(1 for p in colony.task_dir("quarantine").iterdir() if not p.name.endswith(".reason"))
    active = []
    for path in sorted(colony.task_dir("active").glob("*.yaml")):
        claim = colony.current_claim(path.name[:-5])
        if claim:
            active.append({"task": claim.task_id, "agent": claim.agent, "generation": claim.generation,
                           "for_s": round(now - claim.claimed_at, 1)})
    agents = []
    for beat_file in sorted(colony.home.glob("agents/*/heartbeat.json")):
        beat = json.loads(beat_file.read_text() or "{}")
        age = now - float(beat.get("ts", 0))
        agents.append({"agent": beat.get("agent"), "role": beat.get("role"), "task": beat.get("task"),
                       "beat_age_s": round(age, 1), "waiting": beat.get("waiting"),
                       "alive": age <= colony.config.lease_ttl and beat.get("state") != "exited"})
    spend = asdict(ledger_totals(colony.home / "ledger"))
    events = colony.events()
    return {
        "tasks": counts, "active": active, "agents": agents, "spend": spend,
        "budget_usd": colony.config.budget_usd, "budget_tokens": colony.config.budget_tokens,
        "landed": sum(1 for e in events if e.get("event") == "done" and e.get("commit")),
        "conflicts": sum(1 for e in events if e.get("event") == "defer"),
        "reaped": sum(1 for e in events if e.get("event") == "reap"),
        "stop_requested": colony.stop_path.exists(),
        "fault": faults.read(colony.home),
        "main": gate.main_now(colony),
    }


def render(s: dict[str, Any]) -> str:
    t, sp = s["tasks"], s["spend"]
    lines = [
        "tasks: " + "  ".join(f"{k} {v}" for k, v in t.items()),
        f"landed {s['landed']}, conflicts turned into tasks {s['conflicts']}, stale claims reaped {s['reaped']}",
        f"spend: ${sp['cost_usd']:.4f} over {int(sp['calls'])} model calls"
        + (f" (budget ${s['budget_usd']})" if s["budget_usd"] is not None else "")
        + f"; tokens in {int(sp['input_tokens'])}, out {int(sp['output_tokens'])}, "
          f"cache read {int(sp['cache_read_tokens'])}, cache write {int(sp['cache_write_tokens'])}"
        + (f" (token budget {s['budget_tokens']})" if s.get("budget_tokens") is not None else ""),
    ]
    main = s.get("main")
    if main and main["current"] and not main["ok"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(main["since"] or 0)))
        lines.append(f"MAIN IS RED since {since}: `{main['command']}` fails on main; only {main['task']} is "
                     "worked on until main is green")
    if s.get("fault"):
        lines.append(f"FAULT (the colony stopped): {s['fault'].get('message', '')}")
    alive = [a for a in s["agents"] if a["alive"]]
    lines.append(f"agents: {len(alive)} alive of {len(s['agents'])} seen" + (" — STOP requested" if s[
        "stop_requested"] else ""))
    for a in s["active"]:
        lines.append(f"  {a['agent']:<20} {a['task']}  (generation {a['generation']}, {a['for_s']:.0f} s)")
    for a in alive:
        if a.get("waiting"):
            lines.append(f"  {a['agent']}: {a['waiting']}")
    return "\n".join(lines)
