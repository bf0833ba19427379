"""The pool snapshot (harness/snapshot.py): a one-shot claim started from it picks what the full
index would, and any snapshot it cannot trust is ignored for a full build, which writes a new one."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import cli, set_config
from harness import fsutil, snapshot
from harness.colony import Colony
from harness.pool import RESCAN_SECONDS, Pool
from harness.tasks import Task


def snap_file(colony: Colony, role: str | None = None) -> Path:
    return snapshot.path(colony.home, role)


def snap_now(colony: Colony) -> dict[str, object]:
    """A snapshot of the colony as it is now, written as any full build writes a missing one."""
    snap_file(colony).unlink(missing_ok=True)
    Colony.open(colony.repo).pool(None)
    return header(colony)


def header(colony: Colony) -> dict[str, object]:
    """Line 1 and the index's fields of line 2, as a pool starting from the snapshot reads them."""
    with open(snap_file(colony), "rb") as f:
        return {**json.loads(f.readline()), **json.loads(f.readline())}


def lag(colony: Colony) -> int | None:
    return snapshot.lag(snap_file(colony), Pool(colony, None)._order_key(), colony.store.events_path)


def full_order(colony: Colony, role: str | None = None) -> list[str]:
    """The candidates of an index built in full, as without a snapshot."""
    pool = Pool(Colony.open(colony.repo), role)
    pool.refresh(force_scan=True)
    assert not pool.partial
    return pool.candidates()


def one_shot(colony: Colony, agent: str) -> tuple[str | None, Pool]:
    """Claim as `task claim` does, in a process that has no index yet: the task and the index used."""
    fresh = Colony.open(colony.repo)
    got = fresh.claim(agent)
    return (got[1].id if got else None), fresh._pools[None]


def test_a_claim_from_the_snapshot_picks_what_the_full_index_would(colony: Colony) -> None:
    # Priorities 4 apart and a skip worth 6, so that no two tasks share an integer priority (ties
    # are broken at random) and a release lands a task between two others.
    colony = set_config(colony, retry_backoff=0, skip_step=6)
    top = [Task(id=f"t{i:02d}", title=f"top {i}", priority=30 + 4 * i, outputs=[f"src/t{i}.py"]) for i in range(1, 17)]
    fillers = [Task(id=f"f{i:02d}", title=f"filler {i}", outputs=[f"lib/f{i}.py"], priority=0) for i in range(30)]
    colony.add_many([*top, *fillers, Task(id="base", title="base", priority=1),
                     Task(id="blocked", title="blocked", priority=99, depends_on=["base"]),
                     Task(id="prep", title="prep", priority=2), Task(id="pre", title="pre", priority=72,
                                                                     depends_on=["prep"])])
    assert colony.try_claim("prep", "early")
    colony.done("prep", "early")  # done before the snapshot, which lists no done task
    assert colony.try_claim("t16", "early") and colony.try_claim("base", "early")  # active in the snapshot
    head = snap_now(colony)
    assert head["count"] == 16 - 1 + 30 + 2 and sorted(r[0] for r in head["active"]) == ["base", "t16"]  # type: ignore[union-attr]
    written = snap_file(colony).read_bytes()

    # Since the snapshot: a new task; t16 (94) released, skip +6: 100, first; t05 (50) claimed and
    # released by a process the snapshot never heard of: 56, between t06 (54) and t07 (58); t15
    # (90) claimed and kept; base done, so blocked (99) is ready; a task waiting on prep, done
    # before the snapshot, is ready at once.
    colony.add(Task(id="new", title="new", priority=64))
    colony.add(Task(id="after", title="after", priority=97, depends_on=["prep"]))
    colony.add(Task(id="low", title="low", priority=3))  # new but far down: no candidate yet
    colony.release("t16", "early")
    other = Colony.open(colony.repo)
    assert other.try_claim("t05", "other") and other.try_claim("t15", "other")
    other.release("t05", "other")
    colony.done("base", "early")

    expected = full_order(colony)
    assert expected[:5] == ["t16", "blocked", "after", "t14", "t13"] and "pre" in expected
    assert expected.index("t05") == expected.index("t06") - 1
    assert "t15" not in expected and "low" not in expected and not any(e.startswith("f") for e in expected)
    assert snap_file(colony).read_bytes() == written  # a full index does not rewrite a fresh snapshot

    pool = Pool(Colony.open(colony.repo), None)
    assert pool.resume() and pool.partial
    assert pool.candidates() == expected
    assert len(pool.entries) < 30  # it read the snapshot's head, not all of it

    # The real one-shot CLI, each claim a process of its own started from the same snapshot.
    claimed = [cli("task", "claim", "--agent", f"cli{i}", "--repo", str(colony.repo), check=True).stdout.strip()
               for i in range(4)]
    assert claimed == expected[:4]
    got, used = one_shot(colony, "in-process")
    assert used.partial and got == expected[4]


