"""The task pool, claims and the task CLI on a real repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, set_config, wait_for
from harness import conflicts, tasks
from harness.colony import Colony
from harness.errors import InvalidId, InvalidTask, NotOwner
from harness.tasks import Task


def test_init_is_idempotent_and_hides_runtime_state(repo: Path) -> None:
    assert cli("init", "--repo", str(repo)).returncode == 0
    config = (repo / ".stigmergy" / "config.yaml").read_text()
    snapshot = sorted(str(p.relative_to(repo)) for p in (repo / ".stigmergy").rglob("*"))
    assert cli("init", "--repo", str(repo)).returncode == 0
    assert (repo / ".stigmergy" / "config.yaml").read_text() == config
    assert sorted(str(p.relative_to(repo)) for p in (repo / ".stigmergy").rglob("*")) == snapshot
    colony = Colony.open(repo)
    colony.add(Task(id="a", title="A"))
    colony.heartbeat("agent-1")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    untracked = sorted(line for line in status if line)
    assert untracked == ["?? .stigmergy/.gitignore", "?? .stigmergy/config.yaml"]


def test_init_outside_a_repository_exits_2(tmp_path: Path) -> None:
    proc = cli("init", "--repo", str(tmp_path))
    assert proc.returncode == 2
    assert "not inside a git repository" in proc.stderr


@pytest.mark.parametrize("bad", ["../etc", "a/b", "Upper", "a..b", "x\ny", "", "-lead", "a" * 65, "tab\there"])
def test_unsafe_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidId):
        tasks.check_id(bad)


def test_traversal_ids_exit_2_from_the_cli(colony: Colony) -> None:
    for args in (["task", "add", "x", "--id", "../../evil"], ["task", "show", "../x"],
                 ["task", "release", "../x", "--agent", "a"], ["task", "claim", "--agent", "../a"]):
        proc = cli(*args, "--repo", str(colony.repo))
        assert proc.returncode == 2, args
        assert "not a valid task id" in proc.stderr
    assert not list(colony.repo.parent.glob("evil*"))


@pytest.mark.parametrize("text, field", [
    ("id: a\ntitle: A\npriority: urgent\n", "priority"),
    ("id: a\ntitle: A\nsurprise: 1\n", "surprise"),
    ("id: a\ntitle: A\ndepends_on: b\n", "depends_on"),
    ("id: a\ntitle: A\nkind: chore\n", "kind"),
    ("id: a\n", "title"),
    ("- just\n- a list\n", "mapping"),
    ("id: a\ntitle: [unclosed\n", "YAML"),
])
def test_validation_names_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidTask, match=field):
        tasks.parse(text, "a.yaml")


def test_priority_names_and_effective_order(colony: Colony) -> None:
    for tid, prio in (("low-1", "low"), ("crit-1", "critical"), ("mid-1", 50), ("high-1", "high")):
        colony.add(tasks.from_dict({"id": tid, "title": tid, "priority": prio}, "test"))
    rows = json.loads(cli("task", "list", "--json", "--repo", str(colony.repo), check=True).stdout)
    assert [r["id"] for r in rows] == ["crit-1", "high-1", "mid-1", "low-1"]
    assert [r["priority"] for r in rows] == [95, 80, 50, 20]


def test_skips_and_aging_raise_effective_priority(colony: Colony) -> None:
    old = Task(id="old", title="old", priority=40, created_at=time.time() - 20 * 3600)  # 20 h * 2/h = +40
    skipped = Task(id="skipped", title="skipped", priority=50, skip_count=3)  # +15
    fresh = Task(id="fresh", title="fresh", priority=60)
    for t in (old, skipped, fresh):
        colony.add(t)
    got = colony.claim("a1")
    assert got is not None and got[1].id == "old"
    assert colony.claim("a1")[1].id == "skipped"  # type: ignore[index]
    assert colony.claim("a1")[1].id == "fresh"  # type: ignore[index]


def test_role_bonus_and_overlap_penalty(colony: Colony) -> None:
    colony.add(Task(id="plain", title="plain", priority=60))
    colony.add(Task(id="conflict", title="conflict", kind="merge_conflict", priority=50))
    assert colony.claim("m1", role="merger")[1].id == "conflict"  # type: ignore[index]
    colony.add(Task(id="busy", title="busy", priority=50, outputs=["src/auth"]))
    colony.add(Task(id="touches-busy", title="t", priority=55, outputs=["src/auth/jwt.py"]))
    colony.add(Task(id="elsewhere", title="e", priority=45, outputs=["docs/"]))
    assert colony.claim("c1")[1].id == "plain"  # type: ignore[index]
    assert colony.claim("c1")[1].id == "touches-busy"  # type: ignore[index]
    # busy (50) overlaps the now-active touches-busy: 50 - 20 = 30 < elsewhere's 45
    assert colony.claim("c1")[1].id == "elsewhere"  # type: ignore[index]


def test_dependencies_gate_readiness_and_cycles_are_reported(colony: Colony) -> None:
    colony.add(Task(id="base", title="base"))
    colony.add(Task(id="top", title="top", priority=90, depends_on=["base"]))
    colony.add(Task(id="c1", title="c1", depends_on=["c2"]))
    proc = cli("task", "add", "c2", "--id", "c2", "--depends-on", "c1", "--repo", str(colony.repo))
    assert proc.returncode == 0 and "cycle c" in proc.stderr
    claim, task = colony.claim("a")  # type: ignore[misc]
    assert task.id == "base"
    assert colony.claim("a") is None  # top waits on base, c1/c2 wait on each other
    colony.done("base", "a")
    assert colony.claim("a")[1].id == "top"  # type: ignore[index]
    rows = json.loads(cli("task", "list", "--json", "--repo", str(colony.repo), check=True).stdout)
    assert {r["id"]: r.get("cycle") for r in rows} == {"c1": True, "c2": True}


def test_release_keeps_note_for_next_claimant_and_counts_skips(colony: Colony) -> None:
    colony = set_config(colony, retry_backoff=0)  # claimed again at once (the back-off is tested below)
    colony.add(Task(id="t", title="t"))
    colony.claim("a1")
    assert cli("task", "release", "t", "--agent", "a2", "--repo", str(colony.repo)).returncode == 2
    assert cli("task", "release", "t", "--agent", "a1", "--note", "tried regex: too slow",
               "--repo", str(colony.repo)).returncode == 0
    out = json.loads(cli("task", "claim", "--agent", "a2", "--json", "--repo", str(colony.repo), check=True).stdout)
    assert out["id"] == "t" and out["skip_count"] == 1 and out["generation"] == 2
    assert [n["text"] for n in out["notes"]] == ["tried regex: too slow"]
    with pytest.raises(NotOwner):
        colony.done("t", "a1")
    colony.fail("t", "a2", note="impossible")
    assert colony.get("t")[0] == "failed"
    kinds = [e["event"] for e in colony.events()]
    assert kinds == ["add", "claim", "release", "claim", "fail"]


def test_a_released_task_backs_off_while_others_go_first_and_retry_clears_it(colony: Colony) -> None:
    colony = set_config(colony, retry_backoff=1, retry_backoff_max=1.5)
    colony.add(Task(id="flaky", title="flaky", priority=60))
    colony.add(Task(id="other", title="other", priority=50))
    claim, _ = colony.claim("a1") or pytest.fail("nothing to claim")
    assert claim.task_id == "flaky"
    colony.release("flaky", "a1", note="it broke", token=claim.token)
    got = colony.claim("a1")
    assert got is not None and got[1].id == "other"  # 60 + its skip bonus, but it is backing off
    # The live index (this colony's pool) learnt the back-off from the event; the file says it too.
    due = colony.pool(None).next_due()
    status, task = colony.get("flaky")
    assert status == "pending" and task.not_before == due and 0.5 < due - time.time() <= 1
    assert colony.claim("a2") is None and not colony.idle()  # a task still to be retried is work left
    # A second process, its own index built from the log, agrees; and the listing says when.
    proc = cli("task", "claim", "--agent", "a3", "--repo", str(colony.repo))
    assert proc.returncode == 3, proc.stdout
    listed = cli("task", "list", "--repo", str(colony.repo), check=True).stdout
    assert re.search(r"flaky +flaky \[retry in 1s\]", listed), listed
    row = next(r for r in json.loads(cli("task", "list", "--json", "--repo", str(colony.repo), check=True).stdout)
               if r["id"] == "flaky")
    assert row["ready"] is False and row["retry_in"] == 1
    wait_for(lambda: time.time() > due, 5, "the back-off to pass")
    claim, task = colony.claim("a2") or pytest.fail("flaky is due again")
    assert task.id == "flaky" and task.skip_count == 1
    colony.release("flaky", "a2", token=claim.token)  # twice the wait, but capped
    due = colony.get("flaky")[1].not_before or pytest.fail("not backing off")
    assert 1.2 < due - time.time() <= 1.5
    wait_for(lambda: time.time() > due, 5, "the second back-off to pass")
    claim, _ = colony.claim("a3") or pytest.fail("flaky is due again")
    colony.fail("flaky", "a3", note="impossible", token=claim.token)
    # `task retry`, a person's decision, starts afresh: no skips, no back-off.
    assert cli("task", "retry", "flaky", "--repo", str(colony.repo), check=True).returncode == 0
    status, task = colony.get("flaky")
    assert (status, task.skip_count, task.not_before) == ("pending", 0, None)
    got = colony.claim("a3")
    assert got is not None and got[1].id == "flaky"


def test_claim_exit_codes_and_both_entry_points(colony: Colony) -> None:
    proc = cli("task", "claim", "--agent", "a", "--repo", str(colony.repo))
    assert proc.returncode == 3
    colony.add(Task(id="only", title="only"))
    stigmergy = Path(sys.executable).parent / "stigmergy"  # the console script beside this interpreter
    proc2 = subprocess.run([str(stigmergy), "task", "claim", "--agent", "a", "--repo", str(colony.repo)],
                           capture_output=True, text=True)
    assert (proc2.returncode, proc2.stdout.strip()) == (0, "only")
    assert cli("task", "show", "nope", "--repo", str(colony.repo)).returncode == 2


def test_import_yaml_and_markdown(colony: Colony, tmp_path: Path) -> None:
    (tmp_path / "backlog.md").write_text("# Backlog\n- [ ] Add login page\n- [x] Already done\n* [ ] Write tests\n")
    assert cli("task", "import", str(tmp_path / "backlog.md"), "--repo", str(colony.repo), check=True)
    (tmp_path / "tasks.yaml").write_text("- {id: db, title: Schema, priority: high}\n"
                                         "- {title: API, depends_on: [db], outputs: [src/api]}\n")
    assert cli("task", "import", str(tmp_path / "tasks.yaml"), "--repo", str(colony.repo), check=True)
    titles = sorted(t.title for _, t in colony.listing())
    assert titles == ["API", "Add login page", "Schema", "Write tests"]
    (tmp_path / "bad.yaml").write_text("- {id: ok-1, title: fine}\n- {id: BAD, title: nope}\n")
    proc = cli("task", "import", str(tmp_path / "bad.yaml"), "--repo", str(colony.repo))
    assert proc.returncode == 2 and "item 2" in proc.stderr
    assert colony.store.locate("ok-1") is None  # all or nothing


def test_corrupt_task_files_are_quarantined_while_claims_go_on(colony: Colony, tmp_path: Path) -> None:
    pending = colony.store.task_dir("pending")
    for i in range(5):
        colony.add(Task(id=f"good-{i}", title=f"good {i}"))
    (pending / "badyaml.yaml").write_text("id: badyaml\ntitle: [oops\n")
    (pending / "wrongtype.yaml").write_text("id: wrongtype\ntitle: x\npriority: [1]\n")
    (pending / "unknown.yaml").write_text("id: unknown\ntitle: x\nowner: me\n")
    (pending / "binary.yaml").write_bytes(b"id: binary\ntitle: \x00\xff\xfe")
    (pending / "huge.yaml").write_text("id: huge\ntitle: x\nbody: " + "y" * 300_000 + "\n")
    (tmp_path / "outside.yaml").write_text("id: link\ntitle: x\n")
    os.symlink(tmp_path / "outside.yaml", pending / "link.yaml")
    (pending / "mismatch.yaml").write_text("id: other\ntitle: x\n")
    os.mkfifo(pending / "fifo.yaml")  # refused, not waited on: no writer will ever come
    fresh = Colony.open(colony.repo)  # a new process: the hand-dropped files are found by its scan
    claimed = []
    while got := fresh.claim("a"):
        claimed.append(got[1].id)
    assert sorted(claimed) == [f"good-{i}" for i in range(5)]
    quarantined = sorted(p.name.split(".yaml")[0] for p in colony.store.task_dir("quarantine").glob("*.yaml.*")
                         if not p.name.endswith(".reason"))
    assert quarantined == ["badyaml", "binary", "fifo", "huge", "link", "mismatch", "unknown", "wrongtype"]
    reasons = {e["file"]: e["reason"] for e in colony.events() if e["event"] == "quarantine"}
    assert "too large" in reasons["huge.yaml"] and "symlink" in reasons["link.yaml"]
    assert (tmp_path / "outside.yaml").exists()  # the symlink's target is untouched
    assert cli("task", "list", "--status", "all", "--repo", str(colony.repo)).returncode == 0


def test_config_errors_name_the_setting(colony: Colony) -> None:
    (colony.home / "config.yaml").write_text("lease_ttl: soon\n")
    proc = cli("task", "list", "--repo", str(colony.repo))
    assert proc.returncode == 2 and "lease_ttl" in proc.stderr
    (colony.home / "config.yaml").write_text("leese_ttl: 5\n")
    proc = cli("task", "list", "--repo", str(colony.repo))
    assert proc.returncode == 2 and "leese_ttl" in proc.stderr


def test_heartbeat_cli_keeps_an_external_claim(colony: Colony) -> None:
    colony = set_config(colony, lease_ttl=1)
    colony.add(Task(id="ext", title="external"))
    assert cli("task", "claim", "--agent", "ext-agent", "--repo", str(colony.repo), check=True).stdout.strip() == "ext"
    for _ in range(3):
        time.sleep(0.5)
        cli("agent", "heartbeat", "--agent", "ext-agent", "--repo", str(colony.repo), check=True)
    assert colony.reap("other") == []
    time.sleep(1.3)
    assert colony.reap("other") == ["ext"]
    notes = colony.notes("ext")
    assert "abandoned by ext-agent" in notes[-1]["text"]
    status, task = colony.get("ext")
    assert (status, task.skip_count) == ("pending", 1)


def test_a_truncated_event_log_does_not_blind_a_running_agent(colony: Colony) -> None:
    colony.add(Task(id="before", title="before"))
    pool = colony.pool(None)  # a running agent's index, already past the first event
    colony.store.events_path.write_text("")  # someone rotates or deletes the log...
    colony.add(Task(id="after-with-a-longer-id", title="after"))  # ...and it grows past our offset
    pool.refresh()  # an ordinary refresh, not a forced rescan
    assert sorted(pool.candidates()) == ["after-with-a-longer-id", "before"]


def test_a_failed_conflict_resolution_sends_its_original_back_to_work(colony: Colony) -> None:
    colony.add(Task(id="orig", title="original"))
    claim, _ = colony.claim("a")  # type: ignore[misc]
    colony.add(Task(id="conflict-orig", title="resolve", kind="merge_conflict", priority=95, resolves="orig"))
    conflicts.defer(colony, "orig", "a", waits_on="conflict-orig", note="conflicted", token=claim.token)
    assert colony.claim("m")[1].id == "conflict-orig"  # type: ignore[index]
    assert colony.claim("b") is None  # the original waits for its resolution
    colony.fail("conflict-orig", "m", note="could not merge")
    status, task = colony.get("orig")
    assert (status, task.depends_on) == ("pending", [])
    assert "failed to resolve" in colony.notes("orig")[-1]["text"]
    assert colony.claim("b")[1].id == "orig"  # type: ignore[index]


def test_an_owner_dead_between_filing_a_conflict_and_deferring_leaves_no_double_work(colony: Colony) -> None:
    colony.add(Task(id="orig", title="original"))
    ghost = subprocess.Popen(["true"])
    ghost.wait()
    colony.claim("a", pid=ghost.pid)  # claimed by a process that then died...
    colony.add(Task(id="conflict-orig", title="resolve", kind="merge_conflict", priority=95, resolves="orig"))
    # ...right after filing the conflict task, before deferring the original.
    assert colony.reap("b") == ["orig"]
    status, task = colony.get("orig")
    assert (status, task.depends_on) == ("pending", ["conflict-orig"])
    assert colony.claim("b")[1].id == "conflict-orig"  # type: ignore[index]
    assert colony.claim("c") is None  # the original waits for its resolution, not redone beside it


def test_agents_picking_at_once_start_on_different_tasks_of_the_top_point(colony: Colony) -> None:
    """Within one point of priority each index walks the shared ring from its own place: the top
    point still comes first for everyone, but eight agents do not all weigh the same 11 of the
    next point's 200 tasks (in one shared order they would, and fight over them)."""
    colony.add_many([Task(id=f"hi-{i}", title="urgent", priority=90) for i in range(5)]
                    + [Task(id=f"lo-{i:03d}", title="routine", priority=50) for i in range(200)])
    firsts: set[str] = set()
    for _ in range(8):
        ids = Colony.open(colony.repo).pool(None).candidates()
        assert len(ids) == 16 and sorted(ids[:5]) == [f"hi-{i}" for i in range(5)]
        assert all(t.startswith("lo-") for t in ids[5:])
        firsts.update(ids[5:])
    assert len(firsts) > 11 * 3


