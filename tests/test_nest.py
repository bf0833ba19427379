"""The nest beyond the contract suite: a real git server on loopback, the CLI, and the faults a
remote brings (a refusing hook, a record nobody can read, a URL that is no nest).

The contract itself (claims, races, leases, events) runs on the nest in tests/test_environment.py.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
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
    junk = remote.record({"task": {"id": "junk", "title": "x", "priority": "urgent!"}})
    assert remote.push([(NS + "tasks/pending/junk", "", junk)])
    assert [t.id for _, t in nest.listing("all")] == ["good"]
    assert NS + "quarantine/junk" in remote.refs() and NS + "tasks/pending/junk" not in remote.refs()
    said = [e for e in nest.events() if e["event"] == "quarantine"]
    assert [e["task"] for e in said] == ["junk"] and "priority" in said[0]["reason"]
    got = nest.claim("a1")
    assert got is not None and got[1].id == "good"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(cwd / "xdg-cache"))  # the nest's cache: not the user's
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


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
    assert list((tmp_path / "xdg-cache" / "stigmergy" / "nest").iterdir())  # where the cache went


def test_status_of_a_nest_shows_its_tasks_claims_and_agents(tmp_path: Path) -> None:
    nest = Nest.init(str(tmp_path / "n.git"), home=tmp_path / "cache")
    nest.add_many([Task(id=f"t{i}", title=f"task {i}") for i in range(3)])
    nest.heartbeat("box1-a1", state="working", task="t0")
    held = nest.claim("box1-a1")
    gone = subprocess.Popen(["true"])
    gone.wait()
    ghost = nest.claim("ghost", pid=gone.pid)  # its pid is gone on this host: stale at once
    assert held is not None and ghost is not None
    text = _cli("status", "--nest", "n.git", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "1 pending, 2 active, 0 done, 0 failed" in text.stdout
    assert "1 beating (1 working, 0 idle)" in text.stdout
    lines = {line.split()[0]: line for line in text.stdout.splitlines() if line.startswith("  ")}
    assert "stale" in lines[ghost[1].id] and "stale" not in lines[held[1].id]
    survey = json.loads(_cli("status", "--nest", "n.git", "--json", cwd=tmp_path).stdout)
    assert {(c["task"], c["agent"], c["stale"]) for c in survey["claims"]} == {
        (held[1].id, "box1-a1", False), (ghost[1].id, "ghost", True)}
    # --watch to a pipe: a timestamped line per look, which follows the nest as it changes.
    watch = subprocess.Popen([sys.executable, "-m", "harness", "status", "--nest", "n.git", "--watch", "0.2"],
                             cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg-cache")))
    assert watch.stdout is not None
    try:
        first = watch.stdout.readline()
        nest.done(held[1].id, "box1-a1", token=held[0].token)
        while "1 done" not in (line := watch.stdout.readline()) and line:
            pass
    finally:
        watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=30) == 0  # Ctrl-C is the way to end it
    assert first.split(" ", 2)[2].strip() == "1 pending, 2 active, 0 done, 0 failed | 1 working, 0 idle, 0 silent"
    assert "1 pending, 1 active, 1 done, 0 failed" in line


def test_a_url_that_is_no_nest_says_what_to_do_and_keeps_credentials_out(tmp_path: Path) -> None:
    Git(tmp_path).run("init", "--bare", "-q", "plain.git")
    plain = _cli("task", "list", "--nest", "plain.git", cwd=tmp_path)
    assert plain.returncode == 2 and "no nest yet" in plain.stderr and "nest init" in plain.stderr
    gone = _cli("task", "list", "--nest", "https://bob:hunter2-secret@127.0.0.1:9/x.git", cwd=tmp_path)
    assert gone.returncode == 2 and "could not be listed" in gone.stderr
    assert "hunter2-secret" not in gone.stderr + gone.stdout


# -- landing through the nest -----------------------------------------------------------------------

def commit_on(repo: Path, parent: str, name: str, text: str) -> str:
    """A commit adding file ``name`` on top of ``parent``, made in ``repo`` without touching any checkout."""
    env = dict(os.environ, GIT_INDEX_FILE=tempfile.mktemp(), GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@x",
               GIT_COMMITTER_NAME="a", GIT_COMMITTER_EMAIL="a@x")

    def run(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True,
                              input=stdin).stdout.strip()
    run("read-tree", parent)
    blob = run("hash-object", "-w", "--stdin", stdin=text)
    run("update-index", "--add", "--cacheinfo", f"100644,{blob},{name}")
    return run("commit-tree", run("write-tree"), "-p", parent, "-m", f"add {name}")


def _nest_with_code(tmp_path: Path, ttl: float = 3600, config: str = "",
                    files: dict[str, str] | None = None) -> tuple[Nest, str]:
    """A nest (``config`` after its lease_ttl) holding a target's main, its ``files`` committed and
    pushed as a user would; and main's tip."""
    nest = Nest.init(str(tmp_path / "nest.git"), f"lease_ttl: {ttl}\n{config}", home=tmp_path / "cache")
    target = tmp_path / "target"
    Git(tmp_path).run("init", "-q", "-b", "main", str(target))
    for name, text in (files or {}).items():
        (target / name).write_text(text)
        Git(target).run("add", name)
    Git(target).run("-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty", "-m", "base")
    Git(target).run("push", "-q", nest.url, "main")
    return nest, Git(target).run("rev-parse", "main").strip()


