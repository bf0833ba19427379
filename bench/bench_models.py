"""Model-layer overhead and agent start-up cost, printed as figures and ratios side by side in one run.

    .venv/bin/python bench/bench_models.py            # 200 calls per variant, 3 start-ups per provider
    .venv/bin/python bench/bench_models.py --quick    # 50 calls, 1 start-up

1. Per-call latency against one fake API server (`python -m harness fake-server`, its own process
   so it does not share our GIL), same request shape (system prompt, the 5 tool schemas, one user
   message; the reply is one `finish` tool call) for:
     bare      the official SDK called directly (anthropic.Anthropic().messages.create /
               openai.OpenAI().chat.completions.create), retries off
     provider  load_model("anthropic/..."|"openai/..."|"litellm/openai/...").complete(Request):
               translation, the retry wrapper, the colony cool-down file check, cost
     step      one whole tool-loop step as the agent runs it: run_attempt with a 1-step script
               through Metered (ledger line) with its transcript lines and the finish tool
   Variants run interleaved in rotating rounds, so load from other processes hits all alike.
2. Start-up per provider (scripted, anthropic, openai, litellm), each in a fresh process:
     load      `python -c "from harness.models.registry import load_model; load_model(spec)"`:
               wall time, peak RSS, and whether litellm is in its sys.modules
     agent     `python -m harness agent run` from process start to its first heartbeat file, and
               its peak RSS by then; whether it imported litellm is read from a separate
               `-X importtime` run (that run's timings are not used)
   Peak RSS is the child's VmHWM (Linux), not wait4's ru_maxrss: see HWM below for why.
   A bare `python -c pass` and `import harness.cli` give the floor.
No asserts on speed: this prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import yaml

from harness.agent import Metered
from harness.colony import Colony
from harness.meter import Ledger
from harness.models.base import Model, Request
from harness.models.registry import load_model
from harness.models.retry import CoolDown
from harness.toolloop import Limits, Transcript, run_attempt
from harness.tools import TOOL_SPECS, Toolbox

KEY = "sk-bench-0123456789abcdef"
SYSTEM = "You are a coding agent working in a git worktree. " * 20  # a realistic-ish stable prefix
PROMPT = "Task bench-1: do nothing and call finish.\nRepository: recent commits on main\nabc123 init\n"
SCRIPT = [{"match": "", "replies": [{"tool": "finish", "input": {"summary": "benchmarked"}}]}]


class NoColony:
    """The colony tools' sink: the benchmarked step only calls finish, so these never run."""

    def create_task(self, fields: dict[str, Any]) -> str:
        raise RuntimeError("not used by the benchmark")

    def add_note(self, text: str) -> None:
        raise RuntimeError("not used by the benchmark")


def start_server(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    script = tmp / "fake.yaml"
    script.write_text(yaml.safe_dump(SCRIPT))
    proc = subprocess.Popen([sys.executable, "-m", "harness", "fake-server", "--port", "0", "--script", str(script),
                             "--api-key", KEY], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("fake LLM server on "):
        raise SystemExit(f"fake server did not start: {line!r}")
    return proc, line.split()[4]


# -- 1. per-call latency --------------------------------------------------------------------------------

def bare_anthropic(url: str) -> Callable[[], Any]:
    client: Any = anthropic.Anthropic(api_key=KEY, base_url=url, max_retries=0)
    # The same wire request our provider sends: cache breakpoints on system and the last tool.
    tools: list[dict[str, Any]] = [{"name": t.name, "description": t.description, "input_schema": t.input_schema}
                                   for t in TOOL_SPECS]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    return lambda: client.messages.create(model="claude-bench", max_tokens=4096, system=system,
                                          messages=messages, tools=tools)


def bare_openai(url: str) -> Callable[[], Any]:
    client: Any = openai.OpenAI(api_key=KEY, base_url=url + "/v1", max_retries=0)
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                "parameters": t.input_schema}} for t in TOOL_SPECS]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    return lambda: client.chat.completions.create(model="gpt-bench", max_tokens=4096, messages=messages,
                                                  tools=tools)


def provider_call(model: Model) -> Callable[[], Any]:
    request = Request(SYSTEM, [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}], TOOL_SPECS)
    return lambda: model.complete(request)


