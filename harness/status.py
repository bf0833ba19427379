"""What the colony is doing and what it cost, read from the environment alone (nothing is asked
of any agent): agents (working, idle, dead or exited), tasks by status, the pace and the ETA, the
last landing, open conflicts, a red main, spend against the budget, cool-downs, tasks backing off
and the disk the agents' worktrees take.

`snapshot` is the whole picture (`status --json`); `render` draws it in 80 columns; `progress`
is the cheap part of it the launcher redraws every few seconds, and `progress_line` its one line.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from dataclasses import asdict
from typing import Any

from harness import diskuse, faults, gate
from harness.colony import Colony
from harness.store import STATUSES
from harness.meter import ledger_totals
from harness.models.retry import CoolDown
from harness.pidlock import agent_lock, holder, running
from harness.timeline import EventTail, Timeline
from harness.textfmt import clip, duration

WIDTH = 80
ALIVE = ("working", "idle", "starting")


# -- the facts --------------------------------------------------------------------------------------
def agent_state(colony: Colony, beat: dict[str, Any], now: float) -> tuple[str, str | None]:
    """working, idle, starting, exited or dead, and why when dead. A process gone on this host is
    dead at once (its pid, or its agent lock freed by the kernel), not a lease later; an agent on
    another host, or one with no pid (`agent heartbeat` from a script), is judged by its lease."""
    if beat.get("state") == "exited":
        return "exited", None
    agent, pid = str(beat.get("agent")), beat.get("pid")
    here = beat.get("host") == colony.host
    gone = None
    if here and pid and not running(int(pid)):
        gone = f"pid {pid} is gone"
    lock = agent_lock(colony.home, agent)
    held = holder(lock) if lock.exists() else None
    if gone is None and lock.exists() and held is None and here:
        gone = "its process is gone (agent lock free)"
    if gone is not None:
        if held is not None and held.pid != pid and held.host == colony.host and running(held.pid):
            return "starting", None  # restarted: the new process holds the id, its first beat is due
        return "dead", gone + " without its goodbye heartbeat"
    age = now - float(beat.get("ts", 0))
    if age > colony.config.lease_ttl:
        return "dead", f"no heartbeat for {duration(age)} (lease {duration(colony.config.lease_ttl)})"
    return ("working" if beat.get("task") else "idle"), None


def _claims(colony: Colony, now: float) -> list[dict[str, Any]]:
    active = []
    for path in sorted(colony.store.task_dir("active").glob("*.yaml")):
        claim = colony.current_claim(path.name[:-5])
        if claim:
            active.append({"task": claim.task_id, "agent": claim.agent, "generation": claim.generation,
                           "for_s": round(now - claim.claimed_at, 1)})
    return active


def _agents(colony: Colony, active: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    held = {(a["agent"], a["task"]): a["for_s"] for a in active}
    agents = []
    for beat_file in sorted(colony.home.glob("agents/*/heartbeat.json")):
        try:
            beat = json.loads(beat_file.read_text() or "{}")
        except (OSError, ValueError):
            continue  # torn by a writer this very moment, or removed: next time
        if not isinstance(beat, dict):
            continue
        state, why = agent_state(colony, beat, now)
        task = beat.get("task") if state in ALIVE else None
        agents.append({"agent": beat.get("agent"), "role": beat.get("role"), "task": beat.get("task"),
                       "state": state, "why": why, "alive": state in ALIVE, "pid": beat.get("pid"),
                       "host": beat.get("host"), "beat_age_s": round(now - float(beat.get("ts", 0)), 1),
                       "on_task_s": held.get((beat.get("agent"), task)) if task else None,
                       "waiting": beat.get("waiting")})
    return agents


def progress(colony: Colony, timeline: Timeline, now: float | None = None) -> dict[str, Any]:
    """The cheap part: task counts (folder listings), agents (one heartbeat each), spend (the
    ledgers) and the pace from `timeline`. What the launcher computes every few seconds."""
    now = time.time() if now is None else now
    counts = {s: sum(1 for n in os.listdir(colony.store.task_dir(s)) if n.endswith(".yaml") and not n.startswith("."))
              for s in STATUSES}
    counts["quarantine"] = sum(1 for n in os.listdir(colony.store.task_dir("quarantine")) if not n.endswith(".reason"))
    active = _claims(colony, now)
    totals = ledger_totals(colony.home / "ledger")
    cfg = colony.config
    return {
        "now": round(now, 3), "tasks": counts, "active": active, "agents": _agents(colony, active, now),
        "spend": asdict(totals) | {"tokens": totals.tokens},
        "budget_usd": cfg.budget_usd, "budget_tokens": cfg.budget_tokens,
        **timeline.pace(counts["pending"] + counts["active"], now),
    }


def snapshot(colony: Colony, disk: bool = True, tail: EventTail | None = None) -> dict[str, Any]:
    """Everything `status` knows (the JSON of `status --json`). `tail` follows the event log
    across calls (`--watch`); `disk=False` leaves out the one costly figure."""
    now = time.time()
    timeline = (tail or EventTail(colony.store.events_path)).read()
    s = progress(colony, timeline, now)
    pool = colony.pool(None)  # the scheduling index: kinds and back-offs without parsing task files
    pool.refresh()
    conflicts = sorted((tid, pool.status.get(tid), e.resolves) for tid, e in pool.entries.items()
                       if e.kind == "merge_conflict" and pool.status.get(tid) in ("pending", "active"))
    backing = sorted((e.not_before, tid) for tid, e in pool.entries.items()
                     if pool.status.get(tid) == "pending" and e.not_before is not None and e.not_before > now)
    cool = CoolDown(colony.home / "cooldown.json")
    until = cool.until()
    s |= {
        "landed": len(timeline.landings), "conflicts": timeline.deferred, "reaped": timeline.reaped,
        "open_conflicts": [{"task": t, "status": st, "resolves": r} for t, st, r in conflicts],
        "backing_off": [{"task": t, "until": nb, "in_s": round(nb - now, 1)} for nb, t in backing],
        "cooldown": {"until": until, "in_s": round(until - now, 1), "outages": cool.outages()} if until > now else None,
        "disk": diskuse.usage(colony.repo, {p.name for p in (colony.home / "agents").iterdir() if p.is_dir()})
        if disk else None,
        "stop_requested": colony.stop_path.exists(),
        "fault": faults.read(colony.home),
        "main": gate.main_now(colony),
        "repo": str(colony.repo), "branch": colony.config.branch,
    }
    return s


# -- drawing ----------------------------------------------------------------------------------------
def fmt_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _clock(ts: float, now: float) -> str:
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))


def _wrap(head: str, text: str) -> list[str]:
    """A line of prose under a label, wrapped to the width: a reason must be read whole."""
    return textwrap.wrap(text, WIDTH, initial_indent=f"{head:<9}", subsequent_indent=" " * 9,
                         break_on_hyphens=False, break_long_words=True) or [head]


def _cost(s: dict[str, Any], short: bool = False) -> str:
    sp = s["spend"]
    usd = f"${sp['cost_usd']:.2f}"
    if s.get("budget_usd"):
        usd += f"/${s['budget_usd']:g}" if short else \
            f" of ${s['budget_usd']:g} ({100 * sp['cost_usd'] / s['budget_usd']:.0f}%)"
    tokens = f"{fmt_count(sp['tokens'])} tok" if short else f"{fmt_count(sp['tokens'])} tokens"
    if s.get("budget_tokens"):
        tokens += f"/{fmt_count(s['budget_tokens'])}" if short else \
            f" of {fmt_count(s['budget_tokens'])} ({100 * sp['tokens'] / s['budget_tokens']:.0f}%)"
    return f"{usd}, {tokens}" if short else f"{usd}; {tokens}"


def progress_line(s: dict[str, Any]) -> str:
    """One line for the launcher and `status --watch` without a terminal: landed/total, the ETA,
    agents alive, cost; the most telling first, since a narrow terminal cuts the end off."""
    t = s["tasks"]
    total = sum(t[k] for k in STATUSES)
    alive = sum(1 for a in s["agents"] if a["alive"])
    dead = sum(1 for a in s["agents"] if a["state"] == "dead")
    left = t["pending"] + t["active"]
    eta = s.get("eta_s")
    return " | ".join([
        f"landed {s['landed_tasks']}/{total}, {t['active']} active" + (f", {t['failed']} failed" if t["failed"] else ""),
        "nothing left" if not left else "ETA " + (duration(eta) if eta is not None else "?"),
        f"{alive} agent{'s' * (alive != 1)} alive" + (f", {dead} dead" if dead else ""),
        _cost(s, short=True)])


def render(s: dict[str, Any]) -> str:
    """The snapshot as text, no line wider than 80 columns."""
    now, t, sp = s["now"], s["tasks"], s["spend"]
    lines = [clip(f"colony   {s['repo']} (lands on {s['branch']})", WIDTH)]
    if s.get("started_at"):
        lines.append(f"started  {_clock(s['started_at'], now)}, {duration(s['elapsed_s'])} ago "
                     f"(now {time.strftime('%H:%M:%S', time.localtime(now))})")
    lines.append("tasks    " + ", ".join(f"{k} {t[k]}" for k in STATUSES)
                 + (f", quarantined {t['quarantine']}" if t.get("quarantine") else ""))
    lines.append(f"landed   {s['landed_last_hour']} in the last hour, {s['landed_since_start']} since start, "
                 f"{s['landed']} in all")
    last = s.get("last_landing")
    if last:
        lines.append(clip(f"last     {_clock(last['ts'], now)} {str(last['commit'])[:10]} "
                          f"{last['task']} ({last['agent']})", WIDTH))
    left = t["pending"] + t["active"]
    if not left:
        lines.append("pace     nothing left to do")
    elif s.get("rate_per_hour"):
        lines.append(f"pace     {s['rate_per_hour']:.1f} tasks/h ({s['rate_window']}); ETA {duration(s['eta_s'])} "
                     f"for {left} pending + active")
    else:
        lines.append(f"pace     no task finished yet: no ETA for {left} pending + active")
    lines.append(f"cost     {_cost(s)}; {int(sp['calls'])} calls")
    lines.append(clip(f"tokens   in {fmt_count(sp['input_tokens'])}, out {fmt_count(sp['output_tokens'])}, "
                      f"cache read {fmt_count(sp['cache_read_tokens'])}, "
                      f"cache write {fmt_count(sp['cache_write_tokens'])}", WIDTH))
    main = s.get("main")
    if main and main["current"] and not main["ok"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(main["since"] or 0)))
        lines += _wrap("main", f"MAIN IS RED since {since}: `{main['command']}` fails on main; only "
                       f"{main['task']} is worked on until main is green")
    if s.get("fault"):
        lines += _wrap("FAULT", f"the colony stopped: {s['fault'].get('message', '')}")
    if s.get("stop_requested"):
        lines.append("stop     STOP requested: agents finish their task and exit")
    if s.get("cooldown"):
        c = s["cooldown"]
        lines.append(f"cooldown no model calls for {duration(c['in_s'])} more (rate limit or outage"
                     + (f"; {c['outages']} outage{'s' * (c['outages'] != 1)} in a row" if c["outages"] else "") + ")")
    if s.get("backing_off"):
        b = s["backing_off"]
        lines.append(clip(f"backoff  {len(b)}: " + ", ".join(f"{x['task']} in {duration(x['in_s'])}" for x in b), WIDTH))
    if s.get("open_conflicts"):
        c = s["open_conflicts"]
        lines.append(clip(f"conflict {len(c)} open: " + ", ".join(f"{x['task']} ({x['status']})" for x in c), WIDTH))
    if s.get("disk"):
        d = s["disk"]
        where = f" under {', '.join(d['roots'])}" if d["roots"] else ""
        lines.append(clip(f"disk     {fmt_bytes(d['bytes'])} in {len(d['by_agent'])} agent worktrees{where}", WIDTH))
    lines += _agent_lines(s)
    return "\n".join(clip(line, WIDTH) for line in lines)  # the net under every line above


def _agent_lines(s: dict[str, Any]) -> list[str]:
    agents = s["agents"]
    states = {st: sum(1 for a in agents if a["state"] == st) for st in ("working", "idle", "starting", "dead",
                                                                         "exited")}
    alive = states["working"] + states["idle"] + states["starting"]
    head = f"agents   {alive} alive ({states['working']} working, {states['idle']} idle"
    head += f", {states['starting']} starting)" if states["starting"] else ")"
    head += f", {states['dead']} dead, {states['exited']} exited"
    lines = [head]
    shown = [a for a in agents if a["state"] != "exited"]
    if shown:
        lines.append(f"  {'agent':<16} {'role':<8} {'state':<8} {'task':<26} {'on task':>7} {'beat':>6}")
    for a in shown:
        lines.append(f"  {clip(a['agent'], 16):<16} {clip(a['role'], 8):<8} {a['state']:<8} "
                     f"{clip(a['task'], 26):<26} {duration(a['on_task_s']):>7} "
                     f"{duration(a['beat_age_s']):>6}")
        if a.get("why"):
            lines.append(clip(f"    {a['why']}", WIDTH))
        if a.get("waiting") and a["alive"]:
            lines += textwrap.wrap(str(a["waiting"]), WIDTH, initial_indent="    ", subsequent_indent="    ",
                                   break_on_hyphens=False)
    known = {a["agent"] for a in agents if a["alive"]}
    for c in s["active"]:  # a claim whose holder has no live heartbeat: an external agent, or reaped soon
        if c["agent"] not in known:
            lines.append(clip(f"  claim {c['task']} held by {c['agent']} (generation {c['generation']}, "
                              f"{duration(c['for_s'])})", WIDTH))
    return lines


def nest_line(s: dict[str, Any]) -> str:
    """A nest's survey in one line, for a log (`status --watch --nest URL >> night.log`)."""
    states = [a["state"] for a in s["agents"]]
    return (", ".join(f"{s['tasks'][k]} {k}" for k in STATUSES) + f" | {states.count('working')} working, "
            f"{states.count('idle')} idle, {states.count('silent')} silent" + (" | STOP" if s["stop_requested"] else ""))


