"""What the sandbox costs per command: sandboxed vs unsandboxed, side by side in one run.

    .venv/bin/python bench/bench_sandbox.py           # 30 runs per command and mode
    .venv/bin/python bench/bench_sandbox.py --quick   # 8 runs

Each command runs through `tools.run_command` (the bash tool's own path: a session, output to a
file, the group killed afterwards) in a real git worktree, once with `--sandbox none` and once
inside the agent's bwrap sandbox (pid namespace, fresh /proc, tmpfs over home, /tmp, .stigmergy
and the worktrees folder, binds back). The two modes alternate run by run, so load from other
processes hits both alike. Commands: `true`, `python -c pass`, `git status`, and a tiny pytest
suite (2 tests). Printed: median and p90 wall ms per mode and the ratio of medians.
No asserts on speed: this prints numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.sandbox import Sandbox, probe  # noqa: E402
from harness.tools import run_command  # noqa: E402


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
                        "GIT_COMMITTER_EMAIL": "b@x"})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    runs = 8 if parser.parse_args().quick else 30
    exe, why = probe(os.environ.get("PATH"))
    if exe is None:
        print(f"bwrap unavailable: {why}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = root / "target"
        repo.mkdir()
        (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        (repo / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\n"
                                           "def test_zero():\n    assert add(0, 0) == 0\n")
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "init")
        (repo / ".stigmergy").mkdir()
        wt = root / "ws" / "a1"
        git(repo, "worktree", "add", "-q", "--detach", str(wt))
        box = Sandbox.for_agent(exe, worktree=wt, workspaces=root / "ws", colony_home=repo / ".stigmergy",
                                git_dir=repo / ".git")
        commands = {
            "true": "true",
            "python -c pass": f"{sys.executable} -c pass",
            "git status": "git status --short",
            "pytest (2 tests)": f"{sys.executable} -m pytest -q -p no:cacheprovider",
        }
        env = {k: v for k, v in os.environ.items() if "KEY" not in k and "TOKEN" not in k}
        print(f"{runs} runs per command and mode, alternating; {exe}\n")
        print(f"{'command':<18} {'none p50':>9} {'p90':>7} {'bwrap p50':>10} {'p90':>7} {'ratio':>6} {'+ms':>6}")
        for name, line in commands.items():
            times: dict[str, list[float]] = {"none": [], "bwrap": []}
            for i in range(runs + 1):
                for mode, sb in (("none", None), ("bwrap", box)) if i % 2 else (("bwrap", box), ("none", None)):
                    start = time.perf_counter()
                    text, timed_out = run_command(["bash", "-c", line], wt, env, 120, 16_000, sb)
                    took = (time.perf_counter() - start) * 1000
                    if not text.endswith("[exit code 0]"):
                        print(f"{name} failed in {mode}:\n{text}")
                        return 1
                    if i:  # the first round warms caches for both
                        times[mode].append(took)
            p50 = {m: statistics.median(t) for m, t in times.items()}
            p90 = {m: sorted(t)[int(len(t) * 0.9) - 1] for m, t in times.items()}
            print(f"{name:<18} {p50['none']:>8.1f}ms {p90['none']:>6.1f} {p50['bwrap']:>9.1f}ms {p90['bwrap']:>6.1f} "
                  f"{p50['bwrap'] / p50['none']:>5.2f}x {p50['bwrap'] - p50['none']:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
