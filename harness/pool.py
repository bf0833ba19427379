"""A process-local index of the task pool, so picking never parses every task file.

The truth is on disk (the status folders and the claim locks); this index is a cache of it built
from `events.jsonl`, whose `add` events carry each task's scheduling fields. A long-lived agent
replays the log once and then reads only what was appended since its last pick, so a pick costs a
heap pop, not a directory scan. Drift (a task file dropped in by hand, an event lost to a crash)
is repaired by a periodic rescan that lists the folders and parses only names it does not know.

Ordering: effective priority = priority + min(skip_count*skip_step, skip_cap) + role bonus
+ aging_per_hour * hours waiting. The role bonus goes to tasks that suit the pool's role (its
`prefers:` front matter, roles.suits), decided once when an entry is made, so no title is kept.
Aging is linear and uncapped, so nothing starves, and because it grows at the same rate for
every task the order is a static key (the `now` term is common to all tasks) and a heap stays
valid over time. The overlap penalty depends on which tasks are active,
so it is applied only among the top few candidates at pick time. A task backing off after a failed
attempt (not_before in the future) waits in a second heap, by when it is due, and rejoins the first.
"""

from __future__ import annotations

import heapq
from collections import Counter
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness import roles
from harness.config import Config
from harness.fsutil import Tail
from harness.roles import Role

if TYPE_CHECKING:
    from harness.colony import Colony
    from harness.tasks import Task

TOP_K = 16
RESCAN_SECONDS = 30.0


@dataclass(slots=True)  # one per pending task, 100k of them in every agent
class Entry:
    id: str
    priority: int
    created_at: float
    skip_count: int = 0
    role: str | None = None
    kind: str = "task"
    depends_on: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    resolves: str | None = None
    not_before: float | None = None
    suits: bool = False  # the pool's role gets its bonus for this task (roles.suits)
    version: int = 0

    @classmethod
    def of(cls, task: Task, role: Role | None = None) -> Entry:
        return cls(task.id, task.priority, task.created_at, task.skip_count, task.role, task.kind,
                   list(task.depends_on), list(task.outputs), task.resolves, task.not_before,
                   roles.suits(role, task.role, task.kind, task.title, [*task.inputs, *task.outputs]))

    @classmethod
    def from_meta(cls, task_id: str, meta: dict[str, Any], role: Role | None = None) -> Entry:
        kind, outputs = meta.get("kind", "task"), list(meta.get("outputs", []))
        return cls(task_id, int(meta.get("priority", 50)), float(meta.get("created_at", 0)),
                   int(meta.get("skip_count", 0)), meta.get("role"), kind, list(meta.get("depends_on", [])),
                   outputs, meta.get("resolves"), meta.get("not_before"),
                   roles.suits(role, meta.get("role"), kind, str(meta.get("title", "")),
                               [*meta.get("inputs", []), *outputs]))


def meta_of(task: Task) -> dict[str, Any]:
    """The scheduling fields an `add` event carries (what Entry.from_meta reads back); the title
    and inputs only so that each role's index can tell once whether the task suits it."""
    return {"priority": task.priority, "created_at": task.created_at, "skip_count": task.skip_count,
            "role": task.role, "kind": task.kind, "depends_on": task.depends_on, "outputs": task.outputs,
            "resolves": task.resolves, "not_before": task.not_before, "title": task.title,
            "inputs": task.inputs}


def effective_priority(cfg: Config, e: Entry, now: float) -> float:
    return standing(cfg, e) + cfg.aging_per_hour * max(0.0, now - e.created_at) / 3600


def standing(cfg: Config, e: Entry) -> float:
    """Effective priority less aging: priority, the skip boost and the role bonus."""
    return e.priority + min(e.skip_count * cfg.skip_step, cfg.skip_cap) + (cfg.role_bonus if e.suits else 0)


def _parts(path: str) -> tuple[str, ...]:
    """PurePosixPath(path).parts less the root, by a split: this runs for every output of every
    claim event every agent reads (64 racing claimers spent a third of their time in pathlib)."""
    parts = path.strip("/").split("/")
    if "" in parts or "." in parts:  # a//b, a/./b, "" or "."
        parts = [p for p in parts if p and p != "."]
    return tuple(parts)


