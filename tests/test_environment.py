"""The environment contract (harness/environment.py), run against every backend.

Each test speaks only the contract, through `Backend`: how to make an environment with some
settings and how another process opens the same one. Races use real processes.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import make_repo
from harness.colony import Colony
from harness.config import DEFAULT_CONFIG
from harness.environment import Environment
from harness.errors import InvalidTask, NotOwner
from harness.nest import Nest
from harness.tasks import Task


@dataclass
class Backend:
    name: str
    make: Callable[..., Environment]  # settings (config keys) -> a new, empty environment
    address: Callable[[Environment], str]  # names an environment to another process
    open: Callable[[str], Environment]  # the environment an address names, opened here
    open_code: str  # Python that binds `env` to the environment whose address is sys.argv[1]


def _local(tmp_path: Path) -> Backend:
    def make(**settings: Any) -> Environment:
        colony = Colony.init(make_repo(tmp_path / "target"))
        if settings:
            with open(colony.home / "config.yaml", "a") as f:
                f.write(yaml.safe_dump(settings))
            colony = Colony.open(colony.repo)
        return colony
    code = "import sys\nfrom pathlib import Path\nfrom harness.colony import Colony\nenv = Colony.open(Path(sys.argv[1]))\n"
    return Backend("local", make, lambda env: str(env.home.parent), lambda address: Colony.open(Path(address)), code)


def _nest(tmp_path: Path) -> Backend:
    """A nest in a bare repository on disk, the processes of this machine sharing one cache."""
    def make(**settings: Any) -> Environment:
        return Nest.init(str(tmp_path / "nest.git"), DEFAULT_CONFIG + (yaml.safe_dump(settings) if settings else ""), tmp_path / "cache")
    code = ("import sys\nfrom pathlib import Path\nfrom harness.nest import Nest\n"
            "env = Nest(sys.argv[1], Path(sys.argv[1]).parent / 'cache')\n")
    return Backend("nest", make, lambda env: str(tmp_path / "nest.git"),
                   lambda address: Nest(address, Path(address).parent / "cache"), code)


@pytest.fixture(params=["local", "nest"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield {"local": _local, "nest": _nest}[request.param](tmp_path)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- tasks ------------------------------------------------------------------------------------------

ADD_ONE = """
try:
    env.add(Task(id="same", title=sys.argv[2]))
    print("filed")
except InvalidTask:
    print("refused")
"""


def test_an_id_is_filed_once_even_by_racing_processes(backend: Backend) -> None:
    env = backend.make()
    code = backend.open_code + "from harness.tasks import Task\nfrom harness.errors import InvalidTask\n" + ADD_ONE
    procs = [subprocess.Popen([sys.executable, "-c", code, backend.address(env), f"by {i}"], stdout=subprocess.PIPE,
                              text=True) for i in range(8)]
    said = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(said) == ["filed"] + ["refused"] * 7
    assert [t.id for _, t in env.listing("all")] == ["same"]
    with pytest.raises(InvalidTask):
        env.add(Task(id="same", title="again"))


def test_a_claim_takes_the_most_urgent_ready_task(backend: Backend) -> None:
    env = backend.make()
    env.add_many([Task(id="low", title="low", priority=10), Task(id="high", title="high", priority=90),
                  Task(id="blocked", title="waits", priority=99, depends_on=["low"]),
                  Task(id="later", title="backs off", priority=95, not_before=time.time() + 3600)])
    assert not env.ready(env.get("blocked")[1]) and not env.ready(env.get("later")[1])
    assert env.ready(env.get("low")[1])
    first = env.claim("a1")
    assert first is not None and first[1].id == "high" and first[0].generation == 1
    second = env.claim("a2")
    assert second is not None and second[1].id == "low"
    assert env.claim("a3") is None  # one waits on a task not done, one backs off
    env.done("low", "a2", token=second[0].token)
    third = env.claim("a3")
    assert third is not None and third[1].id == "blocked"
    assert [e["event"] for e in env.events()].count("claim") == 3


# -- claims under concurrency --------------------------------------------------------------------------

CLAIM_ALL = """
got = []
while (c := env.claim(sys.argv[2])) is not None:
    got.append(c[1].id)
