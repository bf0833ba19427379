"""The nest (a git remote as the colony's environment) next to the local disk, in one run.

    python bench/bench_nest.py

1. claims per second of 16 processes racing over the same 400 tasks, on local disk and through a
   nest (a bare repository on the same disk, so the figure is git's and ours, not a network's);
2. landings per second of 4 processes, each in its own clone, claiming a task, committing on the
   nest's tip and landing through it (``Nest.land``: branch and task record in one atomic push,
   again on a lost race), next to the same processes doing the bare git of it (fetch the tip,
   commit, ``git push --force-with-lease`` of the branch alone, again when refused);
3. tasks landed per second by whole colonies of real agents (``stigmergy run``, scripted model,
   no verify): six agents on one machine's colony, and two on each of three clones of a nest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_claims import _claim_all, _race, claim_until_empty  # noqa: E402

from harness.colony import Colony  # noqa: E402
from harness.git import Git  # noqa: E402
from harness.nest import Nest, Remote  # noqa: E402
from harness.tasks import Task  # noqa: E402


def _tasks(n: int) -> list[Task]:
    return [Task(id=f"t{i:04d}", title=f"task {i}", priority=i % 7) for i in range(n)]


def _claim_nest(url: str, cache: str, agent: str, go: object, out: object) -> None:
    claim_until_empty(Nest(url, Path(cache)), agent, go, out)


def claims(root: Path, n: int = 400, procs: int = 16) -> dict[str, float]:
    repo = Path(tempfile.mkdtemp(prefix="local-", dir=root))
    Git(root).run("init", "-q", "-b", "main", str(repo))
    Git(repo).run("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "init")
    local = Colony.init(repo)
    local.add_many(_tasks(n))
    secs, won = _race(_claim_all, [(str(repo), f"a{i:02d}") for i in range(procs)])
    assert sum(won) == n
    nest_dir = Path(tempfile.mkdtemp(prefix="nest-", dir=root))
    nest = Nest.init(str(nest_dir / "nest.git"), home=nest_dir / "cache")
    nest.add_many(_tasks(n))
    nsecs, nwon = _race(_claim_nest, [(nest.url, str(nest_dir / "cache"), f"a{i:02d}") for i in range(procs)])
    assert sum(nwon) == n
    return {"tasks": n, "procs": procs, "local_per_s": n / secs, "nest_per_s": n / nsecs}


def _commit_on(repo: Path, parent: str, name: str) -> str:
    """A commit adding ``name`` on ``parent``, made without a checkout (a temporary index)."""
    index = repo / ".git" / f"bench-index-{name}"
    env = {"GIT_INDEX_FILE": str(index), "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    git = Git(repo)
    git.run("read-tree", parent, env=env)
    blob = git.run("hash-object", "-w", "--stdin", input=name + "\n").strip()
    git.run("update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", env=env)
    tree = git.run("write-tree", env=env).strip()
    index.unlink(missing_ok=True)
    return git.run("commit-tree", tree, "-p", parent, "-m", f"add {name}", env=env).strip()


def _land_nest(url: str, clone: str, agent: str, go: object, out: object) -> None:
    repo = Path(clone)
    nest, work = Nest(url, repo.parent / "cache"), Remote(url, Git(repo).common_dir())
    go.wait()  # type: ignore[attr-defined]
    landed = lost = 0
    while (got := nest.claim(agent)) is not None:
        while True:
            tip = work.tip("main")
            assert tip is not None
            if nest.land(got[0], repo, _commit_on(repo, tip, f"out-{got[1].id}"), "main", tip):
                break
            lost += 1
        landed += 1
    out.put(json.dumps([landed, lost]))  # type: ignore[attr-defined]


def _land_bare(url: str, clone: str, names: str, go: object, out: object) -> None:
    repo, git = Path(clone), Git(Path(clone))
    go.wait()  # type: ignore[attr-defined]
    refused = 0
    for name in names.split(","):
        while True:
            tip = git.run("ls-remote", url, "refs/heads/main").split()[0]
            git.run("fetch", "-q", "--no-write-fetch-head", url, "refs/heads/main")
            done = git.call("push", "-q", f"--force-with-lease=refs/heads/main:{tip}", url,
                            f"{_commit_on(repo, tip, name)}:refs/heads/main")
            if done.returncode == 0:
                break
            refused += 1
    out.put(json.dumps([len(names.split(",")), refused]))  # type: ignore[attr-defined]


def landings(root: Path, n: int = 40, procs: int = 4) -> dict[str, float]:
    here = Path(tempfile.mkdtemp(prefix="land-", dir=root))
    target = here / "target"
    Git(here).run("init", "-q", "-b", "main", str(target))
    Git(target).run("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "init")
    results: dict[str, float] = {"tasks": n, "procs": procs}
    for kind in ("nest", "bare"):
        url = str(here / f"{kind}.git")
        if kind == "nest":
            Nest.init(url, home=here / "setup").add_many(_tasks(n))
        else:
            Git(here).run("init", "-q", "--bare", url)
        Git(target).run("push", "-q", url, "main")
        clones = []
        for i in range(procs):
            clone = here / f"{kind}-host{i}" / "clone"
            clone.parent.mkdir()
            Git(clone.parent).run("clone", "-q", url, str(clone))
            clones.append(str(clone))
        if kind == "nest":
            secs, said = _race(_land_nest, [(url, clones[i], f"a{i}") for i in range(procs)])
        else:
            names = [f"out-t{i:04d}" for i in range(n)]
            secs, said = _race(_land_bare, [(url, clones[i], ",".join(names[i::procs])) for i in range(procs)])
        counts = [json.loads(s) for s in said]
        assert sum(c[0] for c in counts) == n
        Git(target).run("fetch", "-q", url, "main")
        line = Git(target).run("rev-list", "--count", "--first-parent", "FETCH_HEAD")
        assert int(line) == n + 1, f"{kind}: {line} first-parent commits for {n} landings"
        results[f"{kind}_per_s"] = n / secs
        results[f"{kind}_retries"] = sum(c[1] for c in counts)
    results["ratio"] = results["bare_per_s"] / results["nest_per_s"]
    return results


SCRIPT = """
- match: "^t"
  actions:
  - bash: 'echo "$STIGMERGY_TASK" > "out-$STIGMERGY_TASK.txt"'
  - finish: ok