def test_a_reaping_pass_excuses_owners_only_as_of_the_oldest_claim_and_never_a_stale_one() -> None:
    """Owners judges each owner once, as of the oldest claim of all: when every owner passes, every
    claim is excused unread; one old claim makes an owner (here every owner) fail, and its claims
    are then left to be judged one by one. A damaged line's owner is unknown: never excused."""
    from harness.pool import Owners

    now = time.time()
    owners = Owners()
    for tid, at in [("a1", now), ("a2", now - 5)]:
        owners.add(tid, {"agent": "a", "pid": 1, "host": "h", "claimed_at": at, "event": "claim"})
    owners.add("b1", {"agent": "b", "pid": 2, "host": "h", "claimed_at": now})
    judged: list[object] = []
    def young(owner: dict[str, object]) -> bool:
        judged.append(owner["agent"])
        return now - float(owner["claimed_at"]) < 100  # type: ignore[arg-type]
    assert set(owners.excused(young)) == {"a1", "a2", "b1"} and sorted(judged) == ["a", "b"]  # once each
    owners.add("a3", {"agent": "a", "pid": 1, "host": "h", "claimed_at": now - 1000})
    assert set(owners.excused(young)) == set()  # nothing excused that its own age would not excuse
    assert owners.get("a3") == {"agent": "a", "pid": 1, "host": "h", "claimed_at": now - 1000}
    def not_a(owner: dict[str, object]) -> bool:
        return owner["agent"] != "a"
    assert set(owners.excused(not_a)) == {"b1"}
    owners.discard("a3")
    owners.add("a1", {"agent": "c", "pid": 3, "host": "h", "claimed_at": now})  # claimed anew
    assert set(owners.excused(young)) == {"a1", "a2", "b1"} and owners.get("a1")["agent"] == "c"  # type: ignore[index]
    owners.add("d1", {"agent": ["x"], "pid": [1], "host": "h", "claimed_at": now})  # a damaged line
    assert owners.get("d1") == {"agent": None, "pid": None, "host": None, "claimed_at": now}
    assert set(owners.excused(young)) == {"a1", "a2", "b1"}


