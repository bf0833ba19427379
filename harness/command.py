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
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from harness.errors import UsageError
from harness.sandbox import PRESET_NEEDS, Sandbox
from harness.toolloop import Outcome
from harness.tools import run_command

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
    def __init__(self, command: str, timeout: float = 3600, output_limit: int = 20_000) -> None:
        template = PRESETS.get(command, command)
        if "{prompt_file}" not in template and not template.strip():
            raise UsageError("--agent-cmd is empty: give a command line or one of " + ", ".join(PRESETS))
        self.template, self.timeout, self.output_limit = template, timeout, output_limit
        self.preset = command if command in PRESETS else None

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
        text, timed_out = run_command(["bash", "-c", f"{line} < {shlex.quote(source)}"], worktree,
                                      full_env, self.timeout, self.output_limit, sandbox)
        (run_dir / f"agent-cli-{round_}.log").write_text(f"$ {line}\n{text}\n")
        ok = not timed_out and text.rstrip().endswith("[exit code 0]")
        tail = "\n".join(text.strip().splitlines()[-15:])
        return Outcome(finished=ok, summary=tail, stopped_by=None if ok else ("time" if timed_out else "error"))