def _clone(nest: Nest, where: Path) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    Git(where.parent).run("clone", "-q", nest.url, str(where))
    return where


def _hook(nest: Nest, text: str) -> None:
    """The nest's post-receive hook: it runs once a push's refs are updated, with them on stdin."""
    hook = Path(nest.url) / "hooks" / "post-receive"
    hook.write_text(text)
    hook.chmod(0o755)


def test_landing_moves_the_branch_and_ends_the_claim_in_one_push(tmp_path: Path) -> None:
    nest, base = _nest_with_code(tmp_path)
    nest.add(Task(id="t1", title="one"))
    host = _clone(nest, tmp_path / "host")
    claim, _ = nest.claim("a1") or pytest.fail("nothing claimed")
    work = commit_on(host, base, "one.txt", "one\n")
    pushes = tmp_path / "pushes"
    _hook(nest, f"#!/bin/sh\nawk '{{printf \"%s \", $3}} END {{print \"\"}}' >> {pushes}\n")
    assert nest.land(claim, host, work, "main", base, attempt="1")
    # The done event rides in the landing's own push: an outage cannot leave one without the other.
    [landing] = pushes.read_text().splitlines()
    assert set(landing.split()) == {"refs/heads/main", f"{NS}tasks/active/t1", f"{NS}tasks/done/t1",
                                    f"{NS}log/{nest._writer}"}
    assert nest.remote.tip("main") == work
    assert nest.get("t1")[0] == "done" and nest.current_claim("t1") is None
    done = [e for e in nest.events() if e["event"] == "done"]
    assert [(e["task"], e["commit"], e["attempt"]) for e in done] == [("t1", work, "1")]


def test_a_stale_owner_can_never_land(tmp_path: Path) -> None:
    nest, base = _nest_with_code(tmp_path)
    nest.add(Task(id="t1", title="one"))
    host = _clone(nest, tmp_path / "host")
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale, _ = nest.claim("sleeper", pid=gone.pid) or pytest.fail("nothing claimed")
    taker, _ = nest.claim("a2") or pytest.fail("the stale claim was not broken")
    assert taker.generation == stale.generation + 2
    late = commit_on(host, base, "late.txt", "late\n")
    with pytest.raises(NotOwner, match="sleeper's claim"):
        nest.land(stale, host, late, "main", base)
    assert nest.remote.tip("main") == base  # nothing of the stale owner's reached the branch
    mine = commit_on(host, base, "mine.txt", "mine\n")
    assert nest.land(taker, host, mine, "main", base) and nest.remote.tip("main") == mine


