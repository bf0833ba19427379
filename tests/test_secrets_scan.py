"""The secrets scan at the end of `report`: real colony folders and real commits in tmp_path,
the CLI as a subprocess with the key in its environment."""

from __future__ import annotations

import base64
import json
import random
import string
import time
import urllib.parse
from pathlib import Path

from harness import secrets_scan
from harness.colony import Colony
from harness.git import Git
from harness.tasks import Task
from tests.conftest import USER, cli

# Built at random each run, so no fixed string in this file can make a test pass by accident.
_RNG = random.Random()
KEY = "sk-ant-api03-" + "".join(_RNG.choice(string.ascii_letters + string.digits) for _ in range(64))
NAME = "ANTHROPIC_API_KEY"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def commit(repo: Path, path: str, text: str, message: str) -> str:
    (repo / path).write_text(text)
    git = Git(repo)
    git.run("add", path)
    git.run("commit", "-qm", message, env=USER.env())
    return git.run("rev-parse", "HEAD").strip()


def every_form(value: str) -> list[str]:
    """What must never be printed: the key and the forms the scan looks for."""
    return [value, b64(value.encode()).rstrip("="), value.encode().hex(), b64(f"{NAME}={value}".encode())[:40]]


def plant(colony: Colony) -> str:
    """A colony that leaked KEY four ways; returns the landed commit's sha."""
    run = colony.home / "runs" / "leaky" / "1"
    run.mkdir(parents=True)
    lines = [json.dumps({"step": i, "text": "ran the tests"}) for i in range(5)]
    lines[2] = json.dumps({"step": 2, "tool_result": f"env: {NAME}={KEY} HOME=/root"})  # raw, line 3
    (run / "transcript.jsonl").write_text("\n".join(lines) + "\n")
    colony.add(Task(id="leaky", title="A task that leaked"))  # pending, so its last note is in the report
    # base64 inside a longer line, at an alignment that is not the start of a base64 group
    colony.add_note("leaky", "coder-01", "config dump: " + b64(b"{\"k\": \"" + KEY.encode() + b"\"}"))
    log = colony.home / "agents" / "coder-01" / "agent.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("agent coder-01 started\nrequest header dump 0x" + KEY.encode().hex() + "\nexit 0\n")  # hex, line 2
    # The user's own commit holds the key too: it is not the run's, and is not listed.
    commit(colony.repo, "user.txt", f"{KEY}\n", "the user's commit")
    return commit(colony.repo, "deploy.yaml", "env:\n  blob: xx" + b64(f"{NAME}={KEY}".encode()) + "\n",
                  "Deploy config\n\nTask-Id: leaky\nAgent: coder-01\n")


def test_report_lists_every_planted_secret_with_its_place_and_never_prints_it(colony: Colony) -> None:
    sha = plant(colony)
    env = {NAME: KEY, "SHORT_TOKEN": "abc"}  # too short to be looked for
    proc = cli("report", "--json", "--repo", str(colony.repo), env=env)
    assert proc.returncode == 0  # an account, not a check
    scan = json.loads(proc.stdout)["secrets_scan"]
    found = {(h["where"], h["line"], h["variable"], h["encoding"]) for h in scan["hits"]}
    assert found == {
        ("runs/leaky/1/transcript.jsonl", 3, NAME, "raw"),
        ("notes/leaky.jsonl", 1, NAME, "base64"),
        ("agents/coder-01/agent.log", 2, NAME, "hex"),
        (f"commit {sha[:10]} (leaky) deploy.yaml", 2, NAME, f"base64 of {NAME}=…"),
    }
    assert scan["variables"] == [NAME] and scan["commits"] == 1
    assert all(h["masked"].endswith(" chars)") and len(h["masked"].split("…")[0]) == 4 for h in scan["hits"])
    assert "found 4 secret(s)" in proc.stderr  # said loudly even when stdout goes to a program

    text = cli("report", "--repo", str(colony.repo), env=env)
    assert text.returncode == 0
    assert "!!! SECRETS SCAN: 4 SECRETS FOUND" in text.stdout
    assert "runs/leaky/1/transcript.jsonl:3  ANTHROPIC_API_KEY, raw  sk-a…" in text.stdout
    # Too long for 80 columns: the place on its line, never cut; what was found below it.
    assert (f"\n  commit {sha[:10]} (leaky) deploy.yaml:2\n      ANTHROPIC_API_KEY, base64 of ANTHROPIC_API_KEY=…"
            in text.stdout)
    assert max(len(line) for line in text.stdout.splitlines()) <= 80
    assert "[REDACTED]" in text.stdout  # the pending task's last note, whose base64 was cut out
    for out in (proc.stdout, proc.stderr, text.stdout, text.stderr):
        for form in every_form(KEY):
            assert form not in out


