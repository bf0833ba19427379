"""The agent-CLI presets: the prompt exactly once and never as an argument, whatever its size; the
task CLI reachable by absolute path from a shell that reset PATH; a clear error when the colony
cannot be written. Stand-in CLIs (shell scripts named like the real ones) record what they got."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import sandbox
from harness.colony import Colony
from harness.command import PRESETS, CommandBackend

RECORDER = """#!/bin/bash
# Records its arguments (one per line, NUL-free) and its stdin, as the real CLI would receive them.
printf '%s\\n' "$@" > "$RECORD/argv"
cat > "$RECORD/stdin"
echo "read $(wc -c < "$RECORD/stdin") bytes"
"""

BIG = "Task big\n" + "".join(f"line {i}: the prompt is long, well over one argument's 128 KiB cap\n"
                              for i in range(4000))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_gets_a_long_prompt_exactly_once(preset: str, tmp_path: Path) -> None:
    assert len(BIG.encode()) > 200 * 1024
    bin_dir, record, run, wt = (tmp_path / d for d in ("bin", "record", "run", "wt"))
    for d in (bin_dir, record, run, wt):
        d.mkdir()
    exe = bin_dir / preset
    exe.write_text(RECORDER)
    exe.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record), "HOME": str(tmp_path)}
    outcome = CommandBackend(preset).run(BIG, wt, env, run, 0)
    assert outcome.finished, outcome.summary
    argv = (record / "argv").read_text()
    stdin = (record / "stdin").read_text()
    assert "line 1:" not in argv  # no argument carries the prompt (nor could: it is over the cap)
    given = stdin
    if "{prompt_file}" in PRESETS[preset]:
        assert stdin == ""  # read from the file, so stdin must not carry it a second time
        files = [Path(a) for a in argv.splitlines() if a.endswith(".md")]
        assert len(files) == 1
        given = files[0].read_text()
    assert given.startswith(BIG) and given.count("line 3999:") == 1
    assert "$STIGMERGY_BIN" in given  # the prompt names the task CLI's absolute path


def test_the_task_cli_survives_a_shell_that_resets_path(colony: Colony, tmp_path: Path) -> None:
    # What Codex's `bash -lc` does: the login profile resets PATH, dropping the harness's folder.
    line = ('export PATH=/usr/bin:/bin; if command -v stigmergy; then exit 9; fi; '
            '"$STIGMERGY_BIN" task add "Filed from a login shell" --id from-login')
    run = tmp_path / "run"
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the wrapper finds the package itself
    outcome = CommandBackend(line).run("the prompt", colony.repo, env, run, 0)
    assert outcome.finished, outcome.summary
    assert Colony.open(colony.repo).get("from-login")[1].title == "Filed from a login shell"


def test_a_read_only_colony_is_a_clear_error_not_a_traceback(colony: Colony) -> None:
    exe, why = sandbox.probe(os.environ.get("PATH"))
    if exe is None:
        pytest.skip(why)
    # Read-only as an agent CLI's own sandbox would make it (bwrap: root would ignore file modes).
    proc = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--chdir",
                           str(colony.repo), "--", sys.executable, "-m", "harness", "task", "add", "x", "--id", "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "must be writable" in proc.stderr and "Read-only file system" in proc.stderr
