"""The nest beyond the contract suite: a real git server on loopback, the CLI, and the faults a
remote brings (a refusing hook, a record nobody can read, a URL that is no nest).

The contract itself (claims, races, leases, events) runs on the nest in tests/test_environment.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import NestUnreachable, NotOwner
from harness.git import Git
from harness.nest import NS, Nest, Remote
from harness.tasks import Task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`git daemon` serving tmp_path/served (pushes allowed) on loopback: (its base URL, the folder)."""
    served = tmp_path / "served"
    served.mkdir()
    port = _free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
                             f"--base-path={served}", "--listen=127.0.0.1", f"--port={port}", str(served)],
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"git://127.0.0.1:{port}", served
    finally:
        proc.terminate()
        proc.wait(timeout=10)


CLAIM_ALL = """
import json, sys
from pathlib import Path
from harness.nest import Nest
env = Nest(sys.argv[1], Path(sys.argv[2]))
got = []
while (c := env.claim(sys.argv[3])) is not None:
    env.done(c[1].id, sys.argv[3], token=c[0].token)
    got.append(c[1].id)
print(json.dumps(got))
"""


def test_agents_on_two_machines_share_a_nest_served_by_git_daemon(daemon: tuple[str, Path], tmp_path: Path) -> None:
    base, served = daemon
    Nest.init(str(served / "colony.git"), home=tmp_path / "setup")  # made on the server's disk, served from there
    url = f"{base}/colony.git"
    nest = Nest(url, tmp_path / "host-a")
    nest.add_many([Task(id=f"t{i:03d}", title=f"task {i}") for i in range(60)])
    # Two "machines": each its own cache, four processes each, all through git://.
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_ALL, url, str(tmp_path / f"host-{h}"), f"{h}{i}"],
                              stdout=subprocess.PIPE, text=True) for h in "ab" for i in range(4)]
    got = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    landed = sorted(t for ids in got for t in ids)
    assert landed == [f"t{i:03d}" for i in range(60)]  # every task done once, by someone
    assert {status for status, _ in nest.listing("all")} == {"done"}
    assert sum(1 for ids in got if ids) > 2
    dones = [e for e in nest.events() if e["event"] == "done"]
    assert sorted(e["task"] for e in dones) == landed


def test_a_stale_claim_on_another_host_is_judged_by_its_heartbeat(daemon: tuple[str, Path], tmp_path: Path) -> None:
    base, served = daemon
    Nest.init(str(served / "c.git"), "lease_ttl: 1\n", home=tmp_path / "setup")
    here = Nest(f"{base}/c.git", tmp_path / "here")
    there = Nest(f"{base}/c.git", tmp_path / "there")
    there.host = "elsewhere"  # its pid means nothing here: only its silence can free its claim
    here.add(Task(id="job", title="job"))
    there.heartbeat("remote-agent", pid=999_999_999)
    held = there.claim("remote-agent", pid=999_999_999)
    assert held is not None
    assert here.claim("local") is None and here.reap("local") == []  # a dead-looking pid on another host: alive
    time.sleep(1.3)
    assert here.reap("local") == ["job"]
    assert here.get("job")[0] == "pending" and not there.holds(held[0])
    with pytest.raises(NotOwner, match="not claimed"):
        there.done("job", "remote-agent", token=held[0].token)


def test_a_refusing_server_is_an_error_not_a_lost_race(tmp_path: Path) -> None:
    nest = Nest.init(str(tmp_path / "n.git"), home=tmp_path / "cache")
    nest.add(Task(id="job", title="job"))
    hook = tmp_path / "n.git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refs/stigmergy/ is protected here' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(NestUnreachable, match="refused a push.*pre-receive hook declined"):
        nest.claim("a1")  # not "nothing to claim": the server said no, and the user must hear why


def test_a_record_nobody_can_read_is_quarantined_not_fatal(tmp_path: Path) -> None:
    nest = Nest.init(str(tmp_path / "n.git"), home=tmp_path / "cache")
    nest.add(Task(id="good", title="good"))
    remote = Remote(nest.url, tmp_path / "cache" / "objects.git")
    junk = remote.record({"status": "pending", "task": {"id": "junk", "title": "x", "priority": "urgent!"}})
    assert remote.push([(NS + "tasks/junk", "", junk)])
    assert [t.id for _, t in nest.listing("all")] == ["good"]
    assert NS + "quarantine/junk" in remote.refs() and NS + "tasks/junk" not in remote.refs()
    said = [e for e in nest.events() if e["event"] == "quarantine"]
    assert [e["task"] for e in said] == ["junk"] and "priority" in said[0]["reason"]
    got = nest.claim("a1")
    assert got is not None and got[1].id == "good"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_cli_speaks_to_a_nest(tmp_path: Path) -> None:
    made = _cli("nest", "init", "n.git", "--branch", "trunk", cwd=tmp_path)
    assert made.returncode == 0 and "trunk" in made.stdout
    assert Git(tmp_path).run("--git-dir", "n.git", "rev-parse", "--is-bare-repository").strip() == "true"
    assert _cli("nest", "init", "n.git", cwd=tmp_path).returncode == 0  # again: kept as it was
    assert _cli("task", "add", "First", "--id", "first", "--nest", "n.git", cwd=tmp_path).returncode == 0
    assert _cli("task", "add", "Then", "--id", "then", "--depends-on", "first", "--nest", "n.git",
                cwd=tmp_path).returncode == 0
    typo = _cli("task", "add", "Lost", "--depends-on", "frist", "--nest", "n.git", cwd=tmp_path)
    assert typo.returncode == 2 and "'frist'" in typo.stderr
    listed = json.loads(_cli("task", "list", "--status", "all", "--json", "--nest", "n.git", cwd=tmp_path).stdout)
    assert [(r["id"], r["ready"]) for r in listed] == [("first", True), ("then", False)]
    claimed = _cli("task", "claim", "--agent", "a1", "--nest", "n.git", cwd=tmp_path)
    assert claimed.stdout.strip() == "first"
    assert _cli("task", "done", "first", "--agent", "intruder", "--nest", "n.git", cwd=tmp_path).returncode == 2
    assert _cli("task", "done", "first", "--agent", "a1", "--nest", "n.git", cwd=tmp_path).returncode == 0
    assert _cli("task", "claim", "--agent", "a1", "--nest", "n.git", cwd=tmp_path).stdout.strip() == "then"
    assert _cli("task", "claim", "--agent", "a1", "--nest", "n.git", cwd=tmp_path).returncode == 3  # none ready
    assert Nest(str(tmp_path / "n.git"), tmp_path / "cache").config.branch == "trunk"


def test_a_url_that_is_no_nest_says_what_to_do_and_keeps_credentials_out(tmp_path: Path) -> None:
    Git(tmp_path).run("init", "--bare", "-q", "plain.git")
    plain = _cli("task", "list", "--nest", "plain.git", cwd=tmp_path)
    assert plain.returncode == 2 and "no nest yet" in plain.stderr and "nest init" in plain.stderr
    gone = _cli("task", "list", "--nest", "https://bob:hunter2-secret@127.0.0.1:9/x.git", cwd=tmp_path)
    assert gone.returncode == 2 and "could not be listed" in gone.stderr
    assert "hunter2-secret" not in gone.stderr + gone.stdout