def test_claim_lines_are_read_without_json_only_when_that_says_what_json_would(colony: Colony) -> None:
    """Every agent reads every claim line by a pattern, not by json: the line try_claim writes
    must match it and give json's values; any other shape (a hand-written line, a string with an
    escape, a damaged number, an output named with a `]`) must fall through to json, and is still
    learnt when json can read it."""
    from harness.pool import OWNER_FIELDS, claim_line, owner_dict

    colony.add_many([Task(id="t1", title="one", outputs=["src/a.py", "b.py"]),
                     Task(id="t3", title="odd", outputs=['src/"odd], "pid": 7.py'])])
    pool = colony.pool(None)
    claim, _ = colony.try_claim("t1", "a1", pid=42)  # type: ignore[misc]
    line = colony.store.events_path.read_bytes().splitlines()[-1]
    ev = json.loads(line)
    got = claim_line(line)
    assert got is not None and got[0] == "t1" and owner_dict(got[1]) == {k: ev[k] for k in OWNER_FIELDS}
    assert owner_dict(got[1])["pid"] == 42 and claim.agent == "a1"
    for other in (line.replace(b'"host": "', b'"host": "\\u0041'),  # an escape: json's to judge
                  line.replace(b'"claimed_at": ', b'"claimed_at": 1.2.'),  # not a number
                  json.dumps({"task": "t1", **ev}).encode()):  # another key order
        assert claim_line(other) is None
    odd, _ = colony.try_claim("t3", "a3", pid=43)  # type: ignore[misc]
    assert claim_line(colony.store.events_path.read_bytes().splitlines()[-1]) is None
    colony.add(Task(id="t2", title="two"))
    hand = json.dumps({"task": "t2", "event": "claim", "agent": "h1", "pid": 5, "host": "x", "claimed_at": 1.0})
    with colony.store.events_path.open("a") as f:
        f.write(hand + "\n")
    pool.refresh()
    assert pool.status["t1"] == pool.status["t2"] == pool.status["t3"] == "active"
    assert pool.owners.get("t1") == {"agent": "a1", "pid": 42, "host": colony.host, "claimed_at": claim.claimed_at}
    assert pool.owners.get("t3") == {"agent": "a3", "pid": 43, "host": colony.host, "claimed_at": odd.claimed_at}
    assert pool.owners.get("t2") == {"agent": "h1", "pid": 5, "host": "x", "claimed_at": 1.0}


