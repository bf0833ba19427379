"""The verify gate: the repo-wide command plus the task's own, run in the agent's worktree.

The whole output goes to the attempt's verify.log; the model gets a short excerpt with the
error-looking lines first (what to fix) and then the end of the output (where it stopped).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from harness.git import Git
from harness.integrate import Verdict
from harness.sandbox import Sandbox
from harness.tools import ERRORISH, execute

# git's conflict markers, as added lines of a unified diff. A lone "=======" is also a setext
# heading underline, so a file counts only when it gains an opening or closing marker too.
_MARKER = re.compile(r"\+(<{7}|\|{7}|>{7})(?: |$)|\+(={7})$")


def excerpt(output: str, limit: int = 3000) -> str:
    lines = output.splitlines()
    tail = lines[-40:]
    errors = [ln for ln in lines[:-40] if ERRORISH.search(ln)][:30]
    text = "\n".join([*errors, *(["..."] if errors else []), *tail])
    return text if len(text) <= limit else text[: limit // 3] + "\n...\n" + text[-2 * limit // 3:]


def conflict_markers(worktree: Path, base: str) -> list[str]:
    """``path:line`` of every merge-conflict marker that HEAD adds since its merge base with ``base``."""
    diff = Git(worktree).run("diff", "-U0", "--no-color", "--no-ext-diff", "--no-renames", f"{base}...HEAD")
    found: dict[str, list[str]] = {}
    path, line, opened = "", 0, set()
    for text in diff.splitlines():
        if text.startswith("+++ "):
            path = text[6:] if text.startswith("+++ b/") else text[4:]
        elif text.startswith("@@"):
            line = int(text.split("+", 1)[1].split(",", 1)[0].split(" ", 1)[0])
        elif text.startswith("+"):
            match = _MARKER.match(text)
            if match:
                found.setdefault(path, []).append(f"{path}:{line}")
                opened.update([path] if match.group(1) and match.group(1)[0] in "<>" else [])
            line += 1
    return [spot for p in found if p in opened for spot in found[p]]


# A shell's "could not execute" (126) and "command not found" (127): the command itself is
# broken, whatever the tree; on unmodified main that is a configuration fault (see gate.py).
NOT_RUNNABLE = frozenset({126, 127})


def run_verify(commands: list[str], cwd: Path, env: Mapping[str, str], timeout: float, log: Path,
               base: str | None = None, sandbox: Sandbox | None = None) -> Verdict:
    """Refuse conflict markers the work adds since ``base`` (whatever the verify setting), then
    run each command in turn (a shell line each); the first failure decides."""
    markers = conflict_markers(cwd, base) if base else []
    if markers:
        shown = ", ".join(markers[:20]) + (" ..." if len(markers) > 20 else "")
        return Verdict(False, f"the change adds merge-conflict markers (<<<<<<<, =======, >>>>>>>) at {shown}: "
                              "resolve each conflict, keeping what both sides meant, and remove the markers")
    return run_checked(commands, cwd, env, timeout, log, sandbox)[0]


def run_checked(commands: list[str], cwd: Path, env: Mapping[str, str], timeout: float,
                log: Path, sandbox: Sandbox | None = None) -> tuple[Verdict, int | None]:
    """``run_verify`` and the deciding exit code: 0 when all passed, None on a timeout. Each
    command runs like a bash call of the model (``tools.execute``: same sandbox, same killing)."""
    with open(log, "ab") as out:
        for cmd in commands:
            out.write(f"$ {cmd}\n".encode())
            out.flush()
            start = out.tell()
            code, _ = execute(["/bin/sh", "-c", cmd], cwd, env, timeout, out, sandbox)
            out.flush()
            if code != 0:
                with open(log, "rb") as f:
                    f.seek(start)
                    text = f.read().decode(errors="replace")
                why = f"timed out after {timeout:g}s" if code is None else f"exit code {code}"
                out.write(f"[verify failed: {why}]\n".encode())
                return Verdict(False, f"`{cmd}` failed ({why}):\n{excerpt(text)}"), code
    return Verdict(True), 0
