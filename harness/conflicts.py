"""Merge-conflict bookkeeping: what becomes of a task whose work conflicted with main.

The agent that meets the conflict files a ``merge_conflict`` task (``resolves``: the original)
and defers the original: back to pending, waiting on its resolution (``depends_on``), not
counted as a failure. Then one of three things happens to the resolution:

    it lands      settle(): the original is done first (its work is on main now), and so is
                  every task a chain of resolutions resolved, before the resolution itself
    it fails      undefer(): the original stops waiting and is redone from the current main
                  (its first attempt is kept at refs/stigmergy/conflicts/<id>)
    its original's owner died between filing it and deferring: the reaped original waits
                  for it all the same (resolutions()), or the work would land twice

These move tasks without a claim, on the colony's behalf: they are the local colony's, not the
environment contract's, so a nest does not offer them yet.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from harness import fsutil
from harness.pool import meta_of
from harness.tasks import Task

if TYPE_CHECKING:
    from harness.colony import Colony


def defer(colony: Colony, task_id: str, agent: str, waits_on: str, note: str, token: str | None = None) -> None:
    """``agent``'s task back to pending, waiting on ``waits_on`` (its resolution) instead of a retry."""
    claim = colony.owned(task_id, agent, token)
    colony.add_note(task_id, agent, note, kind="defer")
    task = colony.move(claim, "pending", lambda t: t.depends_on.append(waits_on))
    if task is not None:
        colony.event("defer", task_id, agent=agent, waits_on=waits_on, meta=meta_of(task))


def settle(colony: Colony, task_id: str, by: str, via: str) -> None:
    """Mark a deferred task done because ``via`` landed its work; recursively for chains."""
    found = colony.store.locate(task_id)
    if found is None or found[0] in ("done", "failed"):
        return
    task = colony.store.read_task(found[1])
    try:
        os.rename(found[1], colony.store.task_dir("done") / f"{task_id}.yaml")
    except FileNotFoundError:
        return
    if found[0] == "active" and (claim := colony.current_claim(task_id)) is not None:
        # Still active: its owner died between filing the resolution and deferring it, and no
        # reaper came first. A reaper lists active/ only, so nobody else would ever end it.
        colony.leases.end(claim, "done")
    colony.event("done", task_id, agent=by, via=via)
    if task is not None and task.resolves:
        settle(colony, task.resolves, by, via)


def undefer(colony: Colony, task_id: str, gave_up: str, agent: str) -> None:
    """``gave_up`` (a resolution) failed: its original must not wait for it forever."""
    path = colony.store.task_dir("pending") / f"{task_id}.yaml"
    task = colony.store.read_task(path)
    if task is None or gave_up not in task.depends_on:
        return
    task.depends_on = [d for d in task.depends_on if d != gave_up]
    fsutil.atomic_write(path, task.to_yaml())
    colony.add_note(task_id, agent, f"{gave_up} failed to resolve this task's merge conflict: redo the task "
                    f"on the current main (the first attempt is kept at refs/stigmergy/conflicts/{task_id})",
                    kind="undefer")
    colony.event("undefer", task_id, agent=agent, meta=meta_of(task))


def resolutions(colony: Colony, task: Task) -> list[str]:
    """The live merge_conflict tasks resolving ``task`` that it does not wait on yet."""
    index = colony.index()
    index.refresh()
    return [r for r in sorted(index.resolved_by.get(task.id, ()))
            if r not in task.depends_on and (found := colony.store.locate(r)) and found[0] != "failed"]