def loop_step(model: Model, tmp: Path, name: str) -> Callable[[], Any]:
    worktree = tmp / f"wt-{name}"
    worktree.mkdir()
    metered = Metered(model, Ledger(tmp / "ledger" / f"{name}.jsonl"), "bench", "bench-1")
    toolbox = Toolbox(worktree, dict(os.environ), NoColony())
    transcript = Transcript(tmp / f"transcript-{name}.jsonl")

    def step() -> Any:
        outcome = run_attempt(metered, SYSTEM, PROMPT, toolbox, Limits(), transcript, task_id="bench-1",
                              task_title="bench", budget_check=lambda: False, secrets=(KEY,))
        assert outcome.finished and outcome.steps == 1, outcome
        return outcome
    return step


def measure(variants: dict[str, Callable[[], Any]], calls: int) -> dict[str, list[float]]:
    for fn in variants.values():  # warm up: connections, lazy imports, caches
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants.items())
    for i in range(calls):
        # Interleaved, so background load hits every variant alike, and rotated, so none always
        # runs right after the garbage a heavier one left for the collector.
        for name, fn in order[i % len(order):] + order[:i % len(order)]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def report_calls(title: str, times: dict[str, list[float]], base: str) -> None:
    floor = statistics.median(times[base])
    print(f"\n{title}")
    print(f"  {'variant':<26}{'p50 ms':>9}{'p90 ms':>9}{'mean ms':>9}{'p50 / bare':>12}{'added p50 ms':>14}")
    for name, values in times.items():
        p50 = statistics.median(values)
        print(f"  {name:<26}{p50 * 1e3:9.2f}{pct(values, 0.9) * 1e3:9.2f}{statistics.fmean(values) * 1e3:9.2f}"
              f"{p50 / floor:11.2f}x{(p50 - floor) * 1e3:14.2f}")


def bench_calls(url: str, tmp: Path, calls: int) -> None:
    cooldown = CoolDown(tmp / "cooldown.json")  # as agents have it: checked before every call
    a_model = load_model("anthropic/claude-bench", api_base=url, api_key=KEY, cooldown=cooldown)
    report_calls(f"1a. anthropic: per-call latency over {calls} calls", measure({
        "bare SDK": bare_anthropic(url),
        "provider (load_model)": provider_call(a_model),
        "tool-loop step": loop_step(a_model, tmp, "anthropic"),
    }, calls), "bare SDK")
    o_model = load_model("openai/gpt-bench", api_base=url + "/v1", api_key=KEY, cooldown=cooldown)
    l_model = load_model("litellm/openai/gpt-bench", api_base=url + "/v1", api_key=KEY, cooldown=cooldown)
    report_calls(f"1b. openai: per-call latency over {calls} calls (litellm speaks the same wire)", measure({
        "bare SDK": bare_openai(url),
        "provider (load_model)": provider_call(o_model),
        "tool-loop step": loop_step(o_model, tmp, "openai"),
        "litellm provider": provider_call(l_model),
        "litellm tool-loop step": loop_step(l_model, tmp, "litellm"),
    }, calls), "bare SDK")


# -- 2. start-up ------------------------------------------------------------------------------------------

# Peak RSS is the kernel's VmHWM of the child's own address space. Not ru_maxrss from wait4: on
# Linux a child's ru_maxrss starts at its parent's high-water mark (fork copies it and exec keeps
# it), so every child of this process, which has litellm loaded, would report ~250 MiB.
HWM = "int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024"


