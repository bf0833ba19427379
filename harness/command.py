"""The command backend: an external agent CLI (Claude Code, Codex, aider, Gemini CLI) does the work.

The CLI runs in the agent's worktree with the rendered prompt both in a file (`{prompt_file}` in
the command line) and on stdin, under a timeout that kills its whole process group, with the
environment passed through (it needs its own API key) plus STIGMERGY_AGENT/TASK/ROLE/REPO; the task
CLI and `stigmergy agent heartbeat` find the colony from inside the worktree (see git_toplevel).
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

PRESETS = {
    "claude": 'claude -p "$(cat {prompt_file})" --dangerously-skip-permissions',
    "codex": 'codex exec --full-auto "$(cat {prompt_file})"',
    "aider": "aider --yes-always --no-auto-commits --message-file {prompt_file}",
    "gemini": 'gemini --yolo -p "$(cat {prompt_file})"',
}


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
        prompt_file = run_dir / f"prompt-{round_}.md"
        prompt_file.write_text(prompt)
        line = self.template.replace("{prompt_file}", shlex.quote(str(prompt_file)))
        full_env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
        # stdin carries the prompt too, for CLIs that read it there (`claude -p` without an argument).
        before = worktree_state(worktree)
        stall = Stall(self.stall_seconds, lambda: worktree_state(worktree)) if self.stall_seconds > 0 else None
        text, timed_out = run_command(["bash", "-c", f"{line} < {shlex.quote(str(prompt_file))}"], worktree,
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
