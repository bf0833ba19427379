"""The morning report as one self-contained HTML page (``report --html FILE``): inline CSS and
inline SVG (report_svg.py), no script, no font, no link to anything, so it opens the same from a
mail attachment or a machine with no network. It draws the dict that report.account builds, which
is already redacted; every text is escaped, since task titles and notes come from models."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from harness import report, secrets_scan
from harness.report_svg import OUTCOMES, e, step_chart, timeline
from harness.textfmt import duration

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2329; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.summary { font-size: 15px; } .muted { color: #5f6b76; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { font-weight: 600; } td.num, th.num { text-align: right; }
.note { max-width: 640px; white-space: pre-wrap; font-size: 12px; color: #3b4650; }
svg text { font: 11px sans-serif; fill: #333; } svg .chart-title { font-size: 13px; font-weight: 600; }
.charts { display: flex; gap: 24px; flex-wrap: wrap; }
.outcome { display: inline-block; width: 10px; height: 10px; margin-right: 5px; border: 1px solid #9aa5b1; }
td { white-space: nowrap; } td.wrap { white-space: normal; overflow-wrap: anywhere; min-width: 8em; }
pre.secrets { background: #f6f7f9; padding: 8px; } pre.alarm { background: #fde2e2; padding: 8px; }
"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], css: str = "", numeric: Iterable[int] = (),
           wrap: Iterable[int] = ()) -> str:
    """``rows`` hold HTML already escaped (cells are built with e()); ``wrap``: the columns of prose."""
    kind = {i: "num" for i in numeric} | {i: "wrap" for i in wrap}
    head = "".join(f'<th{f" class={kind[i]}" if i in kind else ""}>{e(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{f" class={kind[i]}" if i in kind else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f'<table class="{e(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _outcome(name: str) -> str:
    colour = OUTCOMES.get(name, ("#000", name))[0]
    return f'<span class="outcome" style="background:{colour}"></span>{e(name)}'


def _when(ts: float | None, full: bool = False) -> str:
    """The clock time; the date too when ``full`` (the page's header gives the run's dates)."""
    return e(time.strftime("%Y-%m-%d %H:%M:%S" if full else "%H:%M:%S", time.localtime(ts))) if ts else "-"


def _task_rows(tasks: Iterable[dict[str, Any]]) -> list[list[str]]:
    return [[f'<span class="task-id">{e(t["id"])}</span>', e(t["title"]), _outcome(t["outcome"]),
             e(", ".join(t["agents"]) or "-"), str(t["claims"]), _when(t["first_claim"]), _when(t["finished"]),
             e(duration(t["duration_s"])), e(report.money(t["cost_usd"])),
             e((t["commit"] or "")[:10] or (f"via {t['via']}" if t["via"] else ""))] for t in tasks]


TASK_HEAD = ["task", "title", "outcome", "agents", "claims", "first claim", "finished", "took", "cost", "commit"]


def _section(title: str, body: str, when: bool = True) -> str:
    return f"<h2>{e(title)}</h2>{body}" if when else ""


def _noted(tasks: list[dict[str, Any]]) -> str:
    return _table(["task", "title", "outcome", "agents", "claims", "last note"],
                  ([e(t["id"]), e(t["title"]), _outcome(t["outcome"]), e(", ".join(t["agents"]) or "-"),
                    str(t["claims"]), f'<div class="note">{e(t["last_note"] or "")}</div>'] for t in tasks),
                  numeric=[4], wrap=[0, 1, 5])


def _top(tasks: list[dict[str, Any]], key: Callable[[dict[str, Any]], float], n: int = 10) -> list[dict[str, Any]]:
    return sorted((t for t in tasks if key(t) > 0), key=lambda t: (-key(t), t["id"]))[:n]


def render(r: dict[str, Any], title: str = "stigmergy morning report") -> str:
    tasks, run = r["tasks"], r["run"]
    kinds = {t["id"]: t["kind"] for t in tasks}
    parts = [f"<h1>{e(title)}</h1>", f'<p class="summary">{e(report.summary_line(r))}</p>']
    if run.get("start"):
        parts.append(f'<p class="muted">run from {_when(run["start"], True)} to {_when(run["end"], True)} '
                     f'({e(duration(run["seconds"]))}): {e(report.plural(run["agents"], "agent"))}, '
                     f'{e(report.plural(run["attempts"], "attempt"))}, '
                     f'{e(report.plural(len(r["conflicts"]), "conflict"))}</p>')
        parts.append(_section("Timeline: every attempt, per agent", timeline(
            r["attempts"], r["roles"], kinds, run["start"], run["end"])))
        usd = r["cost_usd"] > 0
        spend = [(s[0], s[1] if usd else s[2]) for s in r["spend"]]
        landings = [(ts, float(i + 1)) for i, (ts, _) in enumerate(r["landings"])]
        parts.append('<h2>Throughput and spend</h2><div class="charts">'
                     + step_chart(landings, run["start"], run["end"], "commits landed on main", "{:.0f}", "throughput")
                     + step_chart(spend, run["start"], run["end"], "spend (USD)" if usd else
                                  "tokens used (no USD spend recorded)", "${:.2f}" if usd else "{:.0f}", "spend")
                     + "</div>")
    counts = r["outcomes"]
    parts.append(_section("Outcomes", _table(["outcome", "tasks"], (
        [_outcome(o), str(n)] for o, n in sorted(counts.items(), key=lambda kv: -kv[1])), numeric=[1])))
    parts.append(_section("Conflicts and how they were resolved", _table(
        ["task", "conflicted at", "agent", "conflict task", "resolution", "by", "commit"],
        ([e(c["task"]), _when(c["ts"]), e(c["agent"]), e(c["conflict_task"]), _outcome(str(c["outcome"])),
          e(c["resolved_by"] or "-"), e((c["commit"] or "")[:10])] for c in r["conflicts"])), bool(r["conflicts"])))
    no_change = [t for t in tasks if t["outcome"] in report.NO_CHANGE]
    parts.append(_section(f"Done without a change ({len(no_change)})", _noted(no_change), bool(no_change)))
    failed = [t for t in tasks if t["outcome"] == "failed"]
    parts.append(_section(f"Failed ({len(failed)})", _noted(failed), bool(failed)))
    waiting = [t for t in tasks if t["outcome"] in ("pending", "active")]
    parts.append(_section(f"Not finished ({len(waiting)})", _noted(waiting), bool(waiting)))
    skipped = _top(tasks, lambda t: float(t["skip_count"] * 1000 + t["claims"] - 1))
    parts.append(_section("Most skipped", _table(["task", "title", "skips", "claims", "outcome"], (
        [e(t["id"]), e(t["title"]), str(t["skip_count"]), str(t["claims"]), _outcome(t["outcome"])]
        for t in skipped), numeric=[2, 3], wrap=[0, 1]), bool(skipped)))
    slowest = _top(tasks, lambda t: float(t["duration_s"] or 0))
    parts.append(_section("Slowest (first claim to finish)", _table(["task", "title", "took", "held", "outcome"], (
        [e(t["id"]), e(t["title"]), e(duration(t["duration_s"])), e(duration(t["busy_s"])),
         _outcome(t["outcome"])] for t in slowest), numeric=[2, 3], wrap=[0, 1]), bool(slowest)))
    parts.append(_section("Per role", _table(["role", "agents", "attempts", "how they ended", "held", "cost"], (
        [e(role), str(x["agents"]), str(x["attempts"]),
         e(", ".join(f"{o} {n}" for o, n in sorted(x["ended"].items()))), e(duration(x["busy_s"])),
         e(report.money(x["cost_usd"]))] for role, x in sorted(r["by_role"].items())), numeric=[1, 2, 4, 5], wrap=[3]),
        bool(r["by_role"])))
    parts.append(_section("Per model", _table(
        ["model", "calls", "input", "output", "cache read", "cache write", "tasks", "landed", "cost"], (
            [e(m), str(x["calls"]), str(x["input_tokens"]), str(x["output_tokens"]), str(x["cache_read_tokens"]),
             str(x["cache_write_tokens"]), str(x["tasks"]), str(x["landed"]), e(report.money(x["cost_usd"]))]
            for m, x in sorted(r["by_model"].items())), numeric=range(1, 9)), bool(r["by_model"])))
    parts.append(_section(f"Every task ({len(tasks)})", _table(TASK_HEAD, _task_rows(
        sorted(tasks, key=lambda t: (t["first_claim"] or float("inf"), t["id"]))), "tasks", numeric=[4, 8], wrap=[0, 1])))
    if "secrets_scan" in r:
        scan = r["secrets_scan"]
        parts.append(_section("Secrets scan", f'<pre class="{"alarm" if scan["hits"] else "secrets"}">'
                              f'{e(secrets_scan.render(scan, width=120))}</pre>'))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>" + "".join(parts) + "</body></html>\n")