def test_the_overlap_penalty_counts_tasks_active_in_the_snapshot_and_claimed_since(colony: Colony) -> None:
    colony.add_many([Task(id="busy", title="busy", priority=90, outputs=["src/auth/"]),
                     Task(id="touches", title="touches", priority=80, outputs=["src/auth/jwt.py"]),
                     Task(id="api", title="api", priority=95, outputs=["src/api/"]),
                     Task(id="client", title="client", priority=85, outputs=["src/api/client.py"]),
                     Task(id="elsewhere", title="elsewhere", priority=70, outputs=["docs/"]),
                     Task(id="other", title="other", priority=50, outputs=["lib/"])])
    assert colony.try_claim("busy", "a")  # active when the snapshot is written
    snap_now(colony)
    assert Colony.open(colony.repo).try_claim("api", "b")  # claimed since: only its claim event says so
    # client 85 - 20 = 65 and touches 80 - 20 = 60 overlap active outputs; elsewhere 70 does not.
    assert full_order(colony) == ["elsewhere", "client", "touches", "other"]
    pool = Pool(Colony.open(colony.repo), None)
    assert pool.resume() and pool.candidates() == ["elsewhere", "client", "touches", "other"]
    assert [one_shot(colony, f"c{i}")[0] for i in range(2)] == ["elsewhere", "client"]


def _truncate(colony: Colony) -> None:
    data = snap_file(colony).read_bytes()
    snap_file(colony).write_bytes(data[:len(data) * 3 // 4])  # cut in a row that no claim here reads


def _other_format(colony: Colony) -> None:
    lines = snap_file(colony).read_bytes().split(b"\n")
    head = json.loads(lines[0])
    lines[0] = json.dumps({**head, "format": snapshot.FORMAT + 1}).encode()
    snap_file(colony).write_bytes(b"\n".join(lines))


def _damage_row(n: int) -> Callable[[Colony], None]:
    def damage(colony: Colony) -> None:
        lines = snap_file(colony).read_bytes().split(b"\n")
        lines[n + 1] = b'["t39", 7' + b"\0" * 20  # the trailer is intact: only reading the row tells
        snap_file(colony).write_bytes(b"\n".join(lines))
    return damage


def _fields_damaged(colony: Colony) -> None:
    lines = snap_file(colony).read_bytes().split(b"\n")
    lines[1] = b'{"active": [' + b"\0" * 20  # line 2: the header and the trailer are intact
    snap_file(colony).write_bytes(b"\n".join(lines))


def _out_of_order(colony: Colony) -> None:
    lines = snap_file(colony).read_bytes().split(b"\n")
    lines[2], lines[3] = lines[3], lines[2]  # the first two rows
    snap_file(colony).write_bytes(b"\n".join(lines))


def _garbage(colony: Colony) -> None:
    snap_file(colony).write_bytes(os.urandom(4096))


def _log_replaced(colony: Colony) -> None:
    # The same events behind one more line: as long as before, but not the log the snapshot read.
    log = colony.store.events_path.read_bytes()
    colony.store.events_path.write_bytes(b'{"event": "rotated", "task": null, "ts": 1}\n' + log)


def _log_emptied(colony: Colony) -> None:
    colony.store.events_path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _other_format, _damage_row(1), _damage_row(3), _out_of_order,
                                    _fields_damaged, _garbage, _log_replaced, _log_emptied],
                         ids=["truncated", "other-format", "first-row-damaged", "later-row-damaged", "out-of-order",
                              "fields-damaged", "garbage", "log-replaced", "log-emptied"])
def test_a_snapshot_that_cannot_be_trusted_is_ignored_and_rewritten(colony: Colony,
                                                                    damage: Callable[[Colony], None]) -> None:
    # 40 tasks: a claim reads only the first 16 or so rows, not as far as a cut in the middle.
    colony.add_many([Task(id=f"t{i:02d}", title=f"t{i}", priority=2 * i) for i in range(1, 41)])
    assert colony.try_claim("t40", "a")  # the best one is taken: t39 is the one to claim
    snap_now(colony)
    damage(colony)
    got, used = one_shot(colony, "b")
    assert got == "t39" and not used.partial  # the full index, as without a snapshot
    # ... which wrote a snapshot the next one-shot claim can use.
    assert lag(colony) == 1
    got, used = one_shot(colony, "c")
    assert got == "t38" and used.partial


