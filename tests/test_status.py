"""`status`, `status --watch` and the launcher's progress, on real colonies: real agent processes
(the scripted model), real signals, real git worktrees, real terminals (a pty)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from conftest import cli, set_config, wait_for
from harness import status
from harness.colony import Colony
from harness.gate import Gate
from harness.git import Git
from harness.models.retry import CoolDown
from harness.tasks import Task
from harness.timeline import Timeline

STAMP = r"\d\d:\d\d:\d\d"


def slow_script(path: Path, seconds: int = 60) -> str:
    """Every task: a model call a second for `seconds` (the agent stays on it), then a file, then finish."""
    steps = [s for _ in range(seconds) for s in ({"sleep": 1}, {"bash": "true"})]
    path.write_text(yaml.safe_dump([{"match": ".", "actions": [
        *steps, {"bash": "echo x > $STIGMERGY_TASK.txt"}, {"finish": "done"}]}], sort_keys=False))
    return f"scripted:{path}"


def quick_script(path: Path, sleep: float = 0) -> str:
    path.write_text(yaml.safe_dump([{"match": ".", "actions": [
        *([{"sleep": sleep}] if sleep else []), {"bash": "echo x > $STIGMERGY_TASK.txt"}, {"finish": "done"}]}],
        sort_keys=False))
    return f"scripted:{path}"


def default_sigint() -> None:
    """A child whose SIGINT is not ignored (a job started in the background inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_agent(colony: Colony, agent: str, model: str, tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{agent}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "harness", "agent", "run", "--id", agent, "--model", model,
                             "--repo", str(colony.repo), "--workspaces", str(tmp / "ws")],
                            stdout=log, stderr=log, start_new_session=True)


def snap(colony: Colony) -> dict:
    return json.loads(cli("status", "--json", "--repo", str(colony.repo), check=True).stdout)


def by_agent(s: dict) -> dict[str, dict]:
    return {a["agent"]: a for a in s["agents"]}


def land(colony: Colony, task_id: str, agent: str = "a1", commit: str = "c0ffee" * 6) -> None:
    got = colony.claim(agent)
    assert got is not None and got[1].id == task_id
    colony.done(task_id, agent, got[0].token, commit=commit)