def test_the_index_of_busy_outputs_agrees_with_comparing_every_pair() -> None:
    """Busy answers "does this touch an active task's outputs" from an index; it must say what
    comparing the paths pairwise says (one is, or lies under, the other), as tasks come and go."""
    import random
    from pathlib import PurePosixPath

    from harness.pool import Busy, busy_keys

    def parts(p: str) -> tuple[str, ...]:
        return PurePosixPath(p.strip("/") or ".").parts

    def pairwise(a: list[str], active: dict[str, list[str]]) -> bool:
        return any(pa[:len(pb)] == pb or pb[:len(pa)] == pa
                   for outs in active.values() for pa in map(parts, a) for pb in map(parts, outs))

    rng = random.Random(7)
    names = ["src", "src/a", "src/a/x.py", "src/b.py", "docs/", "docs/index.md", ".", "/src/a/", "tests/t.py"]
    busy, active = Busy(), {}
    for step in range(400):
        tid = f"t{rng.randrange(12)}"
        if rng.random() < 0.6:
            outs = rng.sample(names, rng.randint(1, 2))
            busy.add(tid, busy_keys(outs))
            active[tid] = outs
        else:
            busy.discard(tid)
            active.pop(tid, None)
        probe = rng.sample(names, rng.randint(1, 2))
        assert busy.touches(busy_keys(probe)) == pairwise(probe, active), (step, probe, active)


