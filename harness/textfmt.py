"""Short text for narrow columns, shared by `status`, `report` and the launcher's progress line."""

from __future__ import annotations


def clip(text: object, width: int) -> str:
    """`text` in at most `width` characters: a long id keeps its start and ends in an ellipsis."""
    s = "-" if text is None else str(text)
    return s if len(s) <= width else s[:max(width - 1, 0)] + "…"


def duration(seconds: float | None) -> str:
    """A duration in at most 6 characters: 42s, 12m05s, 3h20m, 2d04h."""
    if seconds is None:
        return "-"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
