"""The command backend: an external agent CLI (Claude Code, Codex, aider, Gemini CLI) does the work.

The CLI runs in the agent's worktree with the rendered prompt given exactly once: in a file when
the command line names `{prompt_file}`, else on stdin (never as an argument: Linux caps one argument
near 128 KiB and a long prompt would fail with "Argument list too long"). It runs under a timeout
that kills its whole process group, with the environment passed through (it needs its own API key)
plus STIGMERGY_AGENT/TASK/ROLE/REPO and STIGMERGY_BIN, the task CLI's absolute path (a CLI that runs
its commands in a login shell, as Codex does, loses our PATH); the task CLI and `stigmergy agent
heartbeat` find the colony from inside the worktree (see git_toplevel).
Its output is saved in the run folder. Afterwards the harness commits whatever the CLI changed (or
takes what it committed), verifies and lands as usual.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from harness.errors import AgentCliNotRunnable, ModelError, ModelTransient, UsageError
from harness.sandbox import PRESET_NEEDS, Sandbox
from harness.toolloop import Outcome
from harness.tools import Stall, run_command

# Each preset reads the prompt the way its CLI reads it best, never from an argument. The CLIs' own
# sandboxes and approval prompts are off: there is no one to approve, and ours (bubblewrap, see
# sandbox.py) is the sandbox. Checked against Codex 0.171.0 and Claude Code 2.1.197 (tests/test_cli_presets.py).
PRESETS = {
    # `claude -p` without a prompt argument reads it from stdin.
    "claude": "claude -p --dangerously-skip-permissions",
    # `-` reads the prompt from stdin; `--full-auto` is gone (exit 2). allow_login_shell=false keeps
    # its commands out of `bash -l`, whose profile would reset PATH.
    "codex": "codex exec --dangerously-bypass-approvals-and-sandbox -c allow_login_shell=false -",
    "aider": "aider --yes-always --no-auto-commits --message-file {prompt_file}",
    # Headless when stdin is not a terminal, reading the prompt there (Gemini CLI 0.61.0); without
    # --skip-trust it drops --yolo back to asking for approval in a folder it was never told to trust.
    "gemini": "gemini --yolo --skip-trust",
}

WRAPPER = """#!/bin/sh
# The task CLI of the colony this agent works for, by absolute path: it survives a login shell.
exec {python} -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from harness.cli import main; sys.exit(main())' {root} "$@"
"""


def task_cli(folder: Path) -> Path:
    """An executable ``stigmergy`` in ``folder`` that runs this harness with this interpreter,
    whatever PATH or PYTHONPATH the CLI's shell ends up with."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stigmergy"
    root = Path(__file__).resolve().parent.parent  # the folder holding the harness package
    path.write_text(WRAPPER.format(python=shlex.quote(sys.executable), root=shlex.quote(str(root))))
    path.chmod(0o755)
    return path


TASK_CLI_NOTE = """

The task CLI is `stigmergy` on PATH; if your shell cannot find it, call it by its absolute path,
`$STIGMERGY_BIN` ({bin}).
"""