def test_other_priority_weights_or_role_preferences_do_not_use_the_snapshot(colony: Colony) -> None:
    colony.add_many([Task(id="plain", title="plain", priority=60), Task(id="other", title="other", priority=55),
                     Task(id="tests", title="Add tests for the parser", priority=50)])
    snap_now(colony)
    assert one_shot(colony, "a")[1].partial  # the snapshot serves the same weights
    colony.release("plain", "a", skip=False)
    colony = set_config(colony, role_bonus=40)
    got, used = one_shot(colony, "b")
    assert got == "plain" and not used.partial  # written under other weights: ignored
    tester = Colony.open(colony.repo)  # no snapshot for the tester's order yet: 50 + 40 for "tests"
    got_t = tester.claim("t", role="tester")
    assert got_t is not None and got_t[1].id == "tests" and not tester._pools["tester"].partial
    assert snap_file(colony, "tester").exists()


def test_a_lagging_snapshot_serves_until_the_bound_and_full_indexes_rewrite_it(colony: Colony) -> None:
    colony.add_many([Task(id=f"t{i:03d}", title=f"t{i}", priority=i % 100) for i in range(20)])
    snap_now(colony)
    noise = [{"ts": 1, "event": "sweep", "task": None}] * (snapshot.REWRITE_LAG + 1)
    fsutil.append_lines(colony.store.events_path, noise)
    written = snap_file(colony).read_bytes()
    got, used = one_shot(colony, "a")  # behind, but within MAX_LAG: still used, and not rewritten
    assert got == "t019" and used.partial and snap_file(colony).read_bytes() == written

    live = Colony.open(colony.repo).pool(None)  # a long-lived agent's full index rewrites it ...
    assert lag(colony) == 0
    fsutil.append_lines(colony.store.events_path, noise)
    written = snap_file(colony).read_bytes()
    live.refresh()
    assert snap_file(colony).read_bytes() == written  # ... not at every refresh, at its periodic rescan
    live.scanned_at = time.monotonic() - RESCAN_SECONDS - 1
    with open(f"{snap_file(colony)}.lock", "rb") as held:  # another process is writing it: leave it to them
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        live.refresh()
    assert snap_file(colony).read_bytes() == written
    live.refresh(force_scan=True)
    assert lag(colony) == 0

    fsutil.append_lines(colony.store.events_path, [{"ts": 1, "event": "sweep", "task": None}] * (snapshot.MAX_LAG + 1))
    got, used = one_shot(colony, "b")  # too far behind: a full build, which writes a new one
    assert got == "t018" and not used.partial
    assert lag(colony) == 1  # written before its claim


def test_a_task_file_dropped_in_by_hand_is_found_within_a_rescan(colony: Colony) -> None:
    colony.add_many([Task(id="a", title="a", priority=50), Task(id="b", title="b", priority=40)])
    snap_now(colony)
    agent = Colony.open(colony.repo)  # a long-lived agent whose first claim starts from the snapshot
    got = agent.claim("agent")
    assert got is not None and got[1].id == "a" and agent._pools[None].partial

    def drop(tid: str, priority: int) -> None:  # as a person or script does: a file, no event
        fsutil.atomic_write(colony.store.task_dir("pending") / f"{tid}.yaml",
                            Task(id=tid, title=tid, priority=priority).to_yaml())

    drop("hand", 99)
    agent._pools[None].scanned_at = time.monotonic() - RESCAN_SECONDS - 1  # its periodic rescan is due
    got = agent.claim("agent")
    assert got is not None and got[1].id == "hand" and not agent._pools[None].partial  # a full index now
    # A full index that finds such a file writes the snapshot at once, so one-shot claims see it too.
    drop("hand-2", 98)
    agent._pools[None].scanned_at = time.monotonic() - RESCAN_SECONDS - 1
    agent._pools[None].refresh()
    got_id, used = one_shot(colony, "cli")
    assert got_id == "hand-2" and used.partial


def test_callers_that_read_the_whole_index_never_get_a_partial_one(colony: Colony) -> None:
    colony.add_many([Task(id=f"t{i:02d}", title=f"t{i}", priority=i) for i in range(40)])
    snap_now(colony)
    fresh = Colony.open(colony.repo)
    assert fresh.claim("a") is not None and fresh._pools[None].partial
    index = fresh.pool(None)  # e.g. `status`, which lists every entry's kind and back-off
    assert index is fresh._pools[None] and not index.partial
    assert sorted(t for t, st in index.status.items() if st == "pending") == [f"t{i:02d}" for i in range(39)]