class Busy:
    """The outputs of active tasks, indexed by path and by every directory above one, so that
    asking whether outputs touch an active task's (one path is, or lies under, the other) costs
    their depth, not the number of active tasks: a scan of them made each claim O(active)."""

    def __init__(self) -> None:
        self.of: dict[str, list[tuple[str, ...]]] = {}
        self.paths: Counter[tuple[str, ...]] = Counter()
        self.above: Counter[tuple[str, ...]] = Counter()  # proper prefixes of active paths

    def add(self, tid: str, outputs: list[str]) -> None:
        self.discard(tid)
        paths, above = self.paths, self.above
        self.of[tid] = parts = [_parts(o) for o in outputs]
        for path in parts:  # plain dict arithmetic: every agent does this for every claim event
            paths[path] += 1
            for i in range(len(path)):
                above[path[:i]] += 1

    def discard(self, tid: str) -> None:
        paths, above = self.paths, self.above
        for path in self.of.pop(tid, ()):
            paths[path] -= 1
            for i in range(len(path)):
                above[path[:i]] -= 1

    def touches(self, outputs: list[str]) -> bool:
        paths, above = self.paths.get, self.above.get
        for path in map(_parts, outputs):
            if paths(path, 0) > 0 or above(path, 0) > 0:  # the same path, or one under it
                return True
            if any(paths(path[:i], 0) > 0 for i in range(len(path))):  # an active path above it
                return True
        return False


