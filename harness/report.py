"""The morning account: every task with its outcome and times, every attempt (who held what, from
when to when, how it ended), the conflicts and how they were resolved, and what it cost by agent,
role and model — rebuilt from the environment alone (events, notes, ledgers, task files and
heartbeats); then the secrets scan of everything the run wrote down (secrets_scan.py).

``build`` makes one dict (the ``--json`` form); ``render`` prints it for an 80-column terminal and
report_html.py draws it as a page.
"""

from __future__ import annotations

import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import secrets_scan
from harness.colony import Colony
from harness.environment import Environment
from harness.fsutil import read_json
from harness.meter import TOKEN_KEYS, ledger_entries
from harness.redact import redact_data, secret_env
from harness.textfmt import clip, duration

if TYPE_CHECKING:
    from harness.nest import Nest

WIDTH = 80
# A task's outcome. Done tasks split by what their `done` event says: a commit on main, the
# conflict task that landed their work (`via`), main turned green without them (`obsolete`), or
# nothing landed (`change: false`, or a `task done` by hand).
DONE_OUTCOMES = ("landed", "resolved", "unchanged", "obsolete")
NO_CHANGE = ("unchanged", "obsolete")
# How one attempt (a claim) ended: the event that closed it.
ATTEMPT_END = {"release": "released", "fail": "failed", "defer": "conflict", "reap": "reaped"}


@dataclass
class TaskAccount:
    id: str
    title: str
    status: str
    kind: str = "task"
    role: str | None = None
    resolves: str | None = None
    skip_count: int = 0
    outcome: str = ""
    claims: int = 0
    agents: list[str] = field(default_factory=list)
    commit: str | None = None
    via: str | None = None  # the conflict task that landed it
    conflict: str | None = None  # the merge_conflict task filed when its landing conflicted
    reaped: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    first_claim: float | None = None
    finished: float | None = None
    busy_s: float = 0.0  # time held by an agent, over all attempts
    last_note: str | None = None

    @property
    def duration_s(self) -> float | None:
        if self.first_claim is None or self.finished is None:
            return None
        return self.finished - self.first_claim

    @property
    def hours(self) -> float | None:
        d = self.duration_s
        return None if d is None else d / 3600


@dataclass
class Attempt:
    """One claim, from the claim to the event that ended it (``end`` None: still open)."""

    task: str
    agent: str
    generation: int | None
    start: float
    end: float | None = None
    outcome: str = "open"  # landed unchanged obsolete resolved conflict released failed reaped open
    ended: Mapping[str, Any] | None = None  # the event that ended it (None: open, or taken over unseen)


def _done_outcome(ev: Mapping[str, Any]) -> str:
    if ev.get("commit"):
        return "landed"
    if ev.get("via"):
        return "resolved"
    return "obsolete" if ev.get("obsolete") else "unchanged"


def replay(events: Iterable[Mapping[str, Any]], accounts: dict[str, TaskAccount] | None = None) -> list[Attempt]:
    """Replay the event log: a claim opens an attempt on its task (one holder at a time), the
    holder's release, done, fail or defer closes it, and so does a reap, at the reaper's time.
    ``accounts`` (by task id), when given, gather each task's claims, agents and ending."""
    accounts = {} if accounts is None else accounts
    out: list[Attempt] = []
    open_: dict[str, Attempt] = {}
    for ev in events:
        tid, kind, ts = str(ev.get("task")), ev.get("event"), float(ev.get("ts", 0) or 0)
        acc = accounts.get(tid)
        if kind == "claim":
            if tid in open_:  # a claim over an open one: the earlier holder was taken over unseen
                _close(open_.pop(tid), ts, "reaped")
            a = Attempt(tid, str(ev.get("agent")), ev.get("generation"), ts)
            open_[tid] = a
            out.append(a)
            if acc is not None:
                acc.claims += 1
                acc.first_claim = acc.first_claim or ts
                if a.agent not in acc.agents:
                    acc.agents.append(a.agent)
        elif kind == "done":
            if tid in open_:
                _close(open_.pop(tid), ts, _done_outcome(ev), ev)
            if acc is not None:
                acc.commit, acc.via, acc.finished = ev.get("commit"), ev.get("via"), ts
                acc.outcome = _done_outcome(ev)
        elif kind in ATTEMPT_END:
            if tid in open_:
                _close(open_.pop(tid), ts, ATTEMPT_END[str(kind)], ev)
            if acc is not None:
                if kind == "fail":
                    acc.finished = ts
                elif kind == "reap":
                    acc.reaped += 1
                elif kind == "defer":
                    acc.conflict = str(ev.get("waits_on"))
    return out