"""


def _launch(repo: Path, agents: int, script: Path, host: str | None, nest: str | None) -> subprocess.Popen[bytes]:
    """`stigmergy run --until-empty` of ``agents`` scripted agents in ``repo`` (on ``nest``, as ``host``)."""
    env = ({k: v for k, v in os.environ.items() if not k.startswith("STIGMERGY_")}
           | {"XDG_CACHE_HOME": str(repo.parent / "xdg-cache")} | ({"STIGMERGY_HOST": host} if host else {}))
    where = ["--nest", nest] if nest else ["--workspaces", str(repo.parent / "ws")]
    return subprocess.Popen([sys.executable, "-m", "harness", "run", "--repo", str(repo), "--agents", str(agents),
                             "--model", f"scripted:{script}", "--until-empty", "--sandbox", "none", *where],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def colonies(root: Path, n: int = 60, hosts: int = 3, per_host: int = 2) -> dict[str, float]:
    """Whole colonies of real agents (`stigmergy run`, the scripted model, no verify): the same
    number of agents on one machine's colony and spread over ``hosts`` clones of a nest."""
    here = Path(tempfile.mkdtemp(prefix="colonies-", dir=root))
    script = here / "script.yaml"
    script.write_text(SCRIPT)
    local = here / "local" / "repo"
    Git(here).run("init", "-q", "-b", "main", str(local))
    Git(local).run("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "init")
    Colony.init(local).add_many(_tasks(n))
    began = time.monotonic()
    assert _launch(local, hosts * per_host, script, None, None).wait() == 0
    local_s = time.monotonic() - began
    landed = int(Git(local).run("rev-list", "--count", "--first-parent", "main")) - 1
    assert landed == n, f"local: {landed} landings of {n}"
    url = str(here / "nest.git")
    nest = Nest.init(url, home=here / "setup")
    Git(local).run("push", "-q", url, f"{Git(local).run('rev-list', '--max-parents=0', 'main').strip()}:refs/heads/main")
    nest.add_many(_tasks(n))
    clones = [here / f"host{h}" / "clone" for h in range(hosts)]
    for clone in clones:
        clone.parent.mkdir()
        Git(clone.parent).run("clone", "-q", url, str(clone))
    began = time.monotonic()
    runs = [_launch(clone, per_host, script, f"host{h}", url) for h, clone in enumerate(clones)]
    assert [r.wait() for r in runs] == [0] * hosts
    nest_s = time.monotonic() - began
    Git(local).run("fetch", "-q", url, "main")
    landed = int(Git(local).run("rev-list", "--count", "--first-parent", "FETCH_HEAD")) - 1
    assert landed == n, f"nest: {landed} landings of {n}"
    return {"tasks": n, "agents": hosts * per_host, "hosts": hosts, "local_per_s": n / local_s,
            "nest_per_s": n / nest_s}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-nest-") as tmp:
        c = claims(Path(tmp))
        print(f"claims/s, {c['procs']:.0f} processes over {c['tasks']:.0f} tasks: local {c['local_per_s']:.0f}, "
              f"nest {c['nest_per_s']:.1f} ({c['local_per_s'] / c['nest_per_s']:.1f}x)")
        lr = landings(Path(tmp))
        print(f"landings/s, {lr['procs']:.0f} clones, {lr['tasks']:.0f} tasks: nest {lr['nest_per_s']:.2f} "
              f"({lr['nest_retries']:.0f} lost races), bare git {lr['bare_per_s']:.2f} ({lr['bare_retries']:.0f} "
              f"refused); harness time per landing / bare: {lr['ratio']:.2f}x")
        k = colonies(Path(tmp))
        print(f"tasks landed/s, {k['agents']:.0f} agents, {k['tasks']:.0f} tasks: one machine's colony "
              f"{k['local_per_s']:.2f}, {k['hosts']:.0f} hosts on a nest {k['nest_per_s']:.2f}")


if __name__ == "__main__":
    main()