def test_a_branch_that_moved_is_a_lost_race_and_the_owner_keeps_its_claim(tmp_path: Path) -> None:
    nest, base = _nest_with_code(tmp_path)
    nest.add_many([Task(id="t1", title="one"), Task(id="t2", title="two")])
    host = _clone(nest, tmp_path / "host")
    first, _ = nest.claim("a1") or pytest.fail("nothing claimed")
    second, _ = nest.claim("a2") or pytest.fail("nothing claimed")
    ahead = commit_on(host, base, "a.txt", "a\n")
    assert nest.land(first, host, ahead, "main", base)
    behind = commit_on(host, base, "b.txt", "b\n")
    assert not nest.land(second, host, behind, "main", base)  # built on the old tip: refused, nothing changed
    assert nest.holds(second) and nest.remote.tip("main") == ahead
    tip = Remote(nest.url, Git(host).common_dir()).tip("main")
    assert tip == ahead
    again = commit_on(host, tip, "b.txt", "b\n")
    assert nest.land(second, host, again, "main", tip)
    assert Git(host).run("fetch", "-q", nest.url, "main") == "" and Git(host).run(
        "rev-list", "--first-parent", "FETCH_HEAD").split() == [again, ahead, base]


LAND_ALL = "import os, subprocess, sys, tempfile\nfrom pathlib import Path\n" + inspect.getsource(commit_on) + """
import json
from pathlib import Path
from harness.git import Git
from harness.nest import Nest, Remote
import time
from harness.errors import NotOwner
url, clone, agent = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
nest = Nest(url, clone.parent / "cache")
if len(sys.argv) > 4:  # another machine: its pid means nothing to the others, only its heartbeat does
    nest.host = sys.argv[4]
work = Remote(url, Git(clone).common_dir())
landed, lost = [], 0
while (got := nest.claim(agent, pid=os.getpid())) is not None:
    claim, task = got
    nest.heartbeat(agent, pid=os.getpid(), task=task.id, doing="work")
    time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 0)  # the work
    try:
        while True:  # a lost race: build on the new tip and land again
            nest.heartbeat(agent, pid=os.getpid(), task=task.id, doing="land")
            tip = work.tip("main")
            if nest.land(claim, clone, commit_on(clone, tip, f"out-{task.id}.txt", task.id + "\\n"), "main", tip):
                landed.append(task.id)
                break
            lost += 1
    except NotOwner:  # reaped while it worked: whoever holds it now lands it
        pass
print(json.dumps({"landed": landed, "lost": lost}))
"""


def _first_parent_files(check: Path, url: str) -> list[list[str]]:
    """The files each first-parent commit of the nest's main added, oldest first (the base's: none)."""
    Git(check).run("fetch", "-q", url, "main")
    line = Git(check).run("rev-list", "--first-parent", "--reverse", "FETCH_HEAD").split()
    return [Git(check).run("diff-tree", "--no-commit-id", "--name-only", "-r", c).split() for c in line[1:]]


