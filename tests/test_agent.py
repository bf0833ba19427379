"""The agent loop as real processes on a real repository, with the scripted model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import advance_main, cli, file_on_main, landed_ids, set_config, wait_for
from harness.colony import Colony
from harness.tasks import Task

APP = "def greet(name):\n    return 'hello ' + name\n"


def write_script(path: Path, entries: list[dict]) -> str:
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return f"scripted:{path}"


def start_agent(colony: Colony, agent: str, model: str, tmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{agent}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "harness", "agent", "run", "--id", agent, "--model", model,
                             "--repo", str(colony.repo), "--workspaces", str(tmp / "ws"), *extra],
                            stdout=log, stderr=log)


RESOLVED = "def greet(name):\n    return 'Hello, ' + name.title() + '!'\n"


def race_to_conflict(colony: Colony, tmp_path: Path, resolver: dict, *punct_extra: dict) -> None:
    """Two agents edit the same line of app.py; the slower one's landing conflicts and `resolver`
    (a script entry for the conflict task) resolves it. Returns when both agents have exited."""
    advance_main(colony.repo, "app.py", APP)
    model = write_script(tmp_path / "script.yaml", [
        {"match": "^slow-title$", "actions": [
            {"replace": {"path": "app.py", "old": "'hello ' + name", "new": "'hello ' + name.title()"}},
            {"sleep": 3}, {"finish": "titled"}]},
        {"match": "^fast-punct$", "actions": [
            {"replace": {"path": "app.py", "old": "'hello ' + name", "new": "'Hello, ' + name + '!'"}},
            *punct_extra, {"finish": "punctuated"}]},
        {"match": "^conflict-", **resolver},
    ])
    colony.add(Task(id="slow-title", title="Title-case names", priority=85))  # a1 takes it first
    colony.add(Task(id="fast-punct", title="Punctuate greeting", priority=80))
    a = start_agent(colony, "a1", model, tmp_path, "--until-empty")
    wait_for(lambda: colony.get("slow-title")[0] == "active", what="first claim")
    b = start_agent(colony, "a2", model, tmp_path, "--until-empty")
    assert a.wait(timeout=120) == 0 and b.wait(timeout=120) == 0


def test_conflict_becomes_a_task_and_both_sides_land(colony: Colony, tmp_path: Path) -> None:
    race_to_conflict(colony, tmp_path, {"actions": [
        {"bash": "grep -c '<<<<<<<' app.py"}, {"write": {"path": "app.py", "content": RESOLVED}},
        {"finish": "kept both"}]})
    conflicts = [t for st, t in colony.listing("all") if t.kind == "merge_conflict"]
    assert len(conflicts) == 1 and conflicts[0].priority == 95
    c = conflicts[0]
    assert c.meta["paths"] == ["app.py"] and c.resolves in ("slow-title", "fast-punct")
    assert "name.title()" in c.body and "'!'" in c.body  # both sides' diffs are in the task
    assert colony.get(c.id)[0] == "done" and colony.get(c.resolves)[0] == "done"  # type: ignore[arg-type]
    ids = landed_ids(colony.repo)
    assert c.resolves == "slow-title"
    assert sorted(ids) == sorted([c.id, "fast-punct"])  # the original lands through its conflict task
    assert file_on_main(colony.repo, "app.py") == RESOLVED
    body = subprocess.run(["git", "log", "-1", "--format=%B", "main"], cwd=colony.repo, capture_output=True,
                          text=True).stdout
    assert f"Resolves: {c.resolves}" in body
    kept = subprocess.run(["git", "rev-parse", f"refs/stigmergy/conflicts/{c.resolves}"], cwd=colony.repo,
                          capture_output=True, text=True)
    assert kept.returncode == 0  # the conflicting work is still reachable


def test_sigkilled_agent_mid_task_is_reclaimed_and_lands_once(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, lease_ttl=2, heartbeat_interval=0.3)
    colony.add(Task(id="job", title="Write the result"))
    slow = write_script(tmp_path / "slow.yaml", [{"match": "job", "actions": [
        {"write": {"path": "result.txt", "content": "first\n"}}, {"sleep": 60}, {"finish": "never"}]}])
    fast = write_script(tmp_path / "fast.yaml", [{"match": "job", "actions": [
        {"write": {"path": "result.txt", "content": "second\n"}}, {"finish": "done"}]}])
    a = start_agent(colony, "a1", slow, tmp_path)
    wait_for(lambda: list((colony.home / "runs" / "job").glob("*/transcript.jsonl")), what="a1 working")
    time.sleep(0.5)
    a.send_signal(signal.SIGKILL)
    a.wait()
    b = start_agent(colony, "a2", fast, tmp_path, "--until-empty")
    assert b.wait(timeout=60) == 0
    assert landed_ids(colony.repo) == ["job"]
    assert file_on_main(colony.repo, "result.txt") == "second\n"
    assert any(e["event"] == "reap" and e.get("abandoned_by") == "a1" for e in colony.events())


def test_agent_paused_past_its_lease_cannot_land(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, lease_ttl=1.5, heartbeat_interval=0.2)
    colony.add(Task(id="job", title="Write the result"))
    slow = write_script(tmp_path / "slow.yaml", [{"match": "job", "actions": [
        {"write": {"path": "result.txt", "content": "stale\n"}}, {"sleep": 2}, {"finish": "late"}]}])
    fast = write_script(tmp_path / "fast.yaml", [{"match": "job", "actions": [
        {"write": {"path": "result.txt", "content": "fresh\n"}}, {"finish": "done"}]}])
    a = start_agent(colony, "a1", slow, tmp_path)
    wait_for(lambda: list((colony.home / "runs" / "job").glob("*/transcript.jsonl")), what="a1 working")
    a.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)  # past the lease: a1's heartbeat is silent though its pid lives
        b = start_agent(colony, "a2", fast, tmp_path, "--until-empty")
        assert b.wait(timeout=60) == 0
        assert landed_ids(colony.repo) == ["job"]
    finally:
        a.send_signal(signal.SIGCONT)
    wait_for(lambda: "fenced out of job" in (tmp_path / "a1.log").read_text() or "no longer mine" in (
        tmp_path / "a1.log").read_text(), timeout=30, what="a1 to wake and be fenced")
    colony.stop_path.write_text("")
    assert a.wait(timeout=30) == 0
    assert landed_ids(colony.repo) == ["job"]
    assert file_on_main(colony.repo, "result.txt") == "fresh\n"


def test_main_never_gets_a_tree_that_fails_verify(colony: Colony, tmp_path: Path) -> None:
    # verify fails when both a.txt and b.txt exist, or when any file says BAD
    verify = "! grep -rq BAD --exclude-dir=.git . && ! { test -f a.txt && test -f b.txt; }"
    colony = set_config(colony, verify=verify, verify_rounds=1, max_attempts=2, retry_backoff=0.5)
    model = write_script(tmp_path / "script.yaml", [
        {"match": "^bad$", "actions": [{"write": {"path": "bad.txt", "content": "BAD\n"}}, {"finish": "x"}],
         "on_verify_failure": [{"write": {"path": "bad.txt", "content": "still BAD\n"}}, {"finish": "y"}]},
        {"match": "^fixable$", "actions": [{"write": {"path": "f.txt", "content": "BAD\n"}}, {"finish": "x"}],
         "on_verify_failure": [{"write": {"path": "f.txt", "content": "good\n"}}, {"finish": "fixed"}]},
        {"match": "^add-a$", "actions": [{"write": {"path": "a.txt", "content": "a\n"}}, {"sleep": 2},
                                         {"finish": "a"}]},
        {"match": "^add-b$", "actions": [{"write": {"path": "b.txt", "content": "b\n"}}, {"finish": "b"}]},
    ])
    for tid in ("bad", "fixable", "add-a", "add-b"):
        colony.add(Task(id=tid, title=tid, priority=90 if tid.startswith("add") else 50))
    agents = [start_agent(colony, f"a{i}", model, tmp_path, "--until-empty") for i in range(2)]
    assert [p.wait(timeout=120) for p in agents] == [0, 0]
    ids = landed_ids(colony.repo)
    assert "bad" not in ids and "fixable" in ids
    assert len([i for i in ids if i in ("add-a", "add-b")]) == 1  # the second one's merge fails verify
    assert colony.get("bad")[0] == "failed"
    fences = dict(line.split() for line in subprocess.run(
        ["git", "for-each-ref", "--format=%(refname:lstrip=3) %(objectname)", "refs/stigmergy/claims/"],
        cwd=colony.repo, capture_output=True, text=True, check=True).stdout.splitlines())
    landed_as = dict(line.split()[::-1] for line in subprocess.run(
        ["git", "log", "--first-parent", "--format=%H %(trailers:key=Task-Id,valueonly)", "main"],
        cwd=colony.repo, capture_output=True, text=True, check=True).stdout.splitlines() if len(line.split()) == 2)
    assert "bad" not in fences  # a failed task's fence went with its claim
    assert {t: fences[t] for t in landed_as} == landed_as  # a landed one's names its commit
    notes = " ".join(n["text"] for n in colony.notes("bad"))
    assert "verify still failed" in notes and "BAD" in notes
    commits = subprocess.run(["git", "rev-list", "--first-parent", "main"], cwd=colony.repo, capture_output=True,
                             text=True, check=True).stdout.split()
    check = tmp_path / "check"
    for sha in commits:  # every commit on main's first-parent line passes verify
        subprocess.run(["rm", "-rf", str(check)], check=True)
        check.mkdir()
        subprocess.run(f"git archive {sha} | tar -x -C {check}", shell=True, cwd=colony.repo, check=True)
        assert subprocess.run(verify, shell=True, cwd=check).returncode == 0, sha


def test_discovered_tasks_and_notes_go_into_the_environment(colony: Colony, tmp_path: Path) -> None:
    model = write_script(tmp_path / "script.yaml", [
        {"match": "^parent$", "actions": [
            {"create_task": {"title": "Follow-up found", "priority": 70, "outputs": ["docs/"]}},
            {"note": "the parser is fragile"}, {"write": {"path": "p.txt", "content": "p\n"}}, {"finish": "ok"}]},
        {"match": "^follow-up-found-", "actions": [{"write": {"path": "docs.txt", "content": "d\n"}},
                                                   {"finish": "ok"}]},
        {"match": "^unscripted$", "actions": []},
    ])
    colony.add(Task(id="parent", title="Parent task"))
    colony.add(Task(id="nomatch", title="Nothing matches me", priority=10))
    set_config(colony, max_attempts=1)
    a = start_agent(colony, "a1", model, tmp_path, "--until-empty")
    assert a.wait(timeout=60) == 0
    follow = [t for _, t in colony.listing("all") if t.title == "Follow-up found"]
    assert len(follow) == 1
    f = follow[0]
    assert (f.created_by, f.discovered_from, f.priority) == ("a1", "parent", 70)
    assert sorted(landed_ids(colony.repo)) == sorted(["parent", f.id])
    assert [n["text"] for n in colony.notes("parent")] == ["the parser is fragile"]
    assert colony.get("nomatch")[0] == "failed"
    assert "NoScriptMatch" in json.dumps(colony.notes("nomatch"))
    snap = json.loads(cli("status", "--json", "--repo", str(colony.repo), check=True).stdout)
    assert (snap["tasks"]["done"], snap["tasks"]["failed"], snap["landed"]) == (2, 1, 2)
    assert snap["spend"]["calls"] >= 6 and snap["spend"]["input_tokens"] > 0  # the scripted model's usage
    assert snap["agents"][0]["agent"] == "a1" and snap["active"] == []
    report = json.loads(cli("report", "--json", "--repo", str(colony.repo), check=True).stdout)
    by_id = {t["id"]: t for t in report["tasks"]}
    assert by_id["parent"]["commit"] and by_id["parent"]["agents"] == ["a1"] and by_id["parent"]["calls"] == 4
    assert by_id["nomatch"]["status"] == "failed" and "NoScriptMatch" in by_id["nomatch"]["last_note"]
    assert set(report["cost_by_agent"]) == {"a1"} and report["tokens"]["input_tokens"] > 0


def test_attempt_limits_end_the_attempt_with_a_note(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, max_attempts=1)
    steps = [{"bash": f"echo step {i}"} for i in range(20)]
    model = write_script(tmp_path / "script.yaml", [{"match": "^long$", "actions": [*steps, {"finish": "x"}]}])
    colony.add(Task(id="long", title="A long task"))
    a = start_agent(colony, "a1", model, tmp_path, "--until-empty", "--max-tokens", "50")
    assert a.wait(timeout=60) == 0
    assert colony.get("long")[0] == "failed" and landed_ids(colony.repo) == []
    assert "hit the tokens limit" in colony.notes("long")[-1]["text"]
    calls = (colony.home / "ledger" / "a1.jsonl").read_text().splitlines()
    assert 1 <= len(calls) < 20  # stopped long before the script ran out


def test_sigterm_aborts_a_long_command_and_frees_the_task(colony: Colony, tmp_path: Path) -> None:
    model = write_script(tmp_path / "script.yaml", [{"match": "^long$", "actions": [
        {"bash": "sleep 120"}, {"write": {"path": "x.txt", "content": "x\n"}}, {"finish": "x"}]}])
    colony.add(Task(id="long", title="A task running a long command"))
    a = start_agent(colony, "a1", model, tmp_path)
    wait_for(lambda: list((colony.home / "runs" / "long").glob("*/transcript.jsonl")), what="a1 working")
    time.sleep(1)  # inside `sleep 120`
    started = time.monotonic()
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=30) == 0
    assert time.monotonic() - started < 15  # not the 120 s of the command, nor its 300 s timeout
    status, task = colony.get("long")
    assert (status, task.skip_count, task.not_before) == ("pending", 0, None) and colony.current_claim("long") is None
    assert landed_ids(colony.repo) == []


def test_conflict_markers_never_land_even_without_a_verify_command(colony: Colony, tmp_path: Path) -> None:
    """As seen: with no verify command (the default), a resolver that left the markers in landed them."""
    race_to_conflict(colony, tmp_path, {
        "actions": [{"finish": "looks fine to me"}],  # leaves the markers in
        "on_verify_failure": [{"write": {"path": "app.py", "content": RESOLVED}}, {"finish": "resolved"}]},
        {"write": {"path": "README.md", "content": "Title\n=======\n"}})  # a setext heading is no marker
    assert file_on_main(colony.repo, "app.py") == RESOLVED
    assert file_on_main(colony.repo, "README.md") == "Title\n=======\n"
    commits = subprocess.run(["git", "rev-list", "--first-parent", "main"], cwd=colony.repo, capture_output=True,
                             text=True).stdout.split()
    for commit in commits:  # no first-parent commit ever carried a marker
        grep = subprocess.run(["git", "grep", "-q", "-e", "^<<<<<<<", "-e", "^>>>>>>>", commit], cwd=colony.repo)
        assert grep.returncode == 1, commit
    transcripts = "".join(p.read_text() for p in (colony.home / "runs").glob("conflict-*/*/transcript.jsonl"))
    assert "merge-conflict markers" in transcripts and "app.py:" in transcripts  # the model was told where


def test_a_repeatable_failure_backs_off_and_leaves_short_notes(colony: Colony, tmp_path: Path) -> None:
    """As seen: an error that repeats spent every attempt in under a second, and its raw text, as
    each note, went into every later prompt. Now each retry waits longer, another task goes first
    meanwhile, and the notes (and the prompt's notes section) stay short."""
    colony = set_config(colony, max_attempts=3, verify_rounds=0, retry_backoff=1, retry_backoff_max=10,
                        prompt_notes_chars=900)
    model = write_script(tmp_path / "script.yaml", [
        {"match": "^broken$", "actions": [{"write": {"path": "b.txt", "content": "b\n"}}, {"finish": "b"}]},
        {"match": "^other$", "actions": [{"write": {"path": "o.txt", "content": "o\n"}}, {"finish": "o"}]},
    ])
    # Its own verify always fails, with a long log: the task's fault, every time.
    colony.add(Task(id="broken", title="broken", priority=60, verify="seq 1 2000 | sed 's/$/: a long line of log, as test runners print them/'; exit 1"))
    colony.add(Task(id="other", title="other", priority=50))
    a = start_agent(colony, "a1", model, tmp_path, "--until-empty")
    assert a.wait(timeout=60) == 0
    claims = [(e["task"], e["ts"]) for e in colony.events() if e["event"] == "claim"]
    # The skip bonus (60 + 5) would put broken ahead of other: the back-off lets other go first.
    assert [t for t, _ in claims] == ["broken", "other", "broken", "broken"]
    at = [ts for t, ts in claims if t == "broken"]
    assert at[1] - at[0] >= 1 and at[2] - at[1] >= 2  # 1 s, then 2 s: it grows with the skip count
    releases = [e for e in colony.events() if e["event"] == "release" and e["task"] == "broken"]
    assert [round(e["not_before"] - e["ts"]) for e in releases] == [1, 2]
    assert colony.get("broken")[0] == "failed" and landed_ids(colony.repo) == ["other"]
    notes = colony.notes("broken")
    assert len(notes) == 3 and all(len(n["text"]) <= 800 for n in notes), [len(n["text"]) for n in notes]
    assert "verify still failed" in notes[0]["text"] and "2000: a long line" in notes[0]["text"]
    # The whole text is in the attempt's run folder, and the note says where.
    whole = colony.home / "runs" / "broken" / "001" / "release.log"
    assert "1970: a long line" in whole.read_text() and "runs/broken/001/release.log" in notes[0]["text"]
    # The third attempt's prompt carried the newest notes within the budget, and said what it left out.
    prompt = next(json.loads(line)["text"] for line in (colony.home / "runs/broken/003/transcript.jsonl")
                  .read_text().splitlines() if json.loads(line)["kind"] == "user")
    section = prompt.split("Notes from earlier attempts")[1].split("Recent commits on main")[0]
    assert len(section) < 900 + 200 and "1 earlier note left out" in section, section