print(json.dumps(got))
"""


def test_16_processes_claim_every_task_exactly_once(backend: Backend) -> None:
    env = backend.make()
    n = 400
    env.add_many([Task(id=f"t{i:04d}", title=f"task {i}", priority=i % 7) for i in range(n)])
    code = "import json\n" + backend.open_code + CLAIM_ALL
    procs = [subprocess.Popen([sys.executable, "-c", code, backend.address(env), f"a{i:02d}"], stdout=subprocess.PIPE,
                              text=True) for i in range(16)]
    got = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    claimed = [tid for ids in got for tid in ids]
    assert sorted(claimed) == [f"t{i:04d}" for i in range(n)]  # every one, none twice
    assert sum(1 for ids in got if ids) > 1
    for tid in ("t0000", "t0399"):
        held = env.current_claim(tid)
        assert held is not None and held.generation == 1


def _break(backend: Backend, address: str, agent: str, rounds: int, barrier: Any, results: Any) -> None:
    env = backend.open(address)
    for r in range(rounds):
        barrier.wait()  # the round's stale claim is in place
        got = env.claim(agent)
        results.put((r, agent, got[1].id if got else None))
        barrier.wait()  # everyone has tried


def test_16_processes_break_a_stale_claim_exactly_one_wins_per_round(backend: Backend) -> None:
    env = backend.make(lease_ttl=3600)  # stale because its owner's pid is gone, not by age
    rounds, n = 25, 16
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    workers = [ctx.Process(target=_break, args=(backend, backend.address(env), f"w{i:02d}", rounds, barrier, results))
               for i in range(n)]
    for w in workers:
        w.start()
    try:
        for r in range(rounds):
            env.add(Task(id=f"r{r:03d}", title="abandoned"))
            ghost = env.claim("ghost", pid=dead_pid())
            assert ghost is not None and ghost[1].id == f"r{r:03d}"
            barrier.wait(timeout=60)
            barrier.wait(timeout=60)
        outcomes = [results.get(timeout=60) for _ in range(rounds * n)]
    finally:
        for w in workers:
            w.join(timeout=30)
            w.kill()
    for r in range(rounds):
        winners = [agent for rr, agent, tid in outcomes if rr == r and tid is not None]
        assert len(winners) == 1 and all(tid in (None, f"r{r:03d}") for rr, _, tid in outcomes if rr == r)
        held = env.current_claim(f"r{r:03d}")
        assert held is not None and held.agent == winners[0] and held.generation == 3  # ghost, the break, the winner
        assert env.get(f"r{r:03d}")[1].skip_count == 1
    reaps = [e["task"] for e in env.events() if e["event"] == "reap"]
    assert sorted(reaps) == [f"r{r:03d}" for r in range(rounds)]  # one reap per stale claim


# -- leases ---------------------------------------------------------------------------------------------

def test_a_heartbeat_keeps_a_claim_and_silence_loses_it(backend: Backend) -> None:
    env = backend.make(lease_ttl=1)
    env.add(Task(id="job", title="job"))
    env.heartbeat("owner")
    mine = env.claim("owner")
    assert mine is not None
    for _ in range(6):  # three leases long, beating
        time.sleep(0.5)
        env.heartbeat("owner")
        assert env.claim("thief") is None and env.holds(mine[0])
    assert env.reap("thief") == []
    time.sleep(1.5)  # silence: the lease runs out
    assert env.reap("thief") == ["job"] and not env.holds(mine[0])
    assert env.get("job")[0] == "pending" and env.get("job")[1].skip_count == 1
    assert "abandoned by owner" in env.notes("job")[-1]["text"]
    with pytest.raises(NotOwner):
        env.done("job", "owner", token=mine[0].token)  # the owner woke up too late


def test_an_exited_owner_frees_what_it_held_at_once(backend: Backend) -> None:
    env = backend.make(lease_ttl=3600)
    env.add(Task(id="job", title="job"))
    assert env.claim("owner") is not None
    time.sleep(0.01)
    env.heartbeat("owner", state="exited")
    got = env.claim("next")
    assert got is not None and got[1].id == "job" and got[0].generation == 3


def test_release_done_and_fail_end_a_claim_for_its_owner_only(backend: Backend) -> None:
    env = backend.make(retry_backoff=0)
    env.add_many([Task(id=t, title=t) for t in ("a", "b", "c")])
    claims = {c[1].id: c[0] for c in (env.claim("x"), env.claim("x"), env.claim("x")) if c}
    assert sorted(claims) == ["a", "b", "c"]
    with pytest.raises(NotOwner):
        env.release("a", "intruder")
    with pytest.raises(NotOwner):
        env.done("a", "x", token="not-the-token")
    assert env.release("a", "x", note="tried X; it does not work", token=claims["a"].token) == 1
    assert env.get("a")[0] == "pending" and not env.holds(claims["a"])
    assert env.notes("a")[-1]["text"] == "tried X; it does not work"
    env.done("b", "x", token=claims["b"].token, commit="abc")
    env.fail("c", "x", "impossible", token=claims["c"].token)
    assert [env.get(t)[0] for t in ("a", "b", "c")] == ["pending", "done", "failed"]
    assert env.current_claim("b") is None and env.current_claim("c") is None
    again = env.claim("y")
    assert again is not None and again[1].id == "a" and again[1].skip_count == 1 and again[0].generation == 2
    assert env.release("a", "y", skip=False) == 1  # not the task's fault: not counted
    kinds = [e["event"] for e in env.events()]
    assert kinds.count("release") == 2 and "done" in kinds and "fail" in kinds


# -- what agents leave for each other ----------------------------------------------------------------------

WRITE_EVENTS = """
for i in range(200):
    env.event("probe", "t", agent=sys.argv[2], i=i, pad="x" * 300)
    if i % 20 == 0:
        env.add_note("t", sys.argv[2], f"note {i}")
"""


def test_events_and_notes_from_many_processes_are_whole_and_in_order(backend: Backend) -> None:
    env = backend.make()
    env.add(Task(id="t", title="t"))
    code = backend.open_code + WRITE_EVENTS
    procs = [subprocess.Popen([sys.executable, "-c", code, backend.address(env), f"w{i}"]) for i in range(8)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    probes = [e for e in env.events() if e["event"] == "probe"]
    assert len(probes) == 1600
    for w in range(8):
        assert [e["i"] for e in probes if e["agent"] == f"w{w}"] == list(range(200))  # each writer's order kept
    notes = env.notes("t")
    assert len(notes) == 80 and all(n["text"].startswith("note ") for n in notes)


def test_stop_is_seen_by_every_agent(backend: Backend) -> None:
    env = backend.make()
    other = backend.open(backend.address(env))
    assert not env.stop_requested() and not other.stop_requested()
    env.request_stop()
    assert env.stop_requested() and other.stop_requested()