def _close(a: Attempt, ts: float, outcome: str, ev: Mapping[str, Any] | None = None) -> None:
    a.end, a.outcome, a.ended = ts, outcome, ev


def _roles(home: Path) -> dict[str, str]:
    """Agent -> role, as its heartbeat last said it (an agent keeps its role for its life)."""
    roles: dict[str, str] = {}
    for beat_file in sorted(home.glob("agents/*/heartbeat.json")):
        beat = read_json(beat_file)
        if isinstance(beat, dict) and beat.get("agent") and beat.get("role"):
            roles[str(beat["agent"])] = str(beat["role"])
    return roles


def _ledger(home: Path) -> list[dict[str, Any]]:
    return sorted(ledger_entries(home / "ledger"), key=lambda e: float(e.get("ts", 0) or 0))


def build(colony: Environment, calls: list[dict[str, Any]] | None = None,
          roles: dict[str, str] | None = None) -> dict[str, Any]:
    """The account of ``colony``: its tasks, events and notes, the model ``calls`` (ledger
    entries, oldest first) and the agents' ``roles`` (default: the ledgers and heartbeats in
    the colony's home; a nest's: nest_sources)."""
    accounts: dict[str, TaskAccount] = {}
    for st, t in colony.listing("all"):
        accounts[t.id] = TaskAccount(t.id, t.title, st, kind=t.kind, role=t.role, resolves=t.resolves,
                                     skip_count=t.skip_count)
    events = colony.events()
    attempts = replay(events, accounts)
    roles = _roles(colony.home) if roles is None else roles

    by_agent: dict[str, float] = defaultdict(float)
    by_model: dict[str, dict[str, Any]] = {}
    tokens: dict[str, int] = {k: 0 for k in TOKEN_KEYS}
    spend: list[list[float]] = []  # [ts, cumulative USD, cumulative tokens]
    total_usd, total_tok = 0.0, 0
    for entry in _ledger(colony.home) if calls is None else calls:
        cost = entry["cost_usd"]
        counts = {k: entry[k] for k in TOKEN_KEYS}
        by_agent[str(entry.get("agent"))] += cost
        m = by_model.setdefault(str(entry.get("model")), {"calls": 0, "cost_usd": 0.0, "tasks": set()}
                                | {k: 0 for k in TOKEN_KEYS})
        m["calls"] += 1
        m["cost_usd"] += cost
        m["tasks"].add(str(entry.get("task")))
        for k, v in counts.items():
            tokens[k] += v
            m[k] += v
        total_usd, total_tok = total_usd + cost, total_tok + sum(counts.values())
        spend.append([float(entry.get("ts", 0) or 0), round(total_usd, 8), total_tok])
        acc = accounts.get(str(entry.get("task")))
        if acc is not None:
            acc.cost_usd += cost
            acc.calls += 1

    run = _run_span(events, attempts, spend)
    for a in attempts:  # an attempt still open (its agent gone unseen) counts up to the run's end
        if a.task in accounts:
            accounts[a.task].busy_s += (a.end if a.end is not None else run["end"]) - a.start
    for acc in accounts.values():
        # The task file's folder is the truth; a done file with no done event was moved by hand.
        acc.outcome = (acc.outcome or "unchanged") if acc.status == "done" else acc.status
        if acc.outcome not in ("landed", "resolved"):
            notes = colony.notes(acc.id)
            acc.last_note = notes[-1]["text"] if notes else None
    tasks = [asdict(a) | {"hours": a.hours, "duration_s": a.duration_s} for a in accounts.values()]
    models = {name: m | {"tasks": len(m["tasks"]), "landed": sum(
        1 for t in m["tasks"] if t in accounts and accounts[t].outcome in ("landed", "resolved"))}
        for name, m in by_model.items()}
    return {
        "tasks": tasks, "attempts": [asdict(a) for a in attempts],
        "outcomes": dict(Counter(t["outcome"] for t in tasks)),
        "run": run,
        "landings": sorted([float(e["ts"]), str(e.get("task"))] for e in events
                           if e.get("event") == "done" and e.get("commit")),
        "conflicts": _conflicts(events, accounts),
        "roles": roles, "by_role": _by_role(attempts, roles, by_agent, run["end"]), "by_model": models,
        "cost_by_agent": dict(by_agent), "cost_by_model": {n: m["cost_usd"] for n, m in by_model.items()},
        "tokens": tokens, "cost_usd": sum(by_agent.values()), "spend": spend,
    }


