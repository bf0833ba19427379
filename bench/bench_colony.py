"""The colony at work, printed as figures and ratios measured side by side in one run.

    python bench/bench_colony.py                 # 16 agents, 500 tasks, 60 s of idling
    python bench/bench_colony.py --tasks 100 --idle 20    # a quicker look

1. The landing step: the harness's `land()` (fence check, merge, commit, the user's checkout kept in
   step, the fenced compare-and-swap of main and the claim ref) against the bare git commands of the
   same landing (rev-parse, merge-tree, commit-tree, update-ref of both refs, read-tree -m -u in the
   checkout), alternating on one repository: milliseconds per landing and their ratio.
2. Throughput: 16 agents (the launcher, `python -m harness --agents 16 --until-empty`), the
   zero-latency scripted model, N tiny tasks each writing its own file, verify `true`: tasks landed
   per second, and harness time per task as a ratio to the bare git commands one landing needs
   (worktree reset, add, write-tree, commit-tree, merge-tree, commit-tree, update-ref), timed in
   the same run on the same repository.
3. Idle: CPU used by 16 agents over the idle window with an empty pool, and RSS per agent.
4. Start-up: time from launch until all 16 agents have claimed a task.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_claims
from harness.colony import Colony
from harness.fence import Fence
from harness.integrate import Landed, land
from harness.tasks import Task
from harness.workspace import Workspace

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}


def git(cwd: Path, *args: str, input: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, text=True, check=True,
                          env=GIT_ENV).stdout.strip()


def make_target(root: Path, name: str) -> Colony:
    repo = root / name
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("bench\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return Colony.init(repo)


def write_script(path: Path, sleep: float = 0.0) -> str:
    entries = [{"match": "^t", "actions": [*([{"sleep": sleep}] if sleep else []),
                                           {"bash": 'echo "$STIGMERGY_TASK" > "out-$STIGMERGY_TASK.txt"'},
                                           {"finish": "ok"}]}]
    path.write_text(json.dumps(entries))
    return f"scripted:{path}"


def launch(colony: Colony, model: str, agents: int, workspaces: Path, *extra: str,
           verify: str = "true") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "harness", "run", "--agents", str(agents), "--repo",
                             str(colony.repo), "--model", model, "--workspaces", str(workspaces), "--verify", verify,
                             "--force",  # 16 agents on a 2-core machine: more than 4 a core asks for it
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bare_landing_seconds(root: Path, n: int = 30) -> float:
    """The git commands one landing needs, run bare, n times in a row: seconds per landing."""
    colony = make_target(root, "bare")
    repo = colony.repo
    wt = root / "bare-wt"
    git(repo, "worktree", "add", "-q", "--detach", str(wt), "main")
    t0 = time.perf_counter()
    for i in range(n):
        tip = git(repo, "rev-parse", "main")
        git(wt, "checkout", "-q", "--force", "--detach", tip)
        (wt / f"out-{i}.txt").write_text(f"{i}\n")
        git(wt, "add", "--all")
        tree = git(wt, "write-tree")
        work = git(wt, "commit-tree", tree, "-p", tip, "-m", f"t{i}")
        merged = git(repo, "merge-tree", "--write-tree", tip, work).splitlines()[0]
        commit = git(repo, "commit-tree", merged, "-p", tip, "-m", f"t{i}\n\nTask-Id: t{i}")
        git(repo, "update-ref", "refs/heads/main", commit, tip)
    return (time.perf_counter() - t0) / n


def landing_step(root: Path, n: int = 40) -> dict[str, float]:
    """Seconds per landing of the harness's land() and of the bare git commands doing the same
    landing, alternating on one repository whose checkout has main checked out (so both keep it
    in step). The work to land is committed outside the timing, as the claim is."""
    repo = make_target(root, "landing-step").repo
    ws = Workspace(repo, root / "ws-landing-step", "bench")
    spent = {"harness": 0.0, "bare": 0.0}
    for i in range(n):
        for way in spent:
            task = f"{way}-{i}"
            ws.prepare()
            (ws.path / f"out-{task}.txt").write_text(f"{task}\n")
            work = ws.commit_all(task)
            assert work is not None
            fence = Fence.acquire(ws.git, task, 1, "bench")
            assert isinstance(fence, Fence)
            t0 = time.perf_counter()
            if way == "harness":
                assert isinstance(land(ws, work, title=task, fence=fence, verify=lambda _: True), Landed)
            else:
                tip = git(repo, "rev-parse", "main")
                tree = git(repo, "merge-tree", "--write-tree", tip, work).splitlines()[0]
                commit = git(repo, "commit-tree", tree, "-p", tip, "-m", f"{task}\n\nTask-Id: {task}")
                git(repo, "update-ref", "--stdin", input=f"start\nupdate refs/heads/main {commit} {tip}\n"
                                                         f"update {fence.ref} {commit} {fence.blob}\ncommit\n")
                git(repo, "read-tree", "-m", "-u", tip, commit)
            spent[way] += time.perf_counter() - t0
    return {"harness_s": spent["harness"] / n, "bare_s": spent["bare"] / n, "ratio": spent["harness"] / spent["bare"]}


def throughput(root: Path, agents: int, n_tasks: int, verify_s: float = 0.0) -> dict[str, float]:
    """Tasks landed per second by `agents` on `n_tasks` tasks, verify `sleep verify_s` (`true`
    for 0); also how many verify runs the colony made (from its run logs), and a check that every
    task landed exactly once."""
    colony = make_target(root, f"throughput-{agents}-{n_tasks}-{verify_s:g}")
    colony.add_many([Task(id=f"t{i:04d}", title=f"task {i}", outputs=[f"out-t{i:04d}.txt"]) for i in range(n_tasks)])
    model = write_script(root / "script.json")
    verify = f"sleep {verify_s:g}" if verify_s else "true"
    t0 = time.perf_counter()
    proc = launch(colony, model, agents, root / f"ws-throughput-{agents}-{n_tasks}-{verify_s:g}", "--until-empty", verify=verify)
    proc.wait(timeout=3600)
    secs = time.perf_counter() - t0
    landed = git(colony.repo, "log", "--first-parent", "--format=%(trailers:key=Task-Id,valueonly)", "main").split()
    assert len(landed) == len(set(landed)) == n_tasks, f"{len(landed)} landed of {n_tasks}"
    return {"tasks": n_tasks, "seconds": secs, "per_s": n_tasks / secs}


def overlap_conflicts(root: Path, agents: int, n_tasks: int, files: int, aware: bool) -> dict[str, float]:
    """Conflicts per 100 tasks on a workload whose outputs overlap: each task appends its id to
    one of `files` shared files (declared as its output), so two such tasks in flight conflict.
    `aware` False sets `overlap_penalty: 0` (picking ignores what is active). Conflict tasks are
    resolved by the script (both sides kept), and every task must land."""
    colony = make_target(root, f"overlap-{'aware' if aware else 'blind'}")
    if not aware:
        config = colony.home / "config.yaml"
        config.write_text(config.read_text() + "\noverlap_penalty: 0\n")
    colony.add_many([Task(id=f"t{i:04d}", title=f"task {i}", outputs=[f"shared-{i % files}.txt"])
                     for i in range(n_tasks)])
    append = 'n=${STIGMERGY_TASK#t}; echo "$STIGMERGY_TASK" >> "shared-$(( 10#$n %% %d )).txt"' % files
    resolve = ("for f in shared-*.txt; do grep -vE '^(<<<<<<<|[|]{7}|=======|>>>>>>>)' \"$f\" > \"$f.x\"; "
               "mv \"$f.x\" \"$f\"; done")
    script = root / f"overlap-{aware}.json"
    script.write_text(json.dumps([{"match": "^conflict-", "actions": [{"bash": resolve}, {"finish": "both kept"}]},
                                  {"match": "^t", "actions": [{"bash": append}, {"finish": "ok"}]}]))
    proc = launch(colony, f"scripted:{script}", agents, root / f"ws-overlap-{aware}", "--until-empty")
    proc.wait(timeout=3600)
    added = [e for e in colony.events() if e["event"] == "add" and str(e.get("task", "")).startswith("conflict-")]
    landed = git(colony.repo, "log", "--first-parent", "--format=%(trailers:key=Task-Id,valueonly)", "main").split()
    originals = {t for t in landed if t.startswith("t")}
    return {"tasks": n_tasks, "conflicts": len(added), "per_100": 100 * len(added) / n_tasks,
            "landed_originals": len(originals)}


def _clone_agent(upstream: str, clone: str, agent: str, n_tasks: int, go: object, out: object) -> None:
    """One agent of the baseline: claims by pushing a lock file, lands by `pull --rebase` and push."""
    def g(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True, env=GIT_ENV)
    subprocess.run(["git", "clone", "-q", upstream, clone], check=True, capture_output=True, env=GIT_ENV)
    go.wait()  # type: ignore[attr-defined]
    did, pushes_lost = [], 0
    while True:
        g("pull", "-q", "--rebase")
        root = Path(clone)
        free = [i for i in range(n_tasks) if not (root / f"out-t{i:04d}.txt").exists()
                and not (root / "current_tasks" / f"t{i:04d}.lock").exists()]
        if not free:
            break
        task = f"t{free[0]:04d}"
        (root / "current_tasks").mkdir(exist_ok=True)
        (root / "current_tasks" / f"{task}.lock").write_text(agent + "\n")
        g("add", "-A")
        g("commit", "-qm", f"lock {task}")
        if g("push", "-q", "origin", "HEAD:main").returncode != 0:  # someone moved first: look again
            pushes_lost += 1
            g("reset", "-q", "--hard", "origin/main")
            continue
        (root / f"out-{task}.txt").write_text(task + "\n")
        (root / "current_tasks" / f"{task}.lock").unlink()
        g("add", "-A")
        g("commit", "-qm", task)
        while g("push", "-q", "origin", "HEAD:main").returncode != 0:
            pushes_lost += 1
            if g("pull", "-q", "--rebase").returncode != 0:  # a conflict: take theirs, keep going
                g("rebase", "--abort")
                g("reset", "-q", "--hard", "origin/main")
                break
        did.append(task)
    out.put({"did": did, "pushes_lost": pushes_lost})  # type: ignore[attr-defined]


def clone_baseline(root: Path, agents: int, n_tasks: int) -> dict[str, float]:
    """The 16-agent C-compiler experiment's way, on the same tiny tasks: each agent a clone of a
    bare upstream, claiming a task by committing `current_tasks/<task>.lock` and pushing it,
    landing by `pull --rebase` and push. Tasks landed/s, and work done twice."""
    seed = make_target(root, "baseline-seed").repo
    upstream = root / "baseline-upstream.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(upstream)], check=True)
    # Every clone made before the gun.
    secs, results = bench_claims._race(_clone_agent, [(str(upstream), str(root / f"baseline-{i}"), f"a{i}", n_tasks)
                                                      for i in range(agents)], timeout=1800)
    landed = set(git(upstream, "ls-tree", "--name-only", "main").split())
    did = [t for r in results for t in r["did"]]
    assert {f"out-t{i:04d}.txt" for i in range(n_tasks)} <= landed, "the baseline left tasks undone"
    return {"tasks": n_tasks, "seconds": secs, "per_s": n_tasks / secs, "done_twice": len(did) - len(set(did)),
            "pushes_lost": sum(r["pushes_lost"] for r in results)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def agent_pids(colony: Colony, agents: int, timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = [json.loads(p.read_text()) for p in colony.home.glob("agents/*/heartbeat.json")]
        if len(beats) >= agents:
            return [int(b["pid"]) for b in beats]
        time.sleep(0.2)
    raise RuntimeError("agents did not start")


def idle_and_startup(root: Path, agents: int, idle_s: float) -> dict[str, float]:
    colony = make_target(root, "idle")
    model = write_script(root / "slow.json", sleep=5.0)
    proc = launch(colony, model, agents, root / "ws-idle")
    pids = agent_pids(colony, agents)
    time.sleep(2)  # past start-up
    # Two windows one after the other: the first, while the naps between looks for work still
    # double (0.2 s up to max_idle_sleep, 30 s), and the steady state that follows.
    before = {p: cpu_seconds(p) for p in pids}
    time.sleep(idle_s)
    middle = {p: cpu_seconds(p) for p in pids}
    time.sleep(idle_s)
    first = sum(middle[p] - before[p] for p in pids)
    cpu = sum(cpu_seconds(p) - middle[p] for p in pids)
    rss = [rss_mib(p) for p in pids]
    # Start-up to all-claimed: file one slow task per agent and time the claims.
    t0 = time.time()
    colony.add_many([Task(id=f"t{i:04d}", title=f"slow {i}") for i in range(agents)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        claims = [e for e in colony.events() if e["event"] == "claim"]
        if len({e["agent"] for e in claims}) >= agents:
            break
        time.sleep(0.05)
    claimed_after = max(e["ts"] for e in claims) - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    return {"cpu_s": cpu, "cpu_pct_of_one_core": 100 * cpu / idle_s, "first_pct_of_one_core": 100 * first / idle_s,
            "rss_mib_mean": sum(rss) / len(rss),
            "all_claimed_s": claimed_after}


def cold_start(root: Path, agents: int) -> float:
    """From the launcher's start until every agent has claimed one of `agents` waiting tasks."""
    colony = make_target(root, "cold")
    colony.add_many([Task(id=f"t{i:04d}", title=f"slow {i}") for i in range(agents)])
    model = write_script(root / "cold.json", sleep=5.0)
    t0 = time.time()
    proc = launch(colony, model, agents, root / "ws-cold")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        agents_claimed = {e["agent"] for e in colony.events() if e["event"] == "claim"}
        if len(agents_claimed) >= agents:
            break
        time.sleep(0.05)
    took = time.time() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--idle", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-colony-") as tmp:
        root = Path(tmp)
        step = landing_step(root)
        print(f"landing step: harness land() {1000 * step['harness_s']:.1f} ms, the bare git commands of the same "
              f"landing {1000 * step['bare_s']:.1f} ms: {step['ratio']:.2f}x")
        bare = bare_landing_seconds(root)
        t = throughput(root, args.agents, args.tasks)
        per_task = 1 / t["per_s"]
        print(f"throughput: {args.agents} agents, {t['tasks']} tasks, scripted model, verify `true` "
              f"({os.cpu_count()} cores)")
        print(f"  landed {t['per_s']:.2f} tasks/s ({t['seconds']:.1f} s)")
        print(f"  bare git commands of one landing: {1000 * bare:.1f} ms -> {1 / bare:.1f} landings/s in series")
        print(f"  harness wall time per task / bare landing: {per_task / bare:.2f}x")
        i = idle_and_startup(root, args.agents, args.idle)
        print(f"idle: {args.agents} agents, empty pool, {args.idle:.0f} s: CPU {i['cpu_s']:.2f} s "
              f"({i['cpu_pct_of_one_core']:.2f}% of one core); RSS per agent {i['rss_mib_mean']:.1f} MiB")
        print(f"  16 tasks filed into the idle colony: all {args.agents} agents claimed after "
              f"{i['all_claimed_s']:.2f} s (idle agents back off up to 30 s)")
        print(f"start-up: launch -> all {args.agents} agents claimed: {cold_start(root, args.agents):.2f} s")


if __name__ == "__main__":
    main()