def test_a_clean_colony_says_no_secret_found(colony: Colony) -> None:
    (colony.home / "runs" / "t" / "1").mkdir(parents=True)
    (colony.home / "runs" / "t" / "1" / "transcript.jsonl").write_text('{"text": "task-implement-the-parser"}\n')
    commit(colony.repo, "a.txt", "hello\n", "Add a\n\nTask-Id: t\nAgent: coder-01\n")
    proc = cli("report", "--repo", str(colony.repo), env={NAME: KEY})
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.strip().splitlines()
    at = max(i for i, line in enumerate(lines) if line.startswith("secrets scan: "))
    last = " ".join(line.strip() for line in lines[at:])  # the last paragraph, wrapped to 80 columns
    assert max(len(line) for line in lines) <= 80
    assert last.startswith("secrets scan: ") and last.split(": ", 1)[1].split(" (")[0] == (
        f"{sum(1 for p in colony.home.rglob('*') if p.is_file())} artefacts, 1 commits checked, no secret found")
    assert f"looked for {NAME} and known key shapes" in last


def test_key_shapes_are_flagged_without_their_variable(colony: Colony) -> None:
    openai = "sk-proj-" + "".join(_RNG.choice(string.ascii_letters + string.digits) for _ in range(48))
    log = colony.home / "launcher.log"
    log.write_text(f"started\nbad: {KEY}\nalso {openai}\n"
                   "task-abcdefghijklmnopqrstuvwxyzABCDEFGH0123 and sk-implement-the-json-parser-for-files-now\n")
    scan = secrets_scan.scan(colony, {})
    assert [(h.where, h.line, h.variable, h.encoding) for h in scan.hits] == [
        ("launcher.log", 2, None, "looks like a key (Anthropic API key)"),
        ("launcher.log", 3, None, "looks like a key (OpenAI-style key)"),
    ]  # neither `task-…` (sk- inside a word) nor a slug (no digits or capitals) is a key
    assert "known key shapes only" in secrets_scan.render(scan.as_dict())
    # With the variable set, the same place is the variable's hit, not a second one.
    named = secrets_scan.scan(colony, {NAME: KEY})
    assert [(h.line, h.variable, h.encoding) for h in named.hits] == [
        (2, NAME, "raw"), (3, None, "looks like a key (OpenAI-style key)")]


def test_base64_cores_find_the_secret_at_any_alignment_padded_or_not() -> None:
    secret = KEY.encode()
    for name, encode in (("std", base64.b64encode), ("url", base64.urlsafe_b64encode)):
        needles = [f.needle for f in secrets_scan.forms({NAME: KEY}) if f.encoding.startswith("base64")]
        for before in range(7):
            for after in range(4):
                blob = encode(bytes(range(before)) + secret + b"\xff" * after)
                for text in (blob, blob.rstrip(b"=")):
                    assert any(n in text for n in needles), (name, before, after)
    # ...and nothing that merely looks similar: another key of the same shape is not found.
    other = encode(("sk-ant-api03-" + "x" * 64).encode())
    assert not any(n in other for n in needles)


def test_url_encoded_and_reversed_forms_and_two_variables_sharing_a_value(colony: Colony) -> None:
    value = "p@ss/w0rd+" + KEY[-12:]
    (colony.home / "events.jsonl").write_text(
        json.dumps({"url": "https://x/?k=" + urllib.parse.quote(value, safe="")}) + "\n" + value[::-1] + "\n")
    scan = secrets_scan.scan(colony, {"DB_PASSWORD": value, "OTHER_SECRET": value})
    assert [(h.line, h.variable, h.encoding) for h in scan.hits] == [
        (1, "DB_PASSWORD, OTHER_SECRET", "url-encoded"), (2, "DB_PASSWORD, OTHER_SECRET", "reversed")]


def test_agents_worktrees_are_not_artefacts(colony: Colony) -> None:
    tree = colony.home / "workspaces" / "coder-01"
    tree.mkdir(parents=True)
    (tree / ".git").write_text("gitdir: elsewhere\n")
    (tree / "secret.txt").write_text(KEY)
    other = colony.home / "elsewhere" / "wt"
    other.mkdir(parents=True)
    (other / ".git").mkdir()
    (other / "k").write_text(KEY)
    (colony.home / "FAULT").write_text(json.dumps({"message": f"401 for key {KEY}"}))
    scan = secrets_scan.scan(colony, {NAME: KEY})
    assert [h.where for h in scan.hits] == ["FAULT"]


def test_scan_speed_on_thousands_of_transcript_lines(colony: Colony) -> None:
    run = colony.home / "runs" / "big" / "1"
    run.mkdir(parents=True)
    line = json.dumps({"role": "tool", "content": "collected 12 items; tests/test_x.py ........ " * 6}) + "\n"
    with open(run / "transcript.jsonl", "w") as f:
        for i in range(20_000):
            f.write(line if i != 12_345 else json.dumps({"leak": KEY}) + "\n")
    secrets = {NAME: KEY, "GITHUB_TOKEN": "ghp_" + "a1B" * 12, "AWS_SECRET_ACCESS_KEY": "Zx9" * 13}
    began = time.monotonic()
    scan = secrets_scan.scan(colony, secrets)
    seconds = time.monotonic() - began
    mb = scan.bytes / 1e6
    print(f"scanned {mb:.1f} MB in {seconds:.3f} s: {seconds / mb * 1000:.1f} ms per MB")
    assert mb > 5 and [(h.where, h.line) for h in scan.hits] == [("runs/big/1/transcript.jsonl", 12_346)]
    assert seconds / mb < 0.25  # well under a second per MB, with room for a busy machine
