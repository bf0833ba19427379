"""Claims under real concurrency: many processes, real files, real signals."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import set_config
from harness.colony import Colony
from harness.tasks import Task

CLAIM_ALL = """
import json, sys
from pathlib import Path
from harness.colony import Colony
colony = Colony.open(Path(sys.argv[1]))
got = []
while (c := colony.claim(sys.argv[2])) is not None:
    got.append(c[1].id)
Path(sys.argv[3]).write_text(json.dumps(got))
"""


def test_64_processes_claim_10k_tasks_each_exactly_once(colony: Colony, tmp_path: Path) -> None:
    n_tasks, n_procs = 10_000, 64
    colony.add_many([Task(id=f"t{i:05d}", title=f"task {i}", priority=i % 100) for i in range(n_tasks)])
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_ALL, str(colony.repo), f"agent-{i}",
                               str(tmp_path / f"out-{i}.json")]) for i in range(n_procs)]
    assert [p.wait(timeout=600) for p in procs] == [0] * n_procs
    claimed = [tid for i in range(n_procs) for tid in json.loads((tmp_path / f"out-{i}.json").read_text())]
    assert len(claimed) == n_tasks
    assert set(claimed) == {f"t{i:05d}" for i in range(n_tasks)}
    assert len(list(colony.store.task_dir("active").iterdir())) == n_tasks
    claims = [e for e in colony.events() if e["event"] == "claim"]
    assert len(claims) == n_tasks and {e["generation"] for e in claims} == {1}
    assert sum(1 for i in range(n_procs) if json.loads((tmp_path / f"out-{i}.json").read_text())) > 1


def _breaker(repo: str, agent: str, rounds: int, barrier: object, results: object) -> None:
    colony = Colony.open(Path(repo))
    for r in range(rounds):
        barrier.wait()  # type: ignore[attr-defined]
        claim = colony.try_claim(f"r{r:04d}", agent)
        results.put((r, agent, claim[0].generation if isinstance(claim, tuple) else None))  # type: ignore[attr-defined]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_16_processes_break_one_stale_claim_exactly_one_wins_per_round(colony: Colony) -> None:
    rounds, n_procs = 300, 16
    colony = set_config(colony, lease_ttl=0.5)
    colony.add_many([Task(id=f"r{r:04d}", title="stale") for r in range(rounds)])
    ghost_pid = _dead_pid()
    for r in range(rounds):  # every task starts claimed by a process that no longer exists...
        assert isinstance(colony.try_claim(f"r{r:04d}", "ghost", pid=ghost_pid), tuple)
    time.sleep(1)  # ...and whose lease has run out
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n_procs), ctx.Queue()
    workers = [ctx.Process(target=_breaker, args=(str(colony.repo), f"w{i:02d}", rounds, barrier, results))
               for i in range(n_procs)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in range(rounds * n_procs)]
    for w in workers:
        w.join(timeout=30)
    winners: dict[int, list[str]] = {}
    for r, agent, gen in outcomes:
        if gen is not None:
            winners.setdefault(r, []).append(agent)
    assert all(len(winners.get(r, [])) == 1 for r in range(rounds)), {r: w for r, w in winners.items() if len(w) != 1}
    reaps: dict[str, int] = {}
    for e in colony.events():
        if e["event"] == "reap":
            reaps[e["task"]] = reaps.get(e["task"], 0) + 1
    assert reaps == {f"r{r:04d}": 1 for r in range(rounds)}
    for r in range(rounds):
        current = colony.current_claim(f"r{r:04d}")
        assert current is not None and current.agent == winners[r][0]


OWNER = """
import sys, time
from pathlib import Path
from harness.colony import Colony
colony = Colony.open(Path(sys.argv[1]))
colony.heartbeat("owner", pid=None)
claim, task = colony.claim("owner", pid=None if sys.argv[2] == "nopid" else __import__("os").getpid())
print(task.id, flush=True)
while True:
    colony.heartbeat("owner")
    time.sleep(0.2)
"""


def test_sigkilled_owner_is_reclaimed_after_the_lease_live_owner_keeps_it(colony: Colony) -> None:
    colony = set_config(colony, lease_ttl=1.5)
    colony.add(Task(id="job", title="job"))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(colony.repo), "nopid"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "job"
        time.sleep(3)  # two leases: the owner's heartbeat keeps it fresh
        assert colony.claim("thief") is None and colony.reap("thief") == []
        assert colony.current_claim("job").agent == "owner"  # type: ignore[union-attr]
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert colony.claim("thief") is None  # the lease has not run out yet
        time.sleep(2)
        got = colony.claim("thief")
        assert got is not None and got[1].id == "job" and got[1].skip_count == 1
        assert "abandoned by owner" in colony.notes("job")[-1]["text"]
    finally:
        owner.kill()


def test_dead_pid_on_this_host_frees_the_claim_without_waiting(colony: Colony) -> None:
    colony = set_config(colony, lease_ttl=3600)
    colony.add(Task(id="job", title="job"))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(colony.repo), "pid"], stdout=subprocess.PIPE,
                             text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "job"
    assert colony.claim("other") is None
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    got = colony.claim("other")
    assert got is not None and got[0].generation == 3  # 1 owner, 2 the reap, 3 the new claim