def test_claims_of_a_colony_from_before_symlinks_are_carried_over(colony: Colony) -> None:
    """A colony whose claims are generation folders (`<id>.lock/<gen>/owner.json`, `released`):
    opening it rewrites them, so a held claim stays held by its owner and a released one free."""
    for tid in ("held", "free"):
        colony.add(Task(id=tid, title=tid))
    claims = {}
    for _ in range(2):
        got = colony.claim("a1")
        assert got is not None
        claims[got[0].task_id] = got[0]
    colony.release("free", "a1", token=claims["free"].token, skip=False)
    locks = colony.home / "locks"
    for entry in sorted(os.listdir(locks)):  # write them back as the older layout had them
        if entry.startswith("."):
            os.unlink(locks / entry)
            continue
        path = locks / entry
        tid, _, rest = entry.partition(".lock.")
        gen, _, released = rest.partition(".")
        folder = locks / f"{tid}.lock" / gen
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ("released" if released else "owner.json")).write_text(os.readlink(path) + "\n")
        os.unlink(path)
    assert not colony.holds(claims["held"])  # the new code cannot read folders...
    reopened = Colony.open(colony.repo)  # ...until the colony is opened
    assert reopened.holds(claims["held"]) and reopened.current_claim("free") is None
    assert not any(p.is_dir() for p in locks.iterdir())
    assert reopened.claim("b1") is not None and reopened.claim("b1") is None  # free is claimable, held is not
    assert reopened.leases.generation("free") == 2


