"""The demo across machines: ``python -m harness demo --nest [--agents 4] [--dir ./stigmergy-demo]``.

The demo's target and backlog (demo.py), with the colony in a nest served by a real git server
on loopback (``git daemon --enable=receive-pack``, at ``git://127.0.0.1:<port>/colony.git``)
and three "machines": three clones of it, each with its own launcher (``run --nest``), its own
agents and ``STIGMERGY_HOST``, sharing nothing but the server. Under ``--dir``:

    nest.git      the nest the server serves (the target's main, and refs/stigmergy/)
    host-0..2     each host's clone, its .stigmergy/ holding that host's logs, ledgers and runs

The backlog leaves out the second task of the demo's conflicting pair: across machines a
merge conflict is redone on the new main, not resolved by a merger (nestagent.py), and that
scripted task would rewrite a line that is no longer there. Exit status 0 only when every task
is done and on the nest's main exactly once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import yaml

from harness import demo
from harness.config import DEFAULT_CONFIG
from harness.errors import UsageError
from harness.git import Git
from harness.nest import Nest

HOSTS = 3
LEFT_OUT = "normalize-accents"  # the conflicting pair's second task (see the module docstring)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(base: Path, port: int) -> subprocess.Popen[bytes]:
    """`git daemon` serving ``base`` on loopback, pushes allowed; returned once it accepts connections."""
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
                             f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}", str(base)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise UsageError(f"git daemon could not listen on 127.0.0.1:{port}: is git-daemon installed "
                     "(Debian: the git-daemon-run or git package)?")


def run(directory: Path, agents: int = 4, timeout: float = 600, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    directory = directory.expanduser().absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"{directory} already exists and is not empty: pass another --dir or remove it")
    if agents < 1 or timeout <= 0:
        raise UsageError(f"--agents must be at least 1 and --timeout positive, got {agents} and {timeout}")
    started = time.monotonic()
    data = demo.load_data()
    data["tasks"] = [t | {"actions": [a for a in t["actions"] if "meet" not in a]}  # no partner to wait for
                     for t in data["tasks"] if t["id"] != LEFT_OUT]
    per_host = max(1, agents // HOSTS)
    target = demo.create_target(directory / "target", data["target"])
    config = DEFAULT_CONFIG + f"verify: {json.dumps(demo.verify_command())}\n"
    nest = Nest.init(str(directory / "nest.git"), config, home=directory / "cache")
    target.run("push", "-q", nest.url, "main")
    script = directory / demo.SCRIPT_NAME
    script.write_text(yaml.safe_dump(demo.script_entries(data, per_host * HOSTS), sort_keys=False,
                                     allow_unicode=True, width=1000), encoding="utf-8")
    backlog = demo.backlog(data)
    nest.add_many(backlog)
    port = _free_port()
    server = serve(directory, port)
    url = f"git://127.0.0.1:{port}/nest.git"
    print(f"demo: a nest at {url} (git daemon on loopback) with {len(backlog)} tasks; {HOSTS} hosts with "
          f"{per_host} scripted agent(s) each", file=out, flush=True)
    launchers = []
    try:
        for h in range(HOSTS):
            clone = directory / f"host-{h}"
            Git(directory).run("clone", "-q", url, str(clone))
            env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMERGY_")}
            launchers.append(subprocess.Popen(
                [sys.executable, "-m", "harness", "run", "--nest", url, "--repo", str(clone),
                 "--agents", str(per_host), "--model", f"scripted:{script}", "--until-empty",
                 "--max-hours", str(timeout / 3600)],
                env=env | {"STIGMERGY_HOST": f"host-{h}", "XDG_CACHE_HOME": str(directory / "cache" / f"host-{h}")},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=(directory / f"host-{h}.log").open("w")))
        codes = [p.wait() for p in launchers]
        found = problems(Nest(url, directory / "cache"), target, url, codes)
    finally:
        for p in launchers:
            if p.poll() is None:
                p.terminate()
        server.terminate()
        server.wait(timeout=10)
    nest_dir = directory / "nest.git"
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s: {directory}\nsee: git -C {nest_dir} log "
          f"--first-parent main; python -m harness status --nest {nest_dir}; each host's log in "
          f"{directory}/host-N.log", file=out, flush=True)
    print("\n".join(f"PROBLEM: {p}" for p in found), file=out, flush=True)
    return 0 if not found else 1


def problems(nest: Nest, target: Git, url: str, codes: list[int]) -> list[str]:
    """What keeps the demo from being a success: every task (the agents' own too) done and on the
    nest's main exactly once."""
    found = []
    every = nest.listing("all")
    not_done = sorted(f"{t.id} ({st})" for st, t in every if st != "done")
    if not_done:
        found.append(f"not done: {', '.join(not_done)}")
    target.run("fetch", "-q", url, "main")
    log = target.run("log", "--first-parent", "--format=%(trailers:key=Task-Id,valueonly)", "FETCH_HEAD")
    landed = [line.strip() for line in log.splitlines() if line.strip()]
    twice = sorted({t for t in landed if landed.count(t) > 1})
    if twice:
        found.append(f"landed more than once: {', '.join(twice)}")
    missing = sorted(t.id for st, t in every if st == "done" and t.id not in landed)
    if missing:
        found.append(f"done but not on main: {', '.join(missing)}")
    if any(codes):
        found.append(f"a launcher exited with status {max(codes)}")
    return found
