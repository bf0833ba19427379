"""`task show ID` tells the task's history from the environment: claims, how each attempt ended,
its verify results, and the commit that landed it."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import cli
from harness.colony import Colony
from harness.tasks import Task

COMMIT = "1234567890abcdef1234567890abcdef12345678"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_history_of_claims_outcomes_verify_and_landing(colony: Colony) -> None:
    colony.add(Task(id="job", title="Do the job"))
    first = colony.claim("a1")
    assert first is not None
    (colony.store.run_dir("job", "001") / "verify.log").write_text(
        "$ pytest -q\nE   assert 1 == 2\n[verify failed: exit code 1]\n")
    colony.release("job", "a1", note="tried the quick fix\nmore detail", token=first[0].token, skip=False)
    second = colony.claim("a2", pid=dead_pid())  # a2 dies holding it: a3 reaps
    assert second is not None and second[0].generation == 2
    assert colony.reap("a3") == ["job"]
    third = colony.claim("a3")
    assert third is not None and third[0].generation == 4  # the reaper's break took generation 3
    (colony.store.run_dir("job", "004") / "verify.log").write_text(
        "$ pytest -q\nF\n[verify failed: exit code 1]\n$ pytest -q\n.\n1 passed\n")
    colony.done("job", "a3", third[0].token, commit=COMMIT)

    done = cli("task", "show", "job", "--json", "--repo", str(colony.repo))
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    history = shown["history"]
    assert [(a["generation"], a["agent"], a["outcome"]["event"]) for a in history["attempts"]] == [
        (1, "a1", "release"), (2, "a2", "reap"), (4, "a3", "done")]
    one, two, four = history["attempts"]
    assert one["outcome"]["note"].startswith("tried the quick fix")
    assert one["verify"]["passed"] is False and one["verify"]["failed_rounds"] == 1
    assert two["outcome"]["agent"] == "a3" and two["outcome"]["abandoned_by"] == "a2" and two["verify"] is None
    assert four["verify"]["passed"] is True and four["verify"]["failed_rounds"] == 1
    assert history["landed"] == {"commit": COMMIT} and shown["status"] == "done"

    text = cli("task", "show", "job", "--repo", str(colony.repo)).stdout
    lines = text[text.index("history:"):].splitlines()
    assert "filed by human" in lines[1]
    assert any("claim, generation 1, by a1" in ln for ln in lines)
    assert any("verify failed (1 round(s))" in ln for ln in lines)
    assert any("-> released: tried the quick fix" in ln for ln in lines)
    assert any("-> reaped by a3 (abandoned by a2)" in ln for ln in lines)
    assert any("verify passed after 1 failed round(s)" in ln for ln in lines)
    assert any(f"-> done, landed {COMMIT}" in ln for ln in lines)
    assert lines[-1] == f"landed: {COMMIT}"
    order = [next(i for i, ln in enumerate(lines) if f"generation {g}," in ln) for g in (1, 2, 4)]
    assert order == sorted(order)  # oldest first


def test_a_held_claim_and_a_failure_and_retry_show(colony: Colony) -> None:
    colony.add(Task(id="hard", title="Hard"))
    got = colony.claim("a1")
    assert got is not None
    colony.fail("hard", "a1", "cannot be done", token=got[0].token)
    colony.retry("hard", by="human")
    again = colony.claim("a2")
    assert again is not None
    text = cli("task", "show", "hard", "--repo", str(colony.repo)).stdout
    assert "-> failed: cannot be done" in text and "re-opened by human (task retry)" in text
    assert "-> still held (no outcome yet)" in text and "landed:" not in text


def test_history_never_shows_a_secret(colony: Colony) -> None:
    secret = "sk-test-abcdefghijklmnop1234"
    colony.add(Task(id="leak", title="Leak"))
    got = colony.claim("a1")
    assert got is not None
    colony.release("leak", "a1", note=f"the call failed with key {secret}", token=got[0].token)
    for args in ((), ("--json",)):
        done = cli("task", "show", "leak", *args, "--repo", str(colony.repo), env={"FAKE_API_KEY": secret})
        assert done.returncode == 0 and secret not in done.stdout and "[REDACTED]" in done.stdout