def test_a_task_claimed_many_times_keeps_counting_generations(colony: Colony) -> None:
    colony.add(Task(id="often", title="often"))
    for n in range(1, 21):  # the current generation is found by probing: check it at every step
        got = colony.claim("a1")
        assert got is not None and got[0].generation == n == colony.leases.generation("often")
        colony.release("often", "a1", token=got[0].token, skip=False)
    assert [os.path.basename(p) for p in colony.leases.generations("often")] == [f"often.lock.{g:06d}" for g in range(1, 21)]


def test_the_commented_default_file_is_where_defaults_live(tmp_path: Path) -> None:
    import yaml

    from harness.config import DEFAULT_CONFIG, Config
    written = yaml.safe_load(DEFAULT_CONFIG)
    first = Config.load(tmp_path / "missing.yaml")
    assert {k: getattr(first, k) for k in written} == written  # every setting, with the file's value
    (tmp_path / "one.yaml").write_text("lease_ttl: 7\n")
    one = Config.load(tmp_path / "one.yaml")
    assert one.lease_ttl == 7 and one.heartbeat_interval == written["heartbeat_interval"]
    first.sandbox_read.append("/somewhere")  # a loaded list is the config's own
    assert Config.load(tmp_path / "missing.yaml").sandbox_read == []


