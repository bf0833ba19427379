"""The verify gate: the repo-wide command plus the task's own, run in the agent's worktree.

The whole output goes to the attempt's verify.log; the model gets a short excerpt with the
error-looking lines first (what to fix) and then the end of the output (where it stopped).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Mapping

from harness.integrate import Verdict

ERRORISH = re.compile(r"(?i:error|exception)|Traceback|FAILED|FAIL:|assert|panicked")


def excerpt(output: str, limit: int = 3000) -> str:
    lines = output.splitlines()
    tail = lines[-40:]
    errors = [ln for ln in lines[:-40] if ERRORISH.search(ln)][:30]
    text = "\n".join([*errors, *(["..."] if errors else []), *tail])
    return text if len(text) <= limit else text[: limit // 3] + "\n...\n" + text[-2 * limit // 3:]


# A shell's "could not execute" (126) and "command not found" (127): the command itself is
# broken, whatever the tree; on unmodified main that is a configuration fault (see gate.py).
NOT_RUNNABLE = frozenset({126, 127})


def run_verify(commands: list[str], cwd: Path, env: Mapping[str, str], timeout: float, log: Path) -> Verdict:
    """Run each command in turn (a shell line each); the first failure decides."""
    return run_checked(commands, cwd, env, timeout, log)[0]


def run_checked(commands: list[str], cwd: Path, env: Mapping[str, str], timeout: float,
                log: Path) -> tuple[Verdict, int | None]:
    """``run_verify`` and the deciding exit code: 0 when all passed, None on a timeout."""
    with open(log, "ab") as out:
        for cmd in commands:
            out.write(f"$ {cmd}\n".encode())
            out.flush()
            start = out.tell()
            try:
                proc = subprocess.Popen(cmd, shell=True, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                code = None
            out.flush()
            if code != 0:
                with open(log, "rb") as f:
                    f.seek(start)
                    text = f.read().decode(errors="replace")
                why = f"timed out after {timeout:g}s" if code is None else f"exit code {code}"
                out.write(f"[verify failed: {why}]\n".encode())
                return Verdict(False, f"`{cmd}` failed ({why}):\n{excerpt(text)}"), code
    return Verdict(True), 0
