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

Within one point of effective priority the order is a ring: a hash of the id, turned by an offset
each pool draws at random. Every pool walks the same ring from its own place, so agents picking at
once start on different tasks and each mostly meets tasks it has not yet lost a race for; with
every pool in the same order (by age, then at random among the first 16), 64 racing claimers
tried each task two or three times. The best TOP_K are kept aside between picks, so a pick pops
only what replaces the ones gone since. A pool started from a snapshot keeps the ring unturned,
the snapshot's own order, until it becomes a full index.

A process's first claim (a one-shot `task claim`, or an agent's) starts from a snapshot instead
(snapshot.py): the pending entries saved in heap order by a process that held a full index. They
are read from its head only as far as picking needs them, each moved into the heap while it ranks
at least as high as the heap's top, so the order is exactly the full index's; the events since
the snapshot are applied as usual, and an entry an event already spoke of is skipped when its line
is reached. Such a partial index knows no done tasks (it asks tasks/done/ about a dependency) and
becomes a full one at its first rescan (periodic, forced, or the log started over).
"""

from __future__ import annotations

import heapq
import json
import math
import operator
import os
import random
import re
import time
import zlib
from bisect import insort
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import roles, snapshot
from harness.config import Config
from harness.fsutil import Tail, objects
from harness.roles import Role
from harness.tasks import readiness

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
    _keys: Keys | None = field(default=None, compare=False, repr=False)

    def keys(self) -> Keys:
        """Its outputs as Busy keys, made once: every agent adds them for every claim it learns."""
        if self._keys is None:
            self._keys = busy_keys(self.outputs)
        return self._keys

    @classmethod
    def of(cls, task: Task, role: Role | None = None) -> Entry:
        return cls(task.id, task.priority, task.created_at, task.skip_count, task.role, task.kind,
                   list(task.depends_on), list(task.outputs), task.resolves, task.not_before,
                   roles.suits(role, task.role, task.kind, task.title, [*task.inputs, *task.outputs]))

    @classmethod
    def from_meta(cls, task_id: str, meta: dict[str, Any], role: Role | None = None) -> Entry:
        kind, outputs = meta.get("kind", "task"), list(meta.get("outputs", []))
        # Its Busy keys now, while the index is built: not in the claim race, where every agent
        # learns every claim.
        return cls(task_id, int(meta.get("priority", 50)), float(meta.get("created_at", 0)),
                   int(meta.get("skip_count", 0)), meta.get("role"), kind, list(meta.get("depends_on", [])),
                   outputs, meta.get("resolves"), meta.get("not_before"),
                   roles.suits(role, meta.get("role"), kind, str(meta.get("title", "")),
                               [*meta.get("inputs", []), *outputs]), _keys=busy_keys(outputs))

    def row(self, deps_done: bool) -> list[Any]:
        """The entry as a snapshot line; `deps_done`: every dependency was done when it was saved."""
        return [self.id, self.priority, self.created_at, self.skip_count, self.role, self.kind, self.depends_on,
                self.outputs, self.resolves, self.not_before, self.suits, deps_done]

    @classmethod
    def from_row(cls, row: list[Any]) -> tuple[Entry, bool]:
        tid, priority, created_at, skips, role, kind, deps, outputs, resolves, not_before, suits, deps_done = row
        return cls(str(tid), int(priority), float(created_at), int(skips), role, str(kind), list(deps), list(outputs),
                   resolves, not_before, bool(suits)), bool(deps_done)


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
    """PurePosixPath(path).parts less the root, by a split (pathlib cost more than the rest of a claim)."""
    parts = path.strip("/").split("/")
    if "" in parts or "." in parts:  # a//b, a/./b, "" or "."
        parts = [p for p in parts if p and p != "."]
    return tuple(parts)


Keys = tuple[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], ...]  # per output: its parts, their proper prefixes


def busy_keys(outputs: list[str]) -> Keys:
    return tuple([(path, tuple([path[:i] for i in range(len(path))])) for path in map(_parts, outputs)])


class Busy:
    """The outputs of active tasks, indexed by path and by every directory above one, so that
    asking whether outputs touch an active task's (one path is, or lies under, the other) costs
    their depth, not the number of active tasks: a scan of them made each claim O(active)."""

    def __init__(self) -> None:
        self.of: dict[str, Keys] = {}
        self.paths: dict[tuple[str, ...], int] = {}
        self.above: dict[tuple[str, ...], int] = {}  # proper prefixes of active paths

    def add(self, tid: str, keys: Keys) -> None:
        if tid in self.of:
            self.discard(tid)
        if not keys:
            return
        self.of[tid] = keys
        paths, above = self.paths, self.above
        for path, prefixes in keys:  # plain dict arithmetic: every agent does this for every claim event
            paths[path] = paths.get(path, 0) + 1
            for p in prefixes:
                above[p] = above.get(p, 0) + 1

    def discard(self, tid: str) -> None:
        paths, above = self.paths, self.above
        for path, prefixes in self.of.pop(tid, ()):
            paths[path] -= 1
            for p in prefixes:
                above[p] -= 1

    def touches(self, keys: Keys) -> bool:
        paths, above = self.paths.get, self.above.get  # counts: 0 or missing when no active task has it
        for path, prefixes in keys:
            if paths(path) or above(path):  # the same path, or one under it
                return True
            if any(map(paths, prefixes)):  # an active path above it
                return True
        return False


OWNER_FIELDS = ("agent", "pid", "host", "claimed_at")
_owner_fields = operator.itemgetter(*OWNER_FIELDS)


def owner_of(event: dict[str, Any]) -> tuple[Any, ...]:
    """A claim event's OWNER_FIELDS, in one C call when it has them all; a damaged one's owner as
    unknown (None), so that each of its claims is judged on its own."""
    try:
        fields = _owner_fields(event)
    except KeyError:  # an event from before claims named them all
        fields = tuple(event.get(k) for k in OWNER_FIELDS)
    agent, pid, host, at = fields
    if not (isinstance(agent, str) and isinstance(pid, (int, type(None))) and isinstance(host, (str, type(None)))):
        return None, None, None, at if isinstance(at, (int, float)) else None
    return fields


# A claim line exactly as Colony.try_claim writes it (Store.event, keys sorted): every agent reads
# every one, and this match with the owner's fields kept as bytes costs a quarter of parsing the
# line. Strings are taken only when they hold no escape, and an unescaped `", "` cannot lie inside
# a JSON string, so a line that matches says what json.loads would; any other line (hand-written,
# older, damaged, an output with a `]` in its name) is parsed as JSON.
_NUMBER = rb'-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?'  # JSON's
_CLAIM_LINE = re.compile(
    rb'\{"agent": "([^"\\]*)", "claimed_at": (' + _NUMBER + rb'), "event": "claim", "generation": [0-9]+, '
    rb'"host": "([^"\\]*)", "outputs": \[[^\]]*\], "pid": ([0-9]+|null), "task": "([^"\\]+)", "ts": ' + _NUMBER + rb'\}')


def claim_line(line: bytes) -> tuple[str, tuple[bytes, ...]] | None:
    """(task, OWNER_FIELDS as the line's bytes) of a claim line in Colony.try_claim's own shape, or
    None for any other. The fields are read (owner_dict) only when a reaping pass asks."""
    m = _CLAIM_LINE.fullmatch(line)
    return None if m is None else (m[5].decode(), m.group(1, 4, 3, 2))


def owner_dict(fields: tuple[Any, ...]) -> dict[str, Any]:
    """OWNER_FIELDS as values, from an event's (owner_of) or a claim line's bytes (claim_line)."""
    agent, pid, host, at = fields
    if isinstance(agent, bytes):
        agent, host = agent.decode(errors="replace"), host.decode(errors="replace")
        pid, at = None if pid == b"null" else int(pid), float(at)  # the pattern took JSON's numbers only
    return {"agent": agent, "pid": pid, "host": host, "claimed_at": at}


_who, _when = operator.itemgetter(0, 1, 2), operator.itemgetter(3)


class Owners:
    """The owner of each active task, as its claim event named it, for reaping. Kept as a tuple
    of OWNER_FIELDS, plain values (owner_of) or a claim line's bytes (claim_line), read by
    owner_dict: every agent keeps one for every claim, and whole events (a list inside) made each
    full garbage collection walk them all."""

    def __init__(self) -> None:
        self.of: dict[str, tuple[Any, ...]] = {}  # OWNER_FIELDS

    def add(self, tid: str, event: dict[str, Any]) -> None:
        self.of[tid] = owner_of(event)

    def discard(self, tid: str) -> None:
        self.of.pop(tid, None)

    def get(self, tid: str) -> dict[str, Any] | None:
        fields = self.of.get(tid)
        return None if fields is None else owner_dict(fields)

    def excused(self, alive: Callable[[dict[str, Any]], bool]) -> Collection[str]:
        """The tasks whose owner ``alive`` passes as of the oldest claim of all: staleness only
        grows with a claim's age (leases.owner_gone), so none of those claims is stale. The claims
        of an owner that fails (or is unknown) are left to be judged one by one. Each owner is
        judged once, and in C but for that: at the end of a 64-way race, every agent's last claim
        reaped over 10k live claims, and grouping them in Python was most of what it cost."""
        values = self.of.values()
        try:
            oldest = min(map(float, map(_when, values)), default=0.0)  # float() reads a line's bytes too
        except (TypeError, ValueError):  # an unknown time among them: as old as can be
            oldest = 0.0
        failed = {key for key in set(map(_who, values)) if key[0] is None or not alive(owner_dict((*key, oldest)))}
        if not failed:
            return self.of.keys()
        return {tid for tid, fields in self.of.items() if fields[:3] not in failed}


class Pool:
    def __init__(self, colony: Colony, role: str | None) -> None:
        self.colony = colony
        self.cfg = colony.config
        self.role = roles.load_role(role, colony.home) if role is not None else None
        self.tail = Tail(colony.store.events_path)
        self._forget_everything()

    def _forget_everything(self) -> None:
        self.partial = False  # started from a snapshot and not yet a full index
        self.snap: snapshot.Snapshot | None = None
        self.rows: Iterator[list[Any]] = iter(())  # the snapshot's entries not read yet, best first
        self.head: tuple[tuple[float, float, str], Entry, bool] | None = None  # the next of them
        self.entries: dict[str, Entry] = {}
        self.status: dict[str, str] = {}
        self.done: set[str] = set()
        self.waiters: dict[str, set[str]] = {}
        self.active = Busy()  # outputs of active tasks, for the overlap penalty
        self.owners = Owners()  # the claim event of each active task, for reaping
        self.resolved_by: dict[str, set[str]] = {}  # original task -> the merge_conflict tasks for it
        self.heap: list[tuple[int, int, str, int]] = []  # (-point, place on our ring, id, version): Pool._rank
        self.picked: list[tuple[int, int, str, int]] = []  # the best of the heap, taken out of it by the last pick
        self.backing_off: list[tuple[float, str, int]] = []  # (not_before, id, version): out of the heap until due
        self.scanned_at = 0.0
        self.salt = random.getrandbits(32)  # where this pool stands on the ring (_rank)

    def resume(self) -> bool:
        """Start this new index from the role's snapshot instead of the whole log: a partial index,
        with what the log added since applied. False when there is none fresh enough for it."""
        snap = snapshot.load(self._snapshot_path(), self._order_key(), self.colony.store.events_path)
        if snap is None:
            return False
        self.salt = 0
        try:
            for row in snap.header["active"]:
                e, _ = Entry.from_row(row)
                self.entries[e.id] = e
                self.forget(e.id, "active")
            for tid, owner in snap.header["owners"].items():
                self.owners.add(str(tid), dict(owner))
                self.status.setdefault(str(tid), "active")
            self.resolved_by = {str(k): set(v) for k, v in snap.header["resolved_by"].items()}
            self.snap, self.rows, self.partial, self.tail = snap, snap.rows(), True, snap.tail
            self._advance()
        except (ValueError, TypeError, KeyError, AttributeError):  # damaged after it was written
            snap.discard()
            self._forget_everything()
            self.tail = Tail(self.colony.store.events_path)
            return False
        self.scanned_at = time.monotonic()  # the first rescan is what turns it into a full index
        self._tail_events()
        return True

    # -- keeping the index fresh -------------------------------------------------------------------
    def refresh(self, force_scan: bool = False) -> None:
        if self.partial and (force_scan or time.monotonic() - self.scanned_at > RESCAN_SECONDS):
            self._go_full()
            return
        self._tail_events()
        if force_scan or time.monotonic() - self.scanned_at > RESCAN_SECONDS:
            self._rescan()

    def _go_full(self) -> None:
        """Turn a partial index into a full one: a scan needs every task known, so the log is
        replayed from its start and the folders listed, as for an index built without a snapshot."""
        self._forget_everything()
        self.tail = Tail(self.colony.store.events_path)
        self.refresh(force_scan=True)

    def _tail_events(self) -> None:
        lines, restarted = self.tail.lines()
        if restarted:  # truncated or replaced: start over from it, and rescan the folders at once
            self._forget_everything()
            self.scanned_at = -RESCAN_SECONDS
        others: list[bytes] = []  # a run of other lines, parsed as one: a log replayed at start-up is mostly adds
        for line in lines:
            claim = claim_line(line)
            if claim is None:
                others.append(line)
                continue
            if others:
                self._apply_lines(others)
                others = []
            self._claimed(claim[0], claim[1], line)
        if others:
            self._apply_lines(others)

    def _apply_lines(self, lines: list[bytes]) -> None:
        for ev in objects(lines):
            tid = ev.get("task")
            if type(tid) is not str:
                continue
            if ev.get("event") == "claim":  # a claim line in another shape (hand-written, or older)
                self._claimed(tid, owner_of(ev), ev)
            else:
                self.apply(ev)

    def _claimed(self, tid: str, owner: tuple[Any, ...], ev: dict[str, Any] | bytes) -> None:
        """Learn a claim: by far the commonest event, and every agent learns every one."""
        self.status[tid] = "active"
        e = self.entries.get(tid)
        self.active.add(tid, e.keys() if e is not None else self._claimed_keys(tid, ev))
        self.owners.of[tid] = owner

    def apply(self, ev: dict[str, Any]) -> None:
        """Any event but a claim (_tail_events learns those inline)."""
        tid, kind = ev["task"], ev.get("event")
        if kind in ("add", "defer", "undefer", "retry") and isinstance(ev.get("meta"), dict):
            self._set_pending(Entry.from_meta(tid, ev["meta"], self.role))
        elif kind in ("release", "reap"):
            e = self.entries.get(tid)
            if e is None and self.partial:  # claimed since the snapshot: its entry is its file
                task = self.colony.store.read_task(self.colony.store.task_dir("pending") / f"{tid}.yaml")
                if task is not None:
                    self._set_pending(Entry.of(task, self.role))
            elif e is not None:
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
        self.owners.discard(e.id)
        heapq.heappush(self.heap, (*self._rank(e), e.version))

    def _key(self, e: Entry) -> float:
        # effective_priority less the aging term every task shares (aging_per_hour * now / 3600).
        return standing(self.cfg, e) - self.cfg.aging_per_hour * e.created_at / 3600

    def _rank(self, e: Entry, salt: int | None = None) -> tuple[int, int, str]:
        """Heap order: the point of priority, best first, then the place on the ring as turned by
        `salt` (this pool's; 0 is the snapshot's order), then the id."""
        turn = self.salt if salt is None else salt
        return -math.floor(self._key(e)), (zlib.crc32(e.id.encode()) + turn) & 0xFFFFFFFF, e.id

    def _mark_done(self, tid: str) -> None:
        self.forget(tid, "done")
        self.done.add(tid)
        for waiter in self.waiters.pop(tid, ()):
            e = self.entries.get(waiter)
            if e is not None and self.status.get(waiter) == "pending":
                self._set_pending(e)

    def _claimed_keys(self, tid: str, ev: dict[str, Any] | bytes) -> Keys:
        """The outputs of a task just claimed, when this index has no entry for it (a partial index
        never read its line): the claim event's, or its file's for an event from before they had them."""
        if tid in self.entries or not self.partial:
            return ()
        outputs = (json.loads(ev) if isinstance(ev, bytes) else ev).get("outputs")  # a matched claim line is JSON
        if isinstance(outputs, list):
            return busy_keys([str(o) for o in outputs])
        task = self.colony.store.read_task(self.colony.store.task_dir("active") / f"{tid}.yaml")
        return busy_keys(task.outputs) if task is not None else ()

    def _rescan(self) -> None:
        self.scanned_at = time.monotonic()
        learnt = 0
        for name in _names(self.colony.store.task_dir("done")):
            if name not in self.done:
                self._mark_done(name)
        on_disk = set(_names(self.colony.store.task_dir("pending")))
        for tid, st in list(self.status.items()):
            if st == "pending" and tid not in on_disk:
                self.status[tid] = "gone"
        for tid in on_disk:
            if self.status.get(tid) != "pending" and tid not in self.entries:
                task = self.colony.store.read_task(self.colony.store.task_dir("pending") / f"{tid}.yaml")
                if task is not None:
                    self._set_pending(Entry.of(task, self.role))
                    learnt += 1
            elif self.status.get(tid) != "pending":
                self._set_pending(self.entries[tid])
        # The snapshot is rewritten when it lags, and at once when this scan found a file no event
        # told of (dropped in by hand): one-shot claims must see it too.
        snapshot.keep(self._snapshot_path(), self._order_key(), self.colony.store.events_path, self._saved, force=learnt > 0)

    # -- the snapshot (snapshot.py) ------------------------------------------------------------------
    def _snapshot_path(self) -> Path:
        return snapshot.path(self.colony.home, self.role.name if self.role else None)

    def _order_key(self) -> dict[str, Any]:
        """What the order of entries and their `suits` depend on besides the tasks themselves."""
        c, p = self.cfg, self.role.prefers if self.role else None
        return {"order": "ring", "weights": [c.skip_step, c.skip_cap, c.role_bonus, c.aging_per_hour],
                "role": self.role.name if self.role else None,
                "prefers": [list(p.kinds), [t.pattern for t in p.titles], list(p.paths)] if p else None}

    def _saved(self) -> tuple[Tail, dict[str, Any], list[Any]]:
        """This full index as a snapshot: where it stands in the log, the active tasks, and every
        pending entry in heap order."""
        pending = [e for tid, e in self.entries.items() if self.status.get(tid) == "pending"]
        pending.sort(key=lambda e: self._rank(e, 0))
        active = [tid for tid, st in self.status.items() if st == "active"]
        fields = {"active": [self.entries[tid].row(False) for tid in active if tid in self.entries],
                  "owners": {tid: o for tid in active if (o := self.owners.get(tid)) is not None},
                  "resolved_by": {k: sorted(v) for k, v in self.resolved_by.items()}}
        return self.tail, fields, [e.row(all(d in self.done for d in e.depends_on)) for e in pending]

    def _advance(self) -> None:
        """Read the snapshot's next entry into `head`, checking that it is in heap order."""
        try:
            row = next(self.rows, None)
            if row is None:
                self.head = None
                return
            e, deps_done = Entry.from_row(row)
        except (ValueError, TypeError) as err:  # a damaged line: snapshot.Torn, or a row of other fields
            raise snapshot.Torn(str(err)) from err
        rank = self._rank(e, 0)
        if self.head is not None and rank < self.head[0]:
            raise snapshot.Torn(f"snapshot entry {e.id} out of order")
        self.head = (rank, e, deps_done)

    def _pull(self) -> None:
        """Move snapshot entries into the heap while the next one ranks at least as high as the
        heap's top: the snapshot is in heap order, so the top is the best of both."""
        while self.head is not None and (not self.heap or self.head[0] <= self.heap[0][:3]):
            _, e, deps_done = self.head
            self._advance()
            if e.id in self.status:
                continue  # an event since the snapshot (or a claim attempt of ours) knows better
            if deps_done:
                self.done.update(e.depends_on)
            self._set_pending(e)

    # -- picking ------------------------------------------------------------------------------------
    def ready(self, e: Entry, now: float) -> bool:
        """Claimable as far as the index knows: its dependencies are done (else it waits on them)
        and it is not backing off (else it waits in `backing_off` until it is due)."""
        missing, left = readiness(e, lambda d: d in self.done or self._done_on_disk(d), now)
        for d in missing:
            self.waiters.setdefault(d, set()).add(e.id)
        if not missing and left:
            heapq.heappush(self.backing_off, (now + left, e.id, e.version))
            return False
        return not missing

    def _done_on_disk(self, tid: str) -> bool:
        """For a partial index, which knows no done tasks but those it was told of: ask the folder."""
        if not self.partial or not os.path.exists(f"{self.colony.store.task_dir('done')}/{tid}.yaml"):
            return False
        self._mark_done(tid)
        return True

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
        try:
            return self._candidates()
        except snapshot.Torn:  # the snapshot was damaged after it was written: do without it
            if self.snap is not None:
                self.snap.discard()
            self._go_full()
            return self._candidates()

    def _candidates(self) -> list[str]:
        now = time.time()
        while self.backing_off and self.backing_off[0][0] <= now:  # due again: back into the heap
            _, tid, version = heapq.heappop(self.backing_off)
            if (e := self._current(tid, version)) is not None:
                heapq.heappush(self.heap, (*self._rank(e), e.version))
        # The best TOP_K are kept aside between picks, so a pick pops only what replaces those
        # gone since (claimed, done, changed) and what now ranks above them, not all TOP_K again.
        best = [item for item in self.picked if self._current(item[2], item[3]) is not None]
        heap, entries, status = self.heap, self.entries, self.status
        while True:
            if self.head is not None:
                self._pull()
            if not heap or (len(best) >= TOP_K and heap[0] >= best[TOP_K - 1]):
                break
            item = heapq.heappop(heap)
            # _current, inline: with many claimers most of what a pick pops is what the others claimed
            e = entries.get(item[2])
            if e is None or e.version != item[3] or status.get(item[2]) != "pending":
                continue
            if self.ready(e, now):  # else blocked or backing off (each re-pushed when it can go)
                insort(best, item)
        for item in best[TOP_K:]:
            heapq.heappush(self.heap, item)
        self.picked = best[:TOP_K]
        touches, penalty = self.active.touches, self.cfg.overlap_penalty
        def score(item: tuple[int, int, str, int]) -> tuple[int, float]:
            hit = touches(self.entries[item[2]].keys())
            # Within one point of priority the order is random, so many agents picking at once
            # spread over the top tasks instead of all fighting for the very first one.
            return -item[0] - (penalty if hit else 0), random.random()
        return [item[2] for item in sorted(self.picked, key=score, reverse=True)]

    def learn(self, task: Task) -> None:
        """The file on disk says otherwise than our index (e.g. new dependencies): believe it."""
        e = Entry.of(task, self.role)
        old = self.entries.get(task.id)
        e.version = old.version if old else 0
        self._set_pending(e)

    def forget(self, tid: str, status: str) -> None:
        """Record a task leaving `pending` (claimed by us or another, done, failed, vanished)."""
        self.status[tid] = status
        if status == "active":
            e = self.entries.get(tid)
            if e is not None:
                self.active.add(tid, e.keys())
        else:
            self.active.discard(tid)
            self.owners.discard(tid)


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