def test_one_id_check_for_tasks_agents_and_refs() -> None:
    for bad in ("Upper", "a/b", "..x", "x..y", "ends.lock", "", "-lead", "x" * 65):
        with pytest.raises(InvalidId):
            tasks.check_id(bad, "agent", "agent name")
    assert tasks.check_id("coder-01.x_y", "agent", "agent name") == "coder-01.x_y"
    with pytest.raises(InvalidId, match="not a valid agent name"):
        tasks.check_id("Ant", "agent", "agent name")


def test_a_resolution_landing_before_its_dead_original_was_reaped_ends_the_original_s_claim(colony: Colony) -> None:
    colony.add(Task(id="orig", title="original"))
    ghost = subprocess.Popen(["true"])
    ghost.wait()
    colony.claim("a", pid=ghost.pid)  # its owner dies after filing the conflict task, before deferring
    colony.add(Task(id="conflict-orig", title="resolve", kind="merge_conflict", priority=95, resolves="orig"))
    resolution, _ = colony.claim("m")  # type: ignore[misc]
    conflicts.settle(colony, "orig", by="m", via="conflict-orig")  # the resolution landed first
    colony.done("conflict-orig", "m", token=resolution.token)
    assert colony.get("orig")[0] == "done"
    assert colony.current_claim("orig") is None  # no claim left held on a done task
    assert colony.reap("b") == []