def test_a_host_killed_mid_run_loses_no_task_its_claims_are_reaped_and_land_once(
        daemon: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = daemon
    nest, _ = _nest_with_code(tmp_path, ttl=3)
    Git(tmp_path).run("clone", "-q", "--mirror", nest.url, str(served / "colony.git"))
    url, n = f"{base_url}/colony.git", 40
    setup = Nest(url, tmp_path / "setup")
    setup.add_many([Task(id=f"t{i:02d}", title=f"task {i}") for i in range(n)])
    clones = [_clone(setup, tmp_path / f"box{h}" / "clone") for h in range(3)]
    procs = {(h, i): subprocess.Popen([sys.executable, "-c", LAND_ALL, url, str(clones[h]), f"box{h}-a{i}", f"box{h}",
                                       "1.0"], stdout=subprocess.PIPE, text=True, start_new_session=True)
             for h in range(3) for i in range(2)}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # box2 dies holding claims, at work on them, after some work landed
        survey = setup.survey()
        held = {c["task"] for c in survey["claims"] if c["host"] == "box2"}
        working = [a for a in survey["agents"] if a["host"] == "box2" and a["task"] in held]
        if survey["tasks"]["done"] >= 6 and len(held) == 2 and all(a.get("doing") == "work" for a in working):
            break
        time.sleep(0.05)
    for i in range(2):
        os.killpg(procs[(2, i)].pid, signal.SIGKILL)  # the machine goes, its git processes with it
    said = [json.loads(p.communicate(timeout=300)[0]) for (h, _), p in procs.items() if h != 2]
    for i in range(2):
        procs[(2, i)].wait()
    added = _first_parent_files(clones[0], url)
    assert sorted(f for names in added for f in names) == sorted(f"out-t{i:02d}.txt" for i in range(n))
    assert all(len(names) == 1 for names in added)  # every task on main exactly once, none lost
    assert {status for status, _ in setup.listing("all")} == {"done"}
    by_survivors = {t for s in said for t in s["landed"]}
    reaps = [e for e in setup.events() if e["event"] == "reap"]
    reaped = {e["task"] for e in reaps}
    assert reaped and reaped <= held and len(reaps) == len(reaped)  # each broken once, by one survivor
    assert {e["abandoned_by"] for e in reaps} <= {"box2-a0", "box2-a1"}
    # What box2 held was reaped and landed by the others (unless its own landing was already through).
    assert all((t in by_survivors) == (t in reaped) for t in held)


def test_processes_on_three_hosts_land_every_task_once_through_a_git_server(
        daemon: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = daemon
    nest, base = _nest_with_code(tmp_path)
    Git(tmp_path).run("clone", "-q", "--mirror", nest.url, str(served / "colony.git"))  # --bare: no refs/stigmergy/
    url = f"{base_url}/colony.git"
    n = 30
    Nest(url, tmp_path / "setup").add_many([Task(id=f"t{i:02d}", title=f"task {i}") for i in range(n)])
    clones = [_clone(Nest(url, tmp_path / "setup"), tmp_path / f"host{h}" / "clone") for h in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", LAND_ALL, url, str(clones[h]), f"h{h}a{i}"],
                              stdout=subprocess.PIPE, text=True) for h in range(3) for i in range(2)]
    said = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    landed = sorted(t for s in said for t in s["landed"])
    assert landed == [f"t{i:02d}" for i in range(n)]
    check = clones[0]
    Git(check).run("fetch", "-q", url, "main")
    line = Git(check).run("rev-list", "--first-parent", "--reverse", "FETCH_HEAD").split()
    assert line[0] == base and len(line) == n + 1  # one first-parent commit per task, none lost, none twice
    added = [Git(check).run("diff-tree", "--no-commit-id", "--name-only", "-r", c).split() for c in line[1:]]
    assert sorted(a for names in added for a in names) == sorted(f"out-t{i:02d}.txt" for i in range(n))
    assert all(len(names) == 1 for names in added)
    assert {status for status, _ in Nest(url, tmp_path / "setup").listing("all")} == {"done"}


# -- agents on three hosts --------------------------------------------------------------------------

WRITE_OWN_FILE = """
- match: "^t"
  actions:
  - bash: 'echo "$STIGMERGY_TASK by $STIGMERGY_AGENT" > "out-$STIGMERGY_TASK.txt"'
  - finish: ok
"""


# A push that updates a ref under {refs} (tasks/active/: a claim; refs/heads/: a landing) goes
# through, and then its pusher is killed before it hears so, as an outage mid-push would leave it;
# once, while the flag file is there.
CUT_THE_ANSWER = """#!/bin/sh
grep -q " {refs}" || exit 0
rm "{flag}" 2>/dev/null || exit 0
p=$PPID
while [ "$p" -gt 1 ]; do
  case "$(tr '\\0' ' ' < /proc/$p/cmdline)" in git*" push "*) kill -9 "$p"; exit 0;; esac
  p=$(awk '{{print $4}}' /proc/$p/stat)
done
"""


def _one_agent_until_empty(nest: Nest, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Agent box0-a, in a clone of its own, working the nest's tasks (WRITE_OWN_FILE) until none is left."""
    script = tmp_path / "script.yaml"
    script.write_text(WRITE_OWN_FILE)
    clone = _clone(nest, tmp_path / "box0" / "clone")
    return clone, subprocess.run(
        [sys.executable, "-m", "harness", "agent", "run", "--nest", nest.url, "--repo", str(clone), "--id", "box0-a",
         "--model", f"scripted:{script}", "--until-empty", "--sandbox", "none"],
        env=_host_env("box0", tmp_path / "box0"), capture_output=True, text=True, timeout=120)


def test_a_claim_whose_answer_was_lost_is_put_back_uncounted_and_the_log_goes_on(tmp_path: Path) -> None:
    nest, _ = _nest_with_code(tmp_path)
    nest.add(Task(id="t1", title="one"))
    flag = tmp_path / "cut"
    flag.touch()
    _hook(nest, CUT_THE_ANSWER.format(flag=flag, refs=f"{NS}tasks/active/"))
    with pytest.raises(NestUnreachable):
        nest.claim("a1")
    assert not flag.exists()
    claim = nest.current_claim("t1")
    assert claim is not None and claim.agent == "a1"  # it went through: a1 holds it and does not know
    assert nest.disown("a1") == ["t1"]
    status, task = nest.get("t1")
    assert status == "pending" and task.skip_count == 0 and task.not_before is None
    # This process's log chain went on from the push it heard fail: both events are on it.
    assert [(e["event"], e["task"]) for e in nest.events()][-2:] == [("claim", "t1"), ("release", "t1")]
    assert nest.disown("a1") == []


def test_an_agent_whose_claim_went_through_unheard_puts_it_back_and_lands_everything(tmp_path: Path) -> None:
    """Its own beats would keep a claim it does not know it holds alive all night: it must not wait on it."""
    nest, _ = _nest_with_code(tmp_path)
    nest.add_many([Task(id=f"t{i}", title=f"task {i}") for i in range(3)])
    flag = tmp_path / "cut"
    flag.touch()
    _hook(nest, CUT_THE_ANSWER.format(flag=flag, refs=f"{NS}tasks/active/"))
    clone, done = _one_agent_until_empty(nest, tmp_path)
    assert done.returncode == 0, done.stderr
    assert not flag.exists()
    assert "its claim went through while the nest was out of reach" in done.stderr, done.stderr
    assert {st for st, _ in nest.listing("all")} == {"done"}
    assert all(task.skip_count == 0 for _, task in nest.listing("all"))  # not the tasks' fault
    added = _first_parent_files(clone, nest.url)
    assert sorted(f for names in added for f in names) == [f"out-t{i}.txt" for i in range(3)]


def test_a_landing_whose_answer_was_lost_is_known_for_landed(tmp_path: Path) -> None:
    """The retry of a landing that went through unheard finds the task done by its own claim: it
    says it landed, as what, and the done event names that commit."""
    nest, _ = _nest_with_code(tmp_path)
    nest.add(Task(id="t1", title="one"))
    flag = tmp_path / "cut"
    flag.touch()
    _hook(nest, CUT_THE_ANSWER.format(flag=flag, refs="refs/heads/"))
    clone, done = _one_agent_until_empty(nest, tmp_path)
    assert done.returncode == 0, done.stderr
    assert not flag.exists() and "landing t1 again: the nest was out of reach" in done.stderr, done.stderr
    tip = nest.remote.tip("main") or ""
    assert f"landed t1 as {tip[:10]} on the nest" in done.stderr and "does not land" not in done.stderr, done.stderr
    assert [e["commit"] for e in nest.events() if e["event"] == "done"] == [tip]
    assert [f for names in _first_parent_files(clone, nest.url) for f in names] == ["out-t1.txt"]


def test_a_nest_gone_right_after_a_claim_counts_against_no_task(tmp_path: Path) -> None:
    """The nest goes the moment a claim is through (the attempt's first look at the notes finds
    it gone) and is back 4 s later: the task goes back uncounted, with no back-off, and lands."""
    nest, _ = _nest_with_code(tmp_path)
    nest.add(Task(id="t1", title="one"))
    flag, away = tmp_path / "cut", tmp_path / "away.git"
    flag.touch()
    _hook(nest, f"""#!/bin/sh
grep -q " refs/stigmergy/tasks/active/" || exit 0
rm "{flag}" 2>/dev/null || exit 0
mv "{nest.url}" "{away}"
(sleep 4; mv "{away}" "{nest.url}") >/dev/null 2>&1 &
""")
    clone, done = _one_agent_until_empty(nest, tmp_path)
    assert done.returncode == 0, done.stderr
    assert not flag.exists() and not away.exists()
    assert "released t1: not counted against the task: the nest" in done.stderr, done.stderr
    status, task = nest.get("t1")
    assert status == "done" and task.skip_count == 0 and task.not_before is None
    assert [f for names in _first_parent_files(clone, nest.url) for f in names] == ["out-t1.txt"]


def _host_env(host: str, where: Path) -> dict[str, str]:
    """The environment of a test "machine": none of ours, a host name of its own, and its nest
    cache under ``where`` (not the user's)."""
    return ({k: v for k, v in os.environ.items() if not k.startswith("STIGMERGY_")}
            | {"STIGMERGY_HOST": host, "XDG_CACHE_HOME": str(where / "xdg-cache")})


def _processes_of(host: str) -> list[int]:
    """Every process started for test host ``host`` (its launcher, agents and their children)."""
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"STIGMERGY_HOST={host}".encode() in env.read_bytes().split(b"\0"):
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


def test_agents_on_three_hosts_land_200_tasks_once_and_a_killed_host_loses_none(
        daemon: tuple[str, Path], tmp_path: Path) -> None:
    """The issue's test: `stigmergy run --nest` on three host clones of a nest served by git daemon;
    host box2 is SIGKILLed whole mid-run (launcher, agents, their git children). Its claims are
    reaped by the other hosts' agents and land once; every task is on main exactly once."""
    base_url, served = daemon
    nest, _ = _nest_with_code(tmp_path, 4, "heartbeat_interval: 1\nmax_attempts: 50\nverify: test -f README\n",
                              {"README": "target\n"})
    Git(tmp_path).run("clone", "-q", "--mirror", nest.url, str(served / "colony.git"))
    url, n = f"{base_url}/colony.git", 200
    setup = Nest(url, tmp_path / "setup")
    setup.add_many([Task(id=f"t{i:03d}", title=f"task {i}") for i in range(n)])
    script = tmp_path / "script.yaml"
    script.write_text(WRITE_OWN_FILE)
    launchers = {}
    for h in range(3):
        clone = _clone(setup, tmp_path / f"box{h}" / "clone")
        env = _host_env(f"box{h}", tmp_path / f"box{h}")
        launchers[h] = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--nest", url, "--repo", str(clone), "--agents", "2",
             "--model", f"scripted:{script}", "--until-empty", "--sandbox", "none"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # box2 dies while its agents hold claims, after some work landed
        assert launchers[2].poll() is None, launchers[2].communicate()[1][-3000:]
        survey = setup.survey()
        held = {c["task"] for c in survey["claims"] if c["host"] == "box2"}
        if survey["tasks"]["done"] >= 30 and held:
            break
        time.sleep(0.1)
    for pid in _processes_of("box2"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launchers[2].wait(timeout=30)
    time.sleep(0.5)  # a push the server had begun to take when its client died is through now
    # What box2 held when it died (the others reap only after the 4 s lease: its beats were fresh).
    held = {c["task"] for c in setup.survey()["claims"] if c["host"] == "box2"}
    assert held
    for h in (0, 1):
        _, err = launchers[h].communicate(timeout=400)
        assert launchers[h].returncode == 0, err[-3000:]
    added = _first_parent_files(tmp_path / "box0" / "clone", url)
    assert sorted(f for names in added for f in names) == sorted(f"out-t{i:03d}.txt" for i in range(n))
    assert all(len(names) == 1 for names in added)  # every task on main exactly once, none lost
    assert {status for status, _ in setup.listing("all")} == {"done"}
    reaps = [e for e in setup.events() if e["event"] == "reap"]
    assert sorted(e["task"] for e in reaps) == sorted(held)  # each claim it held broken once, nothing else
    assert all(e["abandoned_by"].startswith("box2-") and not e["agent"].startswith("box2-") for e in reaps)
    landers = {e["agent"].split("-")[0] for e in setup.events() if e["event"] == "done"}
    assert landers == {"box0", "box1", "box2"}


APPEND_SHARED = """
- match: "^t"
  actions:
  - bash: 'echo "line of $STIGMERGY_TASK" >> shared.txt'
  - sleep: 2.0
  - finish: ok
"""


def test_a_conflict_on_a_nest_keeps_the_attempt_there_and_the_task_is_redone_uncounted(tmp_path: Path) -> None:
    """Two hosts' agents append to one file from the same tip: the second lander's merge conflicts.
    Its attempt is kept on the nest, the task goes back uncounted and is redone on the new main."""
    nest, _ = _nest_with_code(tmp_path, config="max_attempts: 1\n", files={"shared.txt": "top\n"})
    nest.add_many([Task(id=f"t{i}", title=f"task {i}") for i in range(4)])
    script = tmp_path / "script.yaml"
    script.write_text(APPEND_SHARED)
    procs = []
    for h in range(2):
        clone = _clone(nest, tmp_path / f"box{h}" / "clone")
        env = _host_env(f"box{h}", tmp_path / f"box{h}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "harness", "agent", "run", "--nest", nest.url, "--repo", str(clone),
             "--id", f"box{h}-a", "--model", f"scripted:{script}", "--until-empty", "--sandbox", "none",
             "--workspaces", str(tmp_path / f"box{h}" / "ws")], env=env, stderr=subprocess.PIPE, text=True))
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    check = tmp_path / "box0" / "clone"
    Git(check).run("fetch", "-q", nest.url, "main")
    lines = Git(check).run("show", "FETCH_HEAD:shared.txt").splitlines()
    assert sorted(lines) == sorted(["top", *(f"line of t{i}" for i in range(4))])  # each once: both sides kept
    assert {status for status, _ in nest.listing("all")} == {"done"}  # max_attempts 1: a counted retry would fail it
    kept = nest.remote.refs(NS + "conflicts/*")
    assert kept, logs  # the first round's loser conflicted: its attempt is on the nest
    releases = [e for e in nest.events() if e["event"] == "release"]
    assert releases and all(e["skip_count"] == 0 for e in releases)
    assert any("conflicted with the nest's 'main' on shared.txt" in n["text"] for tid in {e["task"] for e in releases}
               for n in nest.notes(tid))
    # Every model call of both hosts reached the nest with the agents' beats, once: the report's spend.
    local = [json.loads(line) for h in range(2)
             for line in (tmp_path / f"box{h}" / "clone" / ".stigmergy" / "ledger" / f"box{h}-a.jsonl").read_text().splitlines()]
    published = nest.ledger()
    assert len(published) == len(local) > 0
    assert sorted((c["agent"], c["ts"]) for c in published) == sorted((c["agent"], c["ts"]) for c in local)
    assert {c["host"] for c in published} == {"box0", "box1"}
    report = subprocess.run([sys.executable, "-m", "harness", "report", "--nest", nest.url, "--repo",
                             str(tmp_path / "box0" / "clone"), "--json"], capture_output=True, text=True,
                            env=_host_env("box0", tmp_path / "box0"))
    built = json.loads(report.stdout)
    assert report.returncode == 0 and built["outcomes"] == {"landed": 4}
    assert sum(built["tokens"].values()) == sum(c["input_tokens"] + c["output_tokens"] for c in local)
    assert set(built["cost_by_agent"]) == {"box0-a", "box1-a"} and built["roles"] == {"box0-a": "coder", "box1-a": "coder"}
    assert built["secrets_scan"]["commits"] == 4  # the nest's landed commits, fetched for the scan


def test_the_colony_budget_counts_what_agents_on_other_hosts_spent(tmp_path: Path) -> None:
    """Another host's agent published 9,000 tokens of calls with its beats; the budget is 5,000:
    an agent here claims nothing, though its own host has spent nothing."""
    nest, _ = _nest_with_code(tmp_path, config="budget_tokens: 5000\n")
    nest.add(Task(id="t1", title="one"))
    elsewhere = Nest(nest.url, tmp_path / "cache-far")
    elsewhere.host = "far"
    call = {"agent": "far-coder-01", "task": "x", "model": "m", "input_tokens": 4000, "output_tokens": 500,
            "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": 0.0, "ts": time.time()}
    elsewhere.heartbeat("far-coder-01", ledger=[call])
    elsewhere.heartbeat("far-coder-01", ledger=[call | {"ts": time.time()}])
    assert elsewhere.published("far-coder-01") == 2 and Nest(nest.url, tmp_path / "c3").published("far-coder-01") == 2
    script = tmp_path / "script.yaml"
    script.write_text(WRITE_OWN_FILE)
    clone = _clone(nest, tmp_path / "box0" / "clone")
    env = _host_env("box0", tmp_path / "box0")
    done = subprocess.run([sys.executable, "-m", "harness", "agent", "run", "--nest", nest.url, "--repo", str(clone),
                           "--id", "box0-a", "--model", f"scripted:{script}", "--until-empty", "--sandbox", "none"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "colony token budget of 5000 reached (9000 tokens used): claiming nothing more" in done.stderr
    assert nest.get("t1")[0] == "pending"  # nothing was claimed past the colony's budget


def test_a_nest_out_of_reach_for_a_while_is_waited_out_and_nothing_is_lost(tmp_path: Path) -> None:
    """The nest vanishes for a few seconds mid-run (a network outage, a server restart): the agent
    claims nothing meanwhile, keeps its claim and its process, and lands every task once after."""
    nest, _ = _nest_with_code(tmp_path)
    nest.add_many([Task(id=f"t{i}", title=f"task {i}") for i in range(8)])
    script = tmp_path / "script.yaml"
    script.write_text(WRITE_OWN_FILE.replace("  - finish: ok", "  - sleep: 0.5\n  - finish: ok"))
    clone = _clone(nest, tmp_path / "box0" / "clone")
    agent = subprocess.Popen([sys.executable, "-m", "harness", "agent", "run", "--nest", nest.url, "--repo", str(clone),
                              "--id", "box0-a", "--model", f"scripted:{script}", "--until-empty", "--sandbox", "none"],
                             env=_host_env("box0", tmp_path / "box0"), stderr=subprocess.PIPE, text=True)
    served, away = Path(nest.url), tmp_path / "away.git"
    while len(nest.ids("done")) < 2:
        time.sleep(0.05)
    served.rename(away)  # gone: every listing, fetch and push fails (not a connection to retry)
    time.sleep(4)
    away.rename(served)
    _, log = agent.communicate(timeout=120)
    assert agent.returncode == 0, log
    assert "could not be listed" in log or "could not be fetched" in log or "refused" in log, log
    assert {st for st, _ in nest.listing("all")} == {"done"}
    added = _first_parent_files(clone, nest.url)
    assert sorted(f for names in added for f in names) == sorted(f"out-t{i}.txt" for i in range(8))