def hwm_mib(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def child(code: str, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """(wall seconds, what the child printed as JSON) for `python -c code`."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"python -c {code!r} failed:\n{proc.stderr}")
    return wall, json.loads(proc.stdout)


def child_load(spec: str, env: dict[str, str]) -> tuple[float, float, bool]:
    """(wall seconds, peak RSS MiB, litellm imported?) of a process that only loads the model."""
    code = ("import json, re, sys\n"
            "from harness.models.registry import load_model\n"
            f"load_model({spec!r})\n"
            f"print(json.dumps({{'rss': {HWM}, 'litellm': 'litellm' in sys.modules}}))")
    wall, out = child(code, env)
    return wall, out["rss"], bool(out["litellm"])


def child_floor(statement: str, env: dict[str, str]) -> tuple[float, float]:
    wall, out = child(f"import json, re\n{statement}\nprint(json.dumps({{'rss': {HWM}}}))", env)
    return wall, out["rss"]


def agent_start(colony: Colony, n: int, spec: str, env: dict[str, str], workspaces: Path,
                importtime: bool = False) -> tuple[float, float, str]:
    """(seconds from spawn to first heartbeat, peak RSS MiB by then, stderr) of one `agent run`."""
    agent = f"bench-{n}"
    beat = colony.home / "agents" / agent / "heartbeat.json"
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "harness", "agent", "run",
            "--id", agent, "--model", spec, "--repo", str(colony.repo), "--workspaces", str(workspaces)]
    err_path = workspaces / f"{agent}.err"
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        while not beat.exists():
            if proc.poll() is not None:
                raise SystemExit(f"agent {spec} exited early:\n{err_path.read_text()}")
            time.sleep(0.005)
        started = time.perf_counter() - t0
        rss = hwm_mib(proc.pid)
        proc.send_signal(signal.SIGTERM)  # the agent exits at its next nap tick
        if proc.wait(timeout=30) != 0:
            raise SystemExit(f"agent {spec} exited {proc.returncode}:\n{err_path.read_text()}")
    return started, rss, err_path.read_text()


def bench_startup(url: str, tmp: Path, repeats: int) -> None:
    script = tmp / "scripted.yaml"
    script.write_text(yaml.safe_dump([{"match": ".", "actions": [{"finish": "ok"}]}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    env.update(ANTHROPIC_API_KEY=KEY, OPENAI_API_KEY=KEY, ANTHROPIC_BASE_URL=url, OPENAI_BASE_URL=url + "/v1")
    specs = {"scripted": f"scripted:{script}", "anthropic": "anthropic/claude-bench",
             "openai": "openai/gpt-bench", "litellm": "litellm/openai/gpt-bench"}
    repo = tmp / "target"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q",
                    "--allow-empty", "-m", "init"], check=True)
    colony = Colony.init(repo)
    workspaces = tmp / "ws"
    workspaces.mkdir()

    floors = {"python -c pass": "pass", "import harness.cli": "import harness.cli"}
    print(f"\n2. start-up per provider (median of {repeats}; fresh process each)")
    print(f"  {'':<20}{'load_model s':>13}{'RSS MiB':>9}{'litellm':>9}   {'agent→beat s':>13}{'RSS MiB':>9}"
          f"{'litellm':>9}")
    for label, code in floors.items():
        runs = [child_floor(code, env) for _ in range(repeats)]
        print(f"  {label:<20}{statistics.median(r[0] for r in runs):13.2f}{statistics.median(r[1] for r in runs):9.1f}")
    n = 0
    base: dict[str, float] = {}
    for name, spec in specs.items():
        loads = [child_load(spec, env) for _ in range(repeats)]
        starts = []
        for _ in range(repeats):
            n += 1
            starts.append(agent_start(colony, n, spec, env, workspaces))
        n += 1
        _, _, trace = agent_start(colony, n, spec, env, workspaces, importtime=True)
        # `-X importtime` writes one "import time: self | cumulative | module" line per import.
        agent_litellm = re.search(r"\|\s*litellm\s*$", trace, re.M) is not None
        load_s, load_rss = statistics.median(r[0] for r in loads), statistics.median(r[1] for r in loads)
        agent_s, agent_rss = statistics.median(r[0] for r in starts), statistics.median(r[1] for r in starts)
        base.setdefault("s", agent_s)
        base.setdefault("rss", agent_rss)
        print(f"  {name:<20}{load_s:13.2f}{load_rss:9.1f}{'yes' if loads[0][2] else 'no':>9}   {agent_s:13.2f}"
              f"{agent_rss:9.1f}{'yes' if agent_litellm else 'no':>9}   ({agent_s / base['s']:.1f}x time, "
              f"{agent_rss / base['rss']:.1f}x RSS of scripted)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls and start-ups")
    args = parser.parse_args()
    calls, repeats = (50, 1) if args.quick else (200, 3)
    with tempfile.TemporaryDirectory(prefix="bench-models-") as d:
        tmp = Path(d)
        server, url = start_server(tmp)
        try:
            print(f"fake API server {url} (separate process); python {sys.version.split()[0]}, "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
            bench_calls(url, tmp, calls)
            bench_startup(url, tmp, repeats)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