def render_nest(s: dict[str, Any]) -> str:
    """A nest's survey (nest.Nest.survey) in 80 columns: what every machine's agents share."""
    counts = s["tasks"]
    lines = [f"nest     {clip(s['nest'], WIDTH - 9)}", f"branch   {s['branch']}" + ("   STOP requested" if s["stop_requested"] else ""),
             "tasks    " + ", ".join(f"{counts[k]} {k}" for k in (*STATUSES, "quarantine") if counts.get(k) or k in STATUSES)]
    states = [a["state"] for a in s["agents"]]
    lines.append(f"agents   {sum(st in ('working', 'idle') for st in states)} beating ({states.count('working')} working, "
                 f"{states.count('idle')} idle), {states.count('silent')} silent past the lease "
                 f"({duration(s['lease_ttl'])}), {states.count('exited')} exited")
    for a in s["agents"]:
        if a["state"] != "exited":
            lines.append(clip(f"  {a['agent']:<16} {str(a['host']):<14} {a['state']:<8} {a['task'] or '-':<24} "
                              f"beat {duration(a['beat_age_s'])} ago", WIDTH))
    if s["claims"]:
        lines.append("claims")
        for c in s["claims"]:
            stale = "  stale: the next claim reaps it" if c["stale"] else ""
            lines.append(clip(f"  {c['task']:<20} {c['agent']:<14} {c['host']} gen {c['generation']} "
                              f"{duration(c['claimed_s'])}{stale}", WIDTH))
    return "\n".join(lines)
