"""The report's pictures as inline SVG text: the timeline (one row per agent, one bar per attempt)
and the step charts (landings, spend) over the same time axis. No script, no font, no network:
a tooltip is an SVG <title>. Every text passes through html.escape — task ids come from models."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

# How an attempt ended -> (colour, legend label).
OUTCOMES: dict[str, tuple[str, str]] = {
    "landed": ("#2e9d4f", "landed"),
    "resolved": ("#86c99a", "landed by its conflict task"),
    "unchanged": ("#9aa5b1", "done without a change"),
    "obsolete": ("#c7ced6", "obsolete (main green again)"),
    "conflict": ("#e8892b", "landing conflicted: became a task"),
    "released": ("#f2c94c", "released (skipped, retried later)"),
    "failed": ("#d64545", "failed"),
    "reaped": ("#8e5ea2", "abandoned, reaped"),
    "open": ("#4a90d9", "still open"),
    "active": ("#4a90d9", "still held"),  # a task's outcome, not an attempt's: it has an open attempt
    "pending": ("#ffffff", "waiting"),
}
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
LABEL_W, ROW_H, BAR_H, AXIS_H = 190, 22, 14, 28


def e(text: object) -> str:
    return escape(str(text), quote=True)


class Scale:
    """Epoch seconds from ``start`` to ``end`` onto x pixels from ``x0`` over ``width``."""

    def __init__(self, start: float, end: float, x0: float, width: float) -> None:
        self.start, self.end, self.x0, self.width = start, max(end, start + 1), x0, width

    def x(self, ts: float) -> float:
        return self.x0 + (ts - self.start) / (self.end - self.start) * self.width

    def ticks(self, most: int = 10) -> tuple[list[float], str]:
        """Tick times at a round step (aligned to local time) and the strftime format to label them."""
        span = self.end - self.start
        step = next((s for s in STEPS if span / s <= most), STEPS[-1] * (int(span / STEPS[-1] / most) + 1))
        offset = time.localtime(self.start).tm_gmtoff
        first = (int(self.start + offset) // step + 1) * step - offset
        ticks = [float(t) for t in range(int(first), int(self.end) + 1, step)]
        return ticks, "%H:%M:%S" if step < 60 else "%H:%M"


def axis(scale: Scale, y: float, top: float) -> str:
    """A time axis at ``y``, with grid lines up to ``top``."""
    ticks, fmt = scale.ticks()
    out = [f'<g class="axis"><line x1="{scale.x0:.1f}" y1="{y:.1f}" x2="{scale.x0 + scale.width:.1f}" '
           f'y2="{y:.1f}" stroke="#555"/>']
    for t in ticks:
        x = scale.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>'
                   f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + 5:.1f}" stroke="#555"/>'
                   f'<text x="{x:.1f}" y="{y + 17:.1f}" text-anchor="middle">{e(time.strftime(fmt, time.localtime(t)))}'
                   '</text>')
    out.append("</g>")
    return "".join(out)


def legend(outcomes: Iterable[str], x: float, y: float) -> str:
    out, cx = ['<g class="legend">'], x
    for name in outcomes:
        colour, label = OUTCOMES[name]
        out.append(f'<rect x="{cx:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{cx + 16:.1f}" y="{y:.1f}">{e(label)}</text>')
        cx += 26 + 5.6 * len(label)  # about the width of 11px sans-serif
    out.append(f'<path class="conflict-key" d="{_triangle(cx + 6, y - 4)}" fill="#000"/>'
               f'<text x="{cx + 16:.1f}" y="{y:.1f}">conflict</text></g>')
    return "".join(out)


def _triangle(x: float, y: float) -> str:
    return f"M{x - 5:.1f},{y - 6:.1f} L{x + 5:.1f},{y - 6:.1f} L{x:.1f},{y + 3:.1f} Z"


def timeline(attempts: Sequence[Mapping[str, Any]], roles: Mapping[str, str], kinds: Mapping[str, str],
             start: float, end: float, width: int = 1160) -> str:
    """One row per agent (grouped by role), one bar per attempt from its claim to its end, coloured
    by how it ended; a black triangle where a landing conflicted, and conflict tasks outlined."""
    agents = sorted({str(a["agent"]) for a in attempts}, key=lambda ag: (roles.get(ag, "~"), ag))
    row = {ag: i for i, ag in enumerate(agents)}
    top = 34
    height = top + ROW_H * len(agents) + AXIS_H
    scale = Scale(start, end, LABEL_W, width - LABEL_W - 20)
    out = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="attempts per agent over time">',
           legend([o for o in OUTCOMES if any(a["outcome"] == o for a in attempts)] or ["landed"], LABEL_W, 16)]
    for ag, i in row.items():
        ry = top + i * ROW_H
        if i % 2:
            out.append(f'<rect x="0" y="{ry:.1f}" width="{width}" height="{ROW_H}" fill="#f6f7f9"/>')
        label = f"{ag} ({roles[ag]})" if ag in roles else ag
        out.append(f'<text class="agent" x="{LABEL_W - 8}" y="{ry + ROW_H - 7:.1f}" text-anchor="end">'
                   f'{e(label if len(label) <= 28 else label[:27] + "…")}</text>')
    out.append(axis(scale, top + ROW_H * len(agents) + 4, top))
    for a in attempts:
        y = top + row[str(a["agent"])] * ROW_H + (ROW_H - BAR_H) / 2
        x0 = scale.x(float(a["start"]))
        x1 = scale.x(float(a["end"] if a["end"] is not None else end))
        colour = OUTCOMES.get(str(a["outcome"]), ("#000", ""))[0]
        conflict_task = kinds.get(str(a["task"])) == "merge_conflict"
        ended = "still open" if a["end"] is None else f"{_clock(a['start'])} to {_clock(a['end'])}"
        tip = f"{a['task']} by {a['agent']}: {OUTCOMES.get(str(a['outcome']), ('', a['outcome']))[1]}, {ended}"
        out.append(f'<rect class="attempt" data-task="{e(a["task"])}" data-agent="{e(a["agent"])}" '
                   f'data-outcome="{e(a["outcome"])}" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 2):.1f}" '
                   f'height="{BAR_H}" fill="{colour}"'
                   + (' stroke="#222" stroke-width="1.5" stroke-dasharray="3,2"' if conflict_task else "")
                   + f'><title>{e(tip)}</title></rect>')
        if a["outcome"] == "conflict":
            out.append(f'<path class="conflict-mark" data-task="{e(a["task"])}" d="{_triangle(x1, y)}" fill="#000">'
                       f'<title>{e(a["task"])}: its landing conflicted</title></path>')
    out.append("</svg>")
    return "".join(out)


def step_chart(points: Sequence[tuple[float, float]], start: float, end: float, label: str, fmt: str,
               css: str, width: int = 540, height: int = 200) -> str:
    """A cumulative quantity over time as a step line from 0 at ``start`` to its last value at
    ``end``; ``fmt`` formats the y labels (e.g. "{:.0f}", "${:.2f}")."""
    left, top, bottom = 64, 24, height - AXIS_H
    scale = Scale(start, end, left, width - left - 16)
    most = max((v for _, v in points), default=0.0) or 1.0
    def y(v: float) -> float:
        return bottom - v / most * (bottom - top)
    path, last = [f"M{scale.x(start):.1f},{y(0):.1f}"], 0.0
    for ts, v in _thin(points, 800):
        path.append(f"L{scale.x(ts):.1f},{y(last):.1f} L{scale.x(ts):.1f},{y(v):.1f}")
        last = v
    path.append(f"L{scale.x(end):.1f},{y(last):.1f}")
    return (f'<svg class="{e(css)}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(label)}">'
            f'<text x="{left}" y="14" class="chart-title">{e(label)}</text>'
            + axis(scale, bottom, top)
            + f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#555"/>'
            + "".join(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{e(fmt.format(v))}</text>'
                      for v in (0.0, most))
            + f'<path class="series" d="{" ".join(path)}" fill="none" stroke="#2f6fb5" stroke-width="2"/></svg>')


def _thin(points: Sequence[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """At most about ``most`` points, the last one always kept: a night of calls stays a small file."""
    if len(points) <= most:
        return list(points)
    every = len(points) // most + 1
    return [p for i, p in enumerate(points) if i % every == 0] + [points[-1]]


def _clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(float(ts)))