class Pool:
    def __init__(self, colony: Colony, role: str | None) -> None:
        self.colony = colony
        self.cfg = colony.config
        self.role = roles.load_role(role, colony.home) if role is not None else None
        self.tail = Tail(colony.events_path)
        self._forget_everything()

    def _forget_everything(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.status: dict[str, str] = {}
        self.done: set[str] = set()
        self.waiters: dict[str, set[str]] = {}
        self.active = Busy()  # outputs of active tasks, for the overlap penalty
        self.owners: dict[str, dict[str, Any]] = {}  # the last claim event of each task, for reaping
        self.resolved_by: dict[str, set[str]] = {}  # original task -> the merge_conflict tasks for it
        self.heap: list[tuple[float, float, str, int]] = []
        self.backing_off: list[tuple[float, str, int]] = []  # (not_before, id, version): out of the heap until due
        self.scanned_at = 0.0

    # -- keeping the index fresh -------------------------------------------------------------------
    def refresh(self, force_scan: bool = False) -> None:
        self._tail_events()
        if force_scan or time.monotonic() - self.scanned_at > RESCAN_SECONDS:
            self._rescan()

    def _tail_events(self) -> None:
        events, restarted = self.tail.read()
        if restarted:  # truncated or replaced: start over from it, and rescan the folders at once
            self._forget_everything()
            self.scanned_at = -RESCAN_SECONDS
        for ev in events:
            if isinstance(ev.get("task"), str):
                self.apply(ev)

    def apply(self, ev: dict[str, Any]) -> None:
        tid, kind = ev["task"], ev.get("event")
        if kind in ("add", "defer", "undefer", "retry") and isinstance(ev.get("meta"), dict):
            self._set_pending(Entry.from_meta(tid, ev["meta"], self.role))
        elif kind == "claim":
            self.forget(tid, "active")
            self.owners[tid] = {"agent": ev.get("agent"), "pid": ev.get("pid"), "host": ev.get("host"),
                                "claimed_at": ev.get("claimed_at")}
        elif kind in ("release", "reap"):
            e = self.entries.get(tid)
            if e is not None:
                e.skip_count = int(ev.get("skip_count", e.skip_count))
                e.not_before = ev.get("not_before", e.not_before)
                self._set_pending(e)
        elif kind == "done":
            self._mark_done(tid)
        elif kind in ("fail", "quarantine"):
            self.forget(tid, "failed" if kind == "fail" else "gone")

    def _set_pending(self, e: Entry) -> None:
        if e.resolves:
            self.resolved_by.setdefault(e.resolves, set()).add(e.id)
        e.version += 1
        self.entries[e.id] = e
        self.status[e.id] = "pending"
        self.active.discard(e.id)
        heapq.heappush(self.heap, (-self._key(e), e.created_at, e.id, e.version))

    def _key(self, e: Entry) -> float:
        # effective_priority less the aging term every task shares (aging_per_hour * now / 3600).
        return standing(self.cfg, e) - self.cfg.aging_per_hour * e.created_at / 3600

    def _mark_done(self, tid: str) -> None:
        self.forget(tid, "done")
        self.done.add(tid)
        for waiter in self.waiters.pop(tid, ()):
            e = self.entries.get(waiter)
            if e is not None and self.status.get(waiter) == "pending":
                self._set_pending(e)

    def _rescan(self) -> None:
        self.scanned_at = time.monotonic()
        for name in _names(self.colony.task_dir("done")):
            if name not in self.done:
                self._mark_done(name)
        on_disk = set(_names(self.colony.task_dir("pending")))
        for tid, st in list(self.status.items()):
            if st == "pending" and tid not in on_disk:
                self.status[tid] = "gone"
        for tid in on_disk:
            if self.status.get(tid) != "pending" and tid not in self.entries:
                task = self.colony.read_task(self.colony.task_dir("pending") / f"{tid}.yaml")
                if task is not None:
                    self._set_pending(Entry.of(task, self.role))
            elif self.status.get(tid) != "pending":
                self._set_pending(self.entries[tid])

    # -- picking ------------------------------------------------------------------------------------
    def ready(self, e: Entry, now: float) -> bool:
        """Claimable as far as the index knows: its dependencies are done (else it waits on them)
        and it is not backing off (else it waits in `backing_off` until it is due)."""
        missing = [d for d in e.depends_on if d not in self.done]
        for d in missing:
            self.waiters.setdefault(d, set()).add(e.id)
        if not missing and e.not_before is not None and e.not_before > now:
            heapq.heappush(self.backing_off, (e.not_before, e.id, e.version))
            return False
        return not missing

    def _current(self, tid: str, version: int) -> Entry | None:
        """The pending entry a heap item names, or None when the item is stale."""
        e = self.entries.get(tid)
        return e if e is not None and e.version == version and self.status.get(tid) == "pending" else None

    def next_due(self) -> float | None:
        """When the earliest task that is backing off may be claimed (epoch), or None: as of the
        last candidates(), which is what sets a task aside when it is found backing off."""
        while self.backing_off and self._current(*self.backing_off[0][1:]) is None:
            heapq.heappop(self.backing_off)
        return self.backing_off[0][0] if self.backing_off else None

    def candidates(self) -> list[str]:
        """Up to TOP_K ready pending ids, best first, with the overlap penalty applied among them."""
        now = time.time()
        while self.backing_off and self.backing_off[0][0] <= now:  # due again: back into the heap
            _, tid, version = heapq.heappop(self.backing_off)
            if (e := self._current(tid, version)) is not None:
                heapq.heappush(self.heap, (-self._key(e), e.created_at, e.id, e.version))
        picked: list[Entry] = []
        while self.heap and len(picked) < TOP_K:
            _, _, tid, version = self.heap[0]
            e = self._current(tid, version)
            if e is None or not self.ready(e, now):
                heapq.heappop(self.heap)  # stale, claimed, blocked or backing off (each re-pushed when it can go)
                continue
            picked.append(e)
            heapq.heappop(self.heap)
        for e in picked:  # still pending as far as we know: keep them in the heap
            heapq.heappush(self.heap, (-self._key(e), e.created_at, e.id, e.version))
        def score(e: Entry) -> tuple[int, float]:
            hit = bool(e.outputs) and self.active.touches(e.outputs)
            # Within one point of priority the order is random, so many agents picking at once
            # spread over the top tasks instead of all fighting for the very first one.
            return int(self._key(e) - (self.cfg.overlap_penalty if hit else 0)), random.random()
        return [e.id for e in sorted(picked, key=score, reverse=True)]

    def learn(self, task: Task) -> None:
        """The file on disk says otherwise than our index (e.g. new dependencies): believe it."""
        e = Entry.of(task, self.role)
        old = self.entries.get(task.id)
        e.version = old.version if old else 0
        self._set_pending(e)

    def forget(self, tid: str, status: str) -> None:
        """Record a task leaving `pending` (claimed by us or another, done, failed, vanished)."""
        self.status[tid] = status
        e = self.entries.get(tid)
        if status == "active" and e is not None and e.outputs:
            self.active.add(tid, e.outputs)
        else:
            self.active.discard(tid)


def _names(folder: os.PathLike[str]) -> list[str]:
    try:
        return [n[:-5] for n in os.listdir(folder) if n.endswith(".yaml") and not n.startswith(".")]
    except FileNotFoundError:
        return []


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """One dependency cycle (as a path a -> b -> a) among these tasks, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in deps:
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(node) == 2:
                    continue
                state[node] = 1
                path.append(node)
            kids = deps.get(node, [])
            if i < len(kids):
                stack.append((node, i + 1))
                kid = kids[i]
                if state.get(kid) == 1:
                    return path[path.index(kid):] + [kid]
                if state.get(kid) is None and kid in deps:
                    stack.append((kid, 0))
            else:
                state[node] = 2
                path.pop()
    return None