def _run_span(events: list[dict[str, Any]], attempts: list[Attempt], spend: list[list[float]]) -> dict[str, Any]:
    """From the first claim (or model call) to the last thing written: tasks filed the day before
    are not part of the night."""
    starts = [a.start for a in attempts] + [s[0] for s in spend[:1]]
    if not starts:
        return {"start": None, "end": None, "seconds": 0.0, "agents": 0, "attempts": 0}
    start = min(starts)
    end = max([float(e.get("ts", 0) or 0) for e in events] + [s[0] for s in spend[-1:]] + [start])
    return {"start": start, "end": end, "seconds": end - start, "agents": len({a.agent for a in attempts}),
            "attempts": len(attempts)}


def _conflicts(events: list[dict[str, Any]], accounts: dict[str, TaskAccount]) -> list[dict[str, Any]]:
    """Each landing that conflicted: who hit it when, the merge_conflict task filed, how that ended."""
    out = []
    for ev in events:
        if ev.get("event") != "defer":
            continue
        ctask = accounts.get(str(ev.get("waits_on")))
        out.append({"task": ev.get("task"), "agent": ev.get("agent"), "ts": ev.get("ts"),
                    "conflict_task": ev.get("waits_on"),
                    "outcome": ctask.outcome if ctask else "unknown",
                    "resolved_by": ctask.agents[-1] if ctask and ctask.agents else None,
                    "commit": ctask.commit if ctask else None, "finished": ctask.finished if ctask else None})
    return out


def _by_role(attempts: list[Attempt], roles: dict[str, str], cost_by_agent: dict[str, float],
             end: float | None) -> dict[str, Any]:
    """Per role: its agents, their attempts and how those ended, time held, spend."""
    out: dict[str, dict[str, Any]] = {}
    for agent in sorted({a.agent for a in attempts} | set(cost_by_agent)):
        out.setdefault(roles.get(agent, "unknown"), {"agents": 0, "attempts": 0, "busy_s": 0.0, "cost_usd": 0.0,
                                                    "ended": {}})["agents"] += 1
    for a in attempts:
        r = out[roles.get(a.agent, "unknown")]
        r["attempts"] += 1
        r["busy_s"] += (a.end if a.end is not None else end or a.start) - a.start
        r["ended"][a.outcome] = r["ended"].get(a.outcome, 0) + 1
    for agent, cost in cost_by_agent.items():
        out[roles.get(agent, "unknown")]["cost_usd"] += cost
    return out


def account(colony: Colony, environ: Mapping[str, str], nest: Nest | None = None) -> dict[str, Any]:
    """``build`` plus the secrets scan for the secrets of ``environ`` (the report's environment).
    The account itself is redacted of every written form of them: a failed task's last note is
    shown, and it may be where the key leaked. With ``nest``, the account is the nest's (every
    host's tasks and spend) and ``colony`` this host's, whose files are scanned with the
    commits landed on the nest."""
    secrets = secret_env(environ)
    if nest is None:
        scan = secrets_scan.scan(colony, secrets)
        built: dict[str, Any] = build(colony)
    else:
        branch = "stigmergy-nest/report"  # a local branch of the report's own, at the nest's tip
        nest.pull(colony.repo, f"refs/heads/{branch}")
        scan = secrets_scan.scan(colony, secrets, branch)
        built = build(nest, *nest_sources(nest))
    return redact_data(built, secrets_scan.literals(secrets)) | {"secrets_scan": scan.as_dict()}


def nest_sources(nest: Nest) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A nest's model calls (every host's, on the agents' ledger chains) and roles (their beats)."""
    return nest.ledger(), {str(a["agent"]): str(a["role"]) for a in nest.survey()["agents"] if a.get("role")}