class Pty:
    """A real terminal (80x24) for a child process: what it writes, as bytes."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=default_sigint)
        os.close(slave)
        self.master, self.out = master, b""

    def read_until(self, predicate, timeout: float) -> bytes:  # type: ignore[no-untyped-def]
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up and not predicate(self.out):
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal (EIO)
                    break
            elif self.proc.poll() is not None:
                break
        return self.out

    def close(self) -> int:
        """Its exit status, once it has gone by itself (killed after 30 s)."""
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=30)
        os.close(self.master)
        return code


# -- agents: working, idle, dead, exited --------------------------------------------------------------


def test_status_tells_working_idle_dead_and_exited_agents_apart_at_once(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, heartbeat_interval=0.3)  # lease_ttl stays 120 s: dead must not wait for it
    model = slow_script(tmp_path / "script.yaml")
    colony.add(Task(id="t-work", title="Worked on", priority=90))
    colony.add(Task(id="t-victim", title="Its agent is killed", priority=80))
    procs = {}
    try:
        procs["worker"] = start_agent(colony, "worker", model, tmp_path)
        wait_for(lambda: colony.get("t-work")[0] == "active", 60, "the worker's claim")
        procs["victim"] = start_agent(colony, "victim", model, tmp_path)
        wait_for(lambda: colony.get("t-victim")[0] == "active", 60, "the victim's claim")
        procs["idler"] = start_agent(colony, "idler", model, tmp_path)  # nothing is left for it
        procs["leaver"] = start_agent(colony, "leaver", model, tmp_path)
        wait_for(lambda: all((colony.last_beat(a) or {}).get("task") for a in ("worker", "victim")) and all(
            colony.last_beat(a) for a in ("idler", "leaver")), 60, "every agent's heartbeat")
        procs["leaver"].send_signal(signal.SIGTERM)  # a clean exit: its goodbye heartbeat says so
        assert procs["leaver"].wait(timeout=30) == 0

        before = by_agent(snap(colony))
        assert before["victim"]["state"] == "working" and before["victim"]["alive"]

        procs["victim"].send_signal(signal.SIGKILL)  # and not waited for: a zombie is dead too
        killed = time.monotonic()
        s = snap(colony)
        seen = time.monotonic() - killed
        agents = by_agent(s)
        assert seen < 10 < colony.config.lease_ttl  # at once, not after the lease
        assert agents["victim"]["state"] == "dead" and not agents["victim"]["alive"]
        assert str(procs["victim"].pid) in agents["victim"]["why"]
        assert agents["victim"]["beat_age_s"] < 10  # its heartbeat is fresh: only the pid tells
        assert agents["worker"]["state"] == "working" and agents["worker"]["alive"]
        assert agents["worker"]["task"] == "t-work" and agents["worker"]["on_task_s"] > 0
        assert agents["worker"]["role"] == "coder" and agents["worker"]["pid"] == procs["worker"].pid
        assert agents["idler"]["state"] == "idle" and agents["idler"]["alive"] and agents["idler"]["task"] is None
        assert agents["leaver"]["state"] == "exited" and not agents["leaver"]["alive"]
        assert {a["task"] for a in s["active"]} == {"t-work", "t-victim"}  # not reaped yet: nobody waited
        assert set(s["disk"]["by_agent"]) >= {"worker", "victim"} and s["disk"]["bytes"] > 0

        # While the victim is a zombie its claim is not stale yet (the pid exists), so the idler cannot
        # have reaped and taken its task: the CLI sees the same four agents the snapshot did.
        text = cli("status", "--repo", str(colony.repo), check=True).stdout
        assert "2 alive (1 working, 1 idle), 1 dead, 1 exited" in text
        rows = {line.split()[0]: line.split()[2] for line in text.splitlines()
                if line.startswith("  ") and len(line.split()) > 2}
        assert (rows["worker"], rows["idler"], rows["victim"]) == ("working", "idle", "dead")
        assert "leaver" not in rows  # exited agents are counted, not listed

        procs["victim"].wait()  # reaped: its lock is free, the pid gone; still dead
        assert by_agent(snap(colony))["victim"]["state"] == "dead"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()


# -- pace, ETA, last landing ----------------------------------------------------------------------


def test_pace_eta_and_last_landing_from_the_event_log(colony: Colony) -> None:
    colony.add(Task(id="before", title="Landed in an earlier run", priority=99))
    land(colony, "before", commit="1" * 40)
    time.sleep(0.05)
    colony.event("launch", None, launcher=os.getpid())  # this run starts here
    for i in range(6):
        colony.add(Task(id=f"t{i}", title=f"Task {i}", priority=90 - i))
    for i in range(3):
        land(colony, f"t{i}", agent=f"a{i}", commit=f"{i + 2}" * 40)
    got = colony.claim("a9")
    assert got is not None and got[1].id == "t3"
    colony.fail("t3", "a9", "cannot be done", got[0].token)

    s = snap(colony)
    launch = next(e for e in colony.events() if e["event"] == "launch")
    assert s["started_at"] == launch["ts"] and 0 <= s["elapsed_s"] < 30
    assert (s["landed"], s["landed_since_start"], s["landed_last_hour"]) == (4, 3, 4)
    assert s["last_landing"]["task"] == "t2" and s["last_landing"]["commit"] == "4" * 40
    assert s["last_landing"]["agent"] == "a2"
    assert s["finished_since_start"] == 4  # 3 landed, 1 failed: they all left the backlog
    left = s["tasks"]["pending"] + s["tasks"]["active"]
    assert left == 2
    assert s["rate_per_hour"] > 0 and s["rate_window"] == "since start"
    assert s["eta_s"] == pytest.approx(left / (s["rate_per_hour"] / 3600), rel=0.01, abs=0.2)
    text = cli("status", "--repo", str(colony.repo), check=True).stdout
    assert re.search(r"landed   4 in the last hour, 3 since start, 4 in all", text), text
    assert "t2 (a2)" in text and "4444444444" in text and "ETA" in text


def test_the_rate_is_the_last_half_hour_when_enough_landed_in_it_else_the_average() -> None:
    start = 1_000_000.0
    t = Timeline()
    t.feed({"ts": start - 500, "event": "add"})
    t.feed({"ts": start, "event": "launch"})
    for minute in (5, 10, 15, 100, 110, 115):  # three early, three in the last 30 minutes
        t.feed({"ts": start + minute * 60, "event": "done", "task": f"x{minute}", "commit": "c"})
    now = start + 120 * 60
    pace = t.pace(remaining=6, now=now)
    assert pace["rate_window"] == "last 30 min" and pace["rate_per_hour"] == pytest.approx(6.0)  # 3 per 30 min
    assert pace["eta_s"] == pytest.approx(3600)  # 6 left at 6 an hour
    assert pace["landed_last_hour"] == 3 and pace["landed_since_start"] == 6
    later = t.pace(remaining=6, now=start + 200 * 60)  # nothing in the last 30 min: the run's average
    assert later["rate_window"] == "since start" and later["rate_per_hour"] == pytest.approx(6 / (200 / 60))
    assert Timeline().pace(remaining=3, now=now)["eta_s"] is None  # nothing to go on, no guess


# -- what else a person looks for at 3 am -------------------------------------------------------------


def test_open_conflicts_back_offs_cooldown_and_red_main(colony: Colony) -> None:
    colony.add(Task(id="orig", title="Original"))
    colony.add(Task(id="conflict-orig-ab12", title="Resolve", kind="merge_conflict", resolves="orig", priority=95))
    colony.add(Task(id="flaky", title="Fails now and then", priority=10))
    got = colony.claim("a1")
    assert got is not None and got[1].id == "conflict-orig-ab12"  # active: still open
    colony.add(Task(id="conflict-done-cd34", title="Resolved", kind="merge_conflict", resolves="orig", priority=96))
    land(colony, "conflict-done-cd34", agent="a2")  # landed: not open
    got2 = colony.claim("a3")
    assert got2 is not None and got2[1].id == "orig"
    colony.release("orig", "a3", "verify failed", got2[0].token)  # a counted failure: backs off 30 s
    CoolDown(colony.home / "cooldown.json").outage(40.0, 300.0)
    tree = Git(colony.repo).run("rev-parse", "main^{tree}").strip()
    Gate(colony, Git(colony.repo), "main", "pytest -q -x", 1).record(tree, False, "a1", code=1)

    s = snap(colony)
    assert s["open_conflicts"] == [{"task": "conflict-orig-ab12", "status": "active", "resolves": "orig"}]
    assert [b["task"] for b in s["backing_off"]] == ["orig"] and 20 < s["backing_off"][0]["in_s"] <= 30
    assert s["cooldown"]["outages"] == 1 and 30 < s["cooldown"]["in_s"] <= 40
    assert s["main"]["ok"] is False and s["main"]["current"]
    text = cli("status", "--repo", str(colony.repo), check=True).stdout
    assert "MAIN IS RED since" in text and s["main"]["task"] in text
    assert "conflict 1 open: conflict-orig-ab12 (active)" in text
    assert re.search(r"backoff  1: orig in (2\d|30)s", text), text
    assert re.search(r"cooldown no model calls for \d+s more .*1 outage in a row", text), text


def test_disk_counts_agent_worktrees_and_leaves_out_git(colony: Colony, tmp_path: Path) -> None:
    git = Git(colony.repo)
    ws = tmp_path / "elsewhere"
    git.run("worktree", "add", "-q", "-b", "stigmergy/a1", str(ws / "a1"), "main")
    git.run("worktree", "add", "-q", "--detach", str(ws / "a2"), "main")  # detached, as after a landing
    git.run("worktree", "add", "-q", "-b", "feature", str(tmp_path / "mine"), "main")  # the user's own
    colony.heartbeat("a2", pid=None)  # a2 is a known agent (its folder under agents/)
    (ws / "a1" / "big.bin").write_bytes(b"x" * 123_456)
    (ws / "a1" / "link").symlink_to("/usr")  # neither followed nor counted
    readme = len((colony.repo / "README.md").read_bytes())
    s = snap(colony)
    assert s["disk"]["by_agent"] == {"a1": readme + 123_456, "a2": readme}  # no .git file, no symlink
    assert s["disk"]["roots"] == [str(ws)] and s["disk"]["bytes"] == 2 * readme + 123_456
    assert "123.5 kB in 2 agent worktrees under" in cli("status", "--repo", str(colony.repo), check=True).stdout


def test_the_text_fits_80_columns_and_long_ids_end_in_an_ellipsis(colony: Colony) -> None:
    long_task = "implement-the-very-long-feature-with-a-name-nobody-can-read-x" + "y" * 3
    long_agent = "coder-with-a-rather-long-agent-name-01"
    colony.add(Task(id=long_task, title="Long"))
    colony.add(Task(id="conflict-" + "z" * 54, title="Conflict", kind="merge_conflict", resolves=long_task,
                    priority=10))
    got = colony.claim(long_agent)
    assert got is not None and got[1].id == long_task
    colony.heartbeat(long_agent, pid=os.getpid(), role="coder", task=got[1].id,
                     waiting="waiting to land: it changes " + ", ".join(f"src/module_{i}.py" for i in range(12))
                     + ", which your checkout has uncommitted changes to")
    colony.heartbeat("ext", pid=None, role="external-role-name", task=None)
    CoolDown(colony.home / "cooldown.json").extend(3600 * 30)
    tree = Git(colony.repo).run("rev-parse", "main^{tree}").strip()
    Gate(colony, Git(colony.repo), "main", "python -m pytest -q -x tests/ " + "-k slow " * 8, 1).record(
        tree, False, long_agent)
    colony = set_config(colony, budget_usd=50, budget_tokens=5_000_000)
    text = cli("status", "--repo", str(colony.repo), check=True).stdout
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "…" in text and long_agent[:10] in text and long_task[:20] in text
    assert "src/module_11.py" in text  # a reason is wrapped, not cut: the file that blocks must show
    assert "MAIN IS RED since" in text and "of $50 (0%)" in text and "of 5.0M (0%)" in text
    assert "externa…" in text  # its role, cut to its column
    assert len(status.progress_line(snap(colony))) < 100


# -- --watch -------------------------------------------------------------------------------------------


def test_watch_without_a_terminal_prints_timestamped_lines_and_ctrl_c_ends_it_quietly(colony: Colony) -> None:
    colony.add(Task(id="t1", title="One"))
    proc = subprocess.Popen([sys.executable, "-m", "harness", "status", "--watch", "0.2", "--repo", str(colony.repo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and err == ""
    for line in lines:
        assert re.match(rf"\d{{4}}-\d\d-\d\d {STAMP} landed 0/1, 0 active \| ETA \? \| 0 agents alive \| \$0\.00",
                        line), line


def test_watch_on_a_terminal_redraws_in_place(colony: Colony) -> None:
    colony.add(Task(id="t1", title="One"))
    term = Pty([sys.executable, "-m", "harness", "status", "--watch", "0.3", "--repo", str(colony.repo)])
    try:
        out = term.read_until(lambda b: b.count(b"tasks    pending 1") >= 3, 30)
    finally:
        term.proc.send_signal(signal.SIGINT)
        code = term.close()
    assert code == 0
    assert out.count(b"tasks    pending 1") >= 3 and b"\x1b[1A" in out  # redrawn: the cursor went back up
    assert b"Traceback" not in out and b"KeyboardInterrupt" not in out


def test_watch_refuses_json_and_a_bad_interval(colony: Colony) -> None:
    both = cli("status", "--watch", "--json", "--repo", str(colony.repo))
    assert both.returncode == 2 and "--watch and --json" in both.stderr
    zero = cli("status", "--watch", "0", "--repo", str(colony.repo))
    assert zero.returncode == 2 and "positive number of seconds" in zero.stderr


# -- the launcher's progress -------------------------------------------------------------------------


def launch_args(colony: Colony, tmp: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "harness", "--agents", "2", "--repo", str(colony.repo), "--model", model,
            "--workspaces", str(tmp / "ws"), "--until-empty"]


def test_the_launcher_without_a_terminal_prints_timestamped_progress_lines(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, heartbeat_interval=0.3)
    for i in range(6):
        colony.add(Task(id=f"t{i}", title=f"Task {i}"))
    model = quick_script(tmp_path / "script.yaml", sleep=1.5)
    proc = subprocess.run(launch_args(colony, tmp_path, model), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    progress = [line for line in proc.stdout.splitlines() if "progress:" in line]
    assert progress and all(re.match(rf"{STAMP} stigmergy: progress: landed \d/6, \d active", p) for p in progress)
    assert "\r" not in proc.stdout  # a pipe gets lines, never a redraw
    assert re.search(r"progress: landed 0/6", progress[0]) and re.search(r"landed 6/6.*nothing left", progress[-1])
    counts = [int(re.search(r"landed (\d)/6", p).group(1)) for p in progress]  # type: ignore[union-attr]
    assert counts == sorted(counts) and len(progress) <= 7 + 2  # on changes (and once a minute), no flood
    assert len(progress) >= 3  # the run took seconds: a count in between was said too
    log = (colony.home / "launcher.log").read_text()
    assert log.count("progress: landed") == len(progress)
    # The account at the end is the demo's (summary.py), after the last progress line.
    tail = proc.stdout.split(progress[-1])[1]
    assert "finished in" in tail and "6 landed, 0 done without change, 0 failed" in tail
    assert re.search(r"tasks landed +6 Task-Id commits on main", tail) and re.search(r"commits +7 on main", tail)


def test_the_launcher_on_a_terminal_redraws_its_progress_line(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, heartbeat_interval=0.3)
    for i in range(4):
        colony.add(Task(id=f"t{i}", title=f"Task {i}"))
    term = Pty(launch_args(colony, tmp_path, quick_script(tmp_path / "script.yaml", sleep=1.5)))
    try:
        out = term.read_until(lambda b: b"all agents have exited" in b, 120)
    finally:
        code = term.close()
    assert code == 0, out.decode(errors="replace")
    redraws = re.findall(rb"\r\x1b\[K(landed \d/4[^\r\n]*)", out)
    assert redraws and redraws[-1].startswith(b"landed 4/4") and b"nothing left" in redraws[-1]
    assert all(len(r.decode()) <= 80 for r in redraws)  # one row: a wrapped line could not be redrawn
    assert b"stigmergy: progress:" not in out  # the terminal has the live line, not the plain ones
    assert "progress: landed 4/4" in (colony.home / "launcher.log").read_text()  # the log has them
    assert re.search(rb"\d\d:\d\d:\d\d stigmergy: finished in", out)