class CommandBackend:
    def __init__(self, command: str, timeout: float = 3600, output_limit: int = 20_000,
                 stall_seconds: float = 0) -> None:
        template = PRESETS.get(command, command)
        if "{prompt_file}" not in template and not template.strip():
            raise UsageError("--agent-cmd is empty: give a command line or one of " + ", ".join(PRESETS))
        self.template, self.timeout, self.output_limit = template, timeout, output_limit
        self.preset = command if command in PRESETS else None
        self.stall_seconds = stall_seconds  # 0: only the timeout ends a silent CLI

    def needs(self, extra_env: list[str]) -> tuple[list[str], set[str]]:
        """What this CLI needs inside a sandbox: folders to write (its config) and variables to see
        (its keys): the preset's, plus ``extra_env`` (config ``sandbox_cli_env``)."""
        dirs, keys = PRESET_NEEDS.get(self.preset or "", ((), ()))
        return list(dirs), {*keys, *extra_env}

    def program(self) -> list[str]:
        """The CLI's executable (and the folder a symlink to it points into), to be made visible
        read-only in a sandbox that hides home and /tmp, where such programs often live."""
        try:
            first = shlex.split(self.template)[0]
        except (ValueError, IndexError):
            return []
        found = shutil.which(first)
        return [] if found is None else [found, str(Path(found).resolve().parent)]

    def run(self, prompt: str, worktree: Path, env: Mapping[str, str], run_dir: Path, round_: int,
            sandbox: Sandbox | None = None) -> Outcome:
        bin_dir = run_dir / "bin"
        stigmergy = task_cli(bin_dir)
        prompt_file = run_dir / f"prompt-{round_}.md"
        prompt_file.write_text(prompt + TASK_CLI_NOTE.format(bin=stigmergy))
        line = self.template.replace("{prompt_file}", shlex.quote(str(prompt_file)))
        full_env = {**env, "STIGMERGY_BIN": str(stigmergy),
                    "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])}
        # Once: a line that names the file reads it there (stdin is empty), any other line gets it on stdin.
        source = os.devnull if "{prompt_file}" in self.template else str(prompt_file)
        before = worktree_state(worktree)
        stall = Stall(self.stall_seconds, lambda: worktree_state(worktree)) if self.stall_seconds > 0 else None
        text, timed_out = run_command(["bash", "-c", f"{line} < {shlex.quote(source)}"], worktree,
                                      full_env, self.timeout, self.output_limit, sandbox, stall)
        (run_dir / f"agent-cli-{round_}.log").write_text(f"$ {line}\n{text}\n")
        ok = not timed_out and text.rstrip().endswith("[exit code 0]")
        tail = "\n".join(text.strip().splitlines()[-15:])
        error = None if ok or timed_out else classify(exit_code(text), tail, worktree_state(worktree) != before,
                                                        line)
        stopped = "stall" if stall is not None and stall.stalled else "time" if timed_out else "error"
        return Outcome(finished=ok, summary=tail, stopped_by=None if ok else stopped, error=error)


# What a CLI prints when it is not logged in or its key is refused, and when it cannot reach its
# endpoint; matched only when it also failed without changing anything (its own words, not a test's).
# Narrow on purpose: a false match stops the whole colony, a missed one only costs attempts.
AUTH = re.compile(r"\b40[13]\b[^\n]*(unauthori[sz]ed|forbidden|auth|key)|unauthori[sz]ed|"
                  r"invalid[ _-]?(x-)?api[ _-]?key|invalid (api key|token)|authentication (failed|error|required)|"
                  r"not logged in|please (run )?/?login|(log|sign) ?in (first|again|required)|"
                  r"(invalid|missing|expired|no) credentials", re.I)
UNREACHABLE = re.compile(r"ECONNREFUSED|ENOTFOUND|connection (refused|reset|error)|could not resolve|"
                         r"network is unreachable|getaddrinfo|timed out connecting", re.I)


def exit_code(text: str) -> int | None:
    found = re.search(r"\[exit code (-?\d+)\]\s*$", text)
    return int(found.group(1)) if found else None


def classify(code: int | None, tail: str, changed: bool, line: str) -> ModelError | None:
    """A failed CLI run that is not the task's fault. The CLI cannot run at all (126/127), refused
    its arguments (2 with nothing changed) or is not logged in: a configuration fault that stops the
    colony. It cannot reach its endpoint: an outage (released uncounted). Else: the task's (None)."""
    said = f"its last lines:\n{tail}"
    if code in (126, 127):
        how = "not executable" if code == 126 else "command not found"
        return AgentCliNotRunnable(f"the agent CLI cannot run (exit {code}: {how}): "
                                   f"`{line}`; check --agent-cmd and that the CLI is installed and on PATH; {said}")
    if changed:
        return None
    if code == 2:
        return AgentCliNotRunnable(f"the agent CLI refused its arguments (exit 2, nothing changed): `{line}`; "
                                   f"fix --agent-cmd; {said}")
    if AUTH.search(tail):
        return AgentCliNotRunnable(f"the agent CLI is not logged in or its key is refused (exit {code}): log it in "
                                   f"(or set its API key) and relaunch; {said}")
    if UNREACHABLE.search(tail):
        return ModelTransient(f"the agent CLI cannot reach its endpoint (exit {code}); {said}")
    return None


def worktree_state(worktree: Path) -> str:
    """HEAD, every uncommitted change and the changed files' sizes and times: differs after a run
    that changed anything, and while a CLI keeps editing a file that was changed already."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=worktree, capture_output=True, text=True).stdout
    status = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=worktree,
                            capture_output=True, text=True).stdout
    stamps = []
    for entry in status.split("\0"):
        try:
            st = (worktree / entry[3:]).stat()
        except (OSError, ValueError):
            continue
        stamps.append(f"{st.st_size}:{st.st_mtime_ns}")
    return out + status + ",".join(stamps)