def summary_line(r: dict[str, Any]) -> str:
    """One line: what landed, what was done without a change, failed, is left; the spend."""
    n = Counter(t["outcome"] for t in r["tasks"])
    return (f"{n['landed'] + n['resolved']} landed, {n['unchanged'] + n['obsolete']} done without change, "
            f"{n['failed']} failed, {n['pending'] + n['active']} still pending or active; "
            f"${r['cost_usd']:.4f} spent")


# -- the text form ------------------------------------------------------------------------------------
def fit(text: str, width: int) -> str:
    """``text`` on one line in at most ``width`` characters, cut with … when longer."""
    return clip(" ".join(text.split()), width)


def clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def money(usd: float) -> str:
    return f"${usd:.4f}" if usd < 10 else f"${usd:.2f}"


GROUPS = (("landed", ("landed",), "COMMIT"), ("resolved by a conflict task", ("resolved",), "VIA"),
          ("done without a change", NO_CHANGE, ""), ("failed", ("failed",), ""),
          ("not finished", ("active", "pending"), "STATUS"))


def _rows(group: list[dict[str, Any]], detail: str) -> list[str]:
    idw = max(4, min(24, max(len(t["id"]) for t in group)))
    head = f"  {'TASK':<{idw}} {'N':>2} {'AGENT':<11} {'CLAIMED':<8} {'TOOK':>6} {'COST':>8}"
    dw = WIDTH - len(head) - 2
    out = [head + (f"  {detail}" if detail else "")]
    for t in sorted(group, key=lambda t: (t["finished"] or t["first_claim"] or float("inf"), t["id"])):
        agents = (t["agents"][0] + (f"+{len(t['agents']) - 1}" if len(t["agents"]) > 1 else "")) if t["agents"] else "-"
        what = {"COMMIT": (t["commit"] or "")[:10], "VIA": t["via"] or "", "STATUS": t["status"]}.get(detail, "")
        row = (f"  {fit(t['id'], idw):<{idw}} {t['claims']:>2} {fit(agents, 11):<11} {clock(t['first_claim']):<8} "
               f"{duration(t['duration_s']):>6} {money(t['cost_usd']):>8}")
        out.append(row + (f"  {fit(what, dw)}" if what else ""))
        if t["outcome"] not in ("landed", "resolved"):  # a person reads these: the title and why
            out.append("      " + fit(t["title"], WIDTH - 6))
            if t["last_note"]:
                out.append("      note: " + fit(t["last_note"].removeprefix("done without a change: "), WIDTH - 12))
    return out


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent="    ", break_on_hyphens=False)


def render(r: dict[str, Any]) -> str:
    out = _wrapped(summary_line(r))
    run = r.get("run") or {}
    if run.get("start"):
        day = time.strftime("%Y-%m-%d", time.localtime(run["start"]))
        out += _wrapped(f"run {day} {clock(run['start'])} to {clock(run['end'])} ({duration(run['seconds'])}): "
                        f"{plural(run['agents'], 'agent')}, {plural(run['attempts'], 'attempt')}, "
                        f"{plural(len(r['conflicts']), 'conflict')}")
    for title, outcomes, detail in GROUPS:
        group = [t for t in r["tasks"] if t["outcome"] in outcomes]
        if group:
            out += ["", f"{title} ({len(group)}):", *_rows(group, detail)]
    if r["conflicts"]:
        out += ["", f"conflicts ({len(r['conflicts'])}):"]
        for c in r["conflicts"]:
            how = {"landed": f"landed {(c['commit'] or '')[:10]} by {c['resolved_by']}",
                   "failed": "its resolution failed: the task was redone from main"}.get(c["outcome"], c["outcome"])
            out.append("  " + fit(f"{c['task']} at {clock(c['ts'])} ({c['agent']})", WIDTH - 2))
            out.append("    " + fit(f"-> {c['conflict_task']}: {how}", WIDTH - 4))
    if r["cost_by_agent"]:
        out.append("")
        out += _wrapped("cost by agent: " + ", ".join(f"{a} {money(c)}" for a, c in sorted(r["cost_by_agent"].items())))
        out += _wrapped("cost by model: " + ", ".join(f"{m} {money(c)}" for m, c in sorted(r["cost_by_model"].items())))
        out += _wrapped("tokens: " + ", ".join(f"{k.replace('_tokens', '')} {v}" for k, v in r["tokens"].items()))
    if "secrets_scan" in r:
        out += ["", secrets_scan.render(r["secrets_scan"])]
    return "\n".join(out)
