"""The model's commands in bubblewrap: real bwrap, real agents and launchers, the scripted model.

Every destructive command here first checks that it runs inside our sandbox (pid 1 is bwrap)
and writes evidence that it ran; outside a sandbox it does nothing, so a broken sandbox fails
the test instead of harming the machine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import cli, file_on_main, landed_ids, set_config, wait_for
from harness.colony import Colony
from harness.sandbox import Sandbox, probe
from harness.tasks import Task
from harness.verify import run_checked

BWRAP, WHY = probe(os.environ.get("PATH"))
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason=f"bubblewrap unavailable: {WHY}")

FAKE_KEY = "sk-ant-api03-FAKEKEY-5b1f0c9e2d7a4e8f"
SSH_MARK = "FAKE-SSH-PRIVATE-KEY-7d3c1e9a"
UP_MARK = "OUTSIDE-THE-WORKTREE-4f2a8b6c"
# Run only inside our sandbox; the evidence file says it did.
IN_BWRAP = '[ "$(cat /proc/1/comm)" = bwrap ] || { echo "not sandboxed: refusing"; exit 99; }'
LEAK = ("for p in $(ps -eo pid=); do tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -a ANTHROPIC_; "
        "done | base64 -w0 > leak.b64")


def script(path: Path, entries: list[dict]) -> str:
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return f"scripted:{path}"


def agent_run(colony: Colony, tmp: Path, agent: str, model: str, *extra: str,
              env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return cli("agent", "run", "--id", agent, "--model", model, "--repo", str(colony.repo),
               "--workspaces", str(tmp / "ws"), "--until-empty", *extra, env=env, timeout=timeout)


def forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), raw.hex().upper().encode(),
            " ".join(f"{b:02x}" for b in raw).encode()]


def everything_written(colony: Colony, tmp: Path) -> dict[str, bytes]:
    """Every byte the colony could have kept: main's history (every blob), .stigmergy/ (transcripts,
    notes, logs, events) and the agents' logs; each landed *.b64 file decoded too."""
    found: dict[str, bytes] = {}
    repo = colony.repo
    found["git log -p main"] = subprocess.run(["git", "log", "-p", "--all", "--binary", "main"], cwd=repo,
                                              capture_output=True).stdout
    for name in subprocess.run(["git", "ls-tree", "-r", "--name-only", "main"], cwd=repo, capture_output=True,
                               text=True).stdout.split():
        data = subprocess.run(["git", "show", f"main:{name}"], cwd=repo, capture_output=True).stdout
        found[f"main:{name}"] = data
        if name.endswith(".b64"):
            found[f"main:{name} decoded"] = base64.b64decode(data.strip() or b"", validate=False)
    for path in [*colony.home.rglob("*"), *tmp.glob("*.log")]:
        if path.is_file():
            found[str(path)] = path.read_bytes()
    return found


def leaks(found: dict[str, bytes], secrets: list[str]) -> list[str]:
    return [f"{secret} in {where}" for secret in secrets for where, data in found.items()
            for form in forms(secret) if form in data]


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, str]:
    """A fake HOME with a fake ssh key, a secret file at ../../ of the worktrees, the fake API key."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SSH_MARK}\n")
    (tmp_path / "outside.txt").write_text(UP_MARK + "\n")  # ws/<agent>/../../outside.txt
    return {"HOME": str(home), "ANTHROPIC_API_KEY": FAKE_KEY}


READS = [
    {"bash": "cat $HOME/.ssh/id_rsa > ssh.txt; base64 -w0 $HOME/.ssh/id_rsa > ssh.b64; ls -la ~ > home-ls.txt"},
    {"bash": "cat ../../outside.txt > up.txt; od -An -tx1 ../../outside.txt > up.hex; ls -la ../../ > up-ls.txt"},
    {"bash": "echo looked > looked.txt"},
    {"finish": "looked around"},
]


@needs_bwrap
def test_the_environ_leak_the_ssh_key_and_files_outside_reach_nothing(colony: Colony, tmp_path: Path,
                                                                     planted: dict[str, str]) -> None:
    colony.add(Task(id="peek", title="Look around"))
    model = script(tmp_path / "s.yaml", [{"match": "peek", "actions": [
        {"bash": f"{IN_BWRAP}; {LEAK}; ps -e > ps.txt"}, *READS]}])
    proc = agent_run(colony, tmp_path, "a1", model, "--sandbox", "bwrap", env=planted)
    (tmp_path / "agent-stderr.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert landed_ids(colony.repo) == ["peek"]
    assert file_on_main(colony.repo, "looked.txt") == "looked\n"
    # The sandbox had a process table of its own: a handful of its own processes, no agent.
    ps = file_on_main(colony.repo, "ps.txt")
    assert 2 <= len(ps.splitlines()) <= 6 and "python" not in ps, ps
    found = everything_written(colony, tmp_path)
    assert "main:leak.b64" in found and "main:up-ls.txt" in found
    assert leaks(found, [FAKE_KEY, SSH_MARK, UP_MARK]) == []
    assert "outside.txt" not in file_on_main(colony.repo, "up-ls.txt")


def test_unsandboxed_the_same_reads_do_reach_main(colony: Colony, tmp_path: Path, planted: dict[str, str]) -> None:
    """The control for the test above (and `--sandbox none` keeping today's behaviour): without the
    sandbox the planted files land, so the search above could have found them. No environ scan here:
    unsandboxed it would read every process on the machine."""
    colony.add(Task(id="peek", title="Look around"))
    model = script(tmp_path / "s.yaml", [{"match": "peek", "actions": [
        {"bash": "cat /proc/1/comm > pid1.txt; echo $$ > mypid.txt"}, *READS]}])
    proc = agent_run(colony, tmp_path, "a1", model, "--sandbox", "none", env=planted)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower()
    assert file_on_main(colony.repo, "pid1.txt").strip() != "bwrap"
    assert file_on_main(colony.repo, "up.txt") == UP_MARK + "\n"
    found = everything_written(colony, tmp_path)
    assert any(SSH_MARK in w for w in leaks(found, [SSH_MARK])) and leaks(found, [UP_MARK])


ATTACKS = {
    "kill-all": f"{IN_BWRAP}; echo ran > kill-all.ran; kill -9 -1; sleep 0.5; echo survived",
    "pkill": f"{IN_BWRAP}; echo ran > pkill.ran; pkill -9 -f harness; pkill -9 python; sleep 0.5; echo survived",
    "rm-other": (f"{IN_BWRAP}; echo ran > rm-other.ran; ls .. > siblings.txt; "
                 "for d in ../*; do [ \"$d\" = \"../$STIGMERGY_AGENT\" ] || rm -rf \"$d\"; done; "
                 "rm -rf \"$STIGMERGY_REPO\"/.git/refs \"$STIGMERGY_REPO\"/.stigmergy ~/*; echo rm=$?"),
}


@needs_bwrap
def test_kill_pkill_and_rm_from_tool_calls_harm_no_other_agent(colony: Colony, tmp_path: Path) -> None:
    entries = [{"match": f"^{tid}$", "actions": [{"bash": "sleep 1"}, {"bash": cmd}, {"bash": "sleep 1"},
                                                 {"bash": f"echo {tid} > {tid}.done"}, {"finish": tid}]}
               for tid, cmd in ATTACKS.items()]
    entries += [{"match": f"^work-{i}$", "actions": [{"bash": "sleep 2"}, {"bash": f"echo {i} > work-{i}.txt"},
                                                     {"finish": "worked"}]} for i in range(3)]
    colony.add_many([Task(id=tid, title=f"attack {tid}") for tid in ATTACKS]
                    + [Task(id=f"work-{i}", title=f"work {i}") for i in range(3)])
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep me\n")
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--agents", "3", "--repo", str(colony.repo),
                             "--model", script(tmp_path / "s.yaml", entries), "--workspaces", str(tmp_path / "ws"),
                             "--until-empty", "--sandbox", "bwrap"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "HOME": str(tmp_path / "home")})
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert sorted(landed_ids(colony.repo)) == sorted([*ATTACKS, "work-0", "work-1", "work-2"]), out
    for tid in ATTACKS:  # each attack really ran, inside the sandbox, and its task landed harmlessly
        assert file_on_main(colony.repo, f"{tid}.ran") == "ran\n"
    events = [json.loads(line) for line in colony.store.events_path.read_text().splitlines()]
    assert not [e for e in events if e.get("event") == "agent_restart"], "an agent was killed and restarted"
    exits = [e for e in events if e.get("event") == "agent_exit" and e.get("by") == "launcher"]
    assert len(exits) == 3 and all(e["code"] == 0 for e in exits), exits
    for agent in ("coder-01", "coder-02", "coder-03"):
        assert (tmp_path / "ws" / agent / ".git").is_file(), f"{agent}'s worktree is gone"
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep me\n"
    assert subprocess.run(["git", "fsck", "--no-dangling"], cwd=colony.repo, capture_output=True).returncode == 0
    assert file_on_main(colony.repo, "siblings.txt").split() in ([], ["coder-01"], ["coder-02"], ["coder-03"])


PIP_CACHE = "pip-cache"
TARGET = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}


@needs_bwrap
def test_verify_and_a_normal_task_pass_inside_the_sandbox(tmp_path: Path) -> None:
    from conftest import make_repo
    repo = make_repo(tmp_path / "target", TARGET)
    home = tmp_path / "home"
    colony = set_config(Colony.init(repo), verify=f"{sys.executable} -m pytest -q -p no:cacheprovider",
                        sandbox="bwrap", sandbox_write=[f"~/.cache/{PIP_CACHE}"])
    colony.add(Task(id="mul", title="Add mul", verify=f"{sys.executable} -m pytest -q -p no:cacheprovider -k mul"))
    model = script(tmp_path / "s.yaml", [{"match": "mul", "actions": [
        {"replace": {"path": "calc.py", "old": "    return a + b\n", "new": "    return a + b\n\n\ndef mul(a, b):\n"
                                                                            "    return a * b\n"}},
        {"write": {"path": "test_mul.py", "content": "from calc import mul\n\n\ndef test_mul():\n"
                                                        "    assert mul(2, 3) == 6\n"}},
        {"bash": f"{IN_BWRAP}; git status --short > status.txt; git diff --stat >> status.txt; "
                 f"git log --oneline -1 >> status.txt; echo cached > ~/.cache/{PIP_CACHE}/wheel.txt; "
                 "echo tmp > /tmp/scratch && cat /tmp/scratch >> status.txt"},
        {"finish": "mul"}]}])
    proc = agent_run(colony, tmp_path, "a1", model, env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    assert landed_ids(repo) == ["mul"], proc.stderr
    status = file_on_main(repo, "status.txt")
    assert "calc.py" in status and "init" in status and "tmp" in status, status
    assert (home / ".cache" / PIP_CACHE / "wheel.txt").read_text() == "cached\n"  # the declared cache is writable
    logs = "".join(p.read_text() for p in (colony.home / "runs" / "mul").glob("*/verify.log"))
    assert "2 passed" in logs and "1 passed" in logs, logs
    main_logs = "".join(p.read_text() for p in (colony.home / "verdicts").glob("*.log"))
    assert "1 passed" in main_logs  # main's own check (gatekeep) ran in the sandbox too


@needs_bwrap
def test_a_verify_timeout_kills_everything_in_the_sandbox(tmp_path: Path) -> None:
    wt = tmp_path / "ws" / "a1"
    wt.mkdir(parents=True)
    box = Sandbox.for_agent(BWRAP, worktree=wt, workspaces=tmp_path / "ws", colony_home=tmp_path / "home",
                            git_dir=tmp_path / "ws")
    marker = "313.25"  # an argument no other process on the machine has
    start = time.monotonic()
    verdict, code = run_checked([f"sleep {marker} & setsid sleep {marker} & sleep {marker}"], wt, dict(os.environ),
                                1.0, tmp_path / "verify.log", box)
    assert code is None and not verdict.ok and "timed out" in verdict.log
    assert time.monotonic() - start < 10
    wait_for(lambda: f"sleep {marker}" not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                              text=True).stdout, 5, "every sleep to be gone")


@needs_bwrap
def test_sandbox_network_false_leaves_only_loopback(tmp_path: Path) -> None:
    wt = tmp_path / "ws" / "a1"
    wt.mkdir(parents=True)

    def interfaces(network: bool) -> list[str]:
        box = Sandbox.for_agent(BWRAP, worktree=wt, workspaces=tmp_path / "ws", colony_home=tmp_path / "h",
                                git_dir=tmp_path / "ws", network=network)
        out = subprocess.run(box.wrap(["cat", "/proc/net/dev"], wt), cwd=wt, capture_output=True, text=True).stdout
        return sorted(line.split(":")[0].strip() for line in out.splitlines()[2:])

    host = sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    assert interfaces(True) == host
    assert interfaces(False) == ["lo"]


@needs_bwrap
def test_worktrees_inside_a_writable_colony_folder_stay_hidden(tmp_path: Path) -> None:
    """The demo's layout (worktrees in .stigmergy/workspaces) with an agent CLI's writable colony."""
    home = tmp_path / "target" / ".stigmergy"
    (home / "tasks").mkdir(parents=True)
    for agent in ("a1", "a2"):
        (home / "workspaces" / agent).mkdir(parents=True)
    (home / "workspaces" / "a2" / "theirs.txt").write_text("x")
    box = Sandbox.for_agent(BWRAP, worktree=home / "workspaces" / "a1", workspaces=home / "workspaces",
                            colony_home=home, git_dir=tmp_path / "target", colony_writable=True)
    shown = subprocess.run(box.wrap(["sh", "-c", f"ls {home} {home / 'workspaces'}; touch {home}/tasks/new"],
                                    home / "workspaces" / "a1"), capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "a2" not in shown.stdout.split() and "a1" in shown.stdout.split() and "tasks" in shown.stdout
    assert (home / "tasks" / "new").exists()


STAND_IN = """#!/bin/bash
# A stand-in agent CLI: checks where it runs, what it sees, and uses the task CLI from inside.
[ "$(cat /proc/1/comm)" = bwrap ] && echo sandboxed > where.txt || echo open > where.txt
[ -n "$MY_CLI_KEY" ] && echo "declared key: seen" >> where.txt
[ -z "$OTHER_SECRET_TOKEN" ] && echo "other secret: absent" >> where.txt
ls "$STIGMERGY_REPO/.stigmergy/tasks" >/dev/null && echo "colony: visible" >> where.txt
stigmergy agent heartbeat --agent "$STIGMERGY_AGENT" && echo "heartbeat: ok" >> where.txt
if [ "$STIGMERGY_TASK" = via-cli ]; then
  stigmergy task add "Found by the CLI" --id from-cli --repo "$STIGMERGY_REPO" && echo "task add: ok" >> where.txt
fi
true
"""


@needs_bwrap
def test_an_agent_cli_runs_sandboxed_with_its_declared_keys_and_the_task_cli(colony: Colony, tmp_path: Path) -> None:
    colony = set_config(colony, sandbox_cli_env=["MY_CLI_KEY"])
    program = tmp_path / "bin" / "fake-cli"
    program.parent.mkdir()
    program.write_text(STAND_IN)
    program.chmod(0o755)
    colony.add(Task(id="via-cli", title="Task via-cli"))
    proc = cli("agent", "run", "--id", "c1", "--repo", str(colony.repo), "--workspaces", str(tmp_path / "ws"),
               "--backend", "command", "--agent-cmd", f"{program} {{prompt_file}}", "--until-empty",
               "--sandbox", "bwrap", env={"MY_CLI_KEY": "declared-value-123", "OTHER_SECRET_TOKEN": "hidden-456"},
               timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(landed_ids(colony.repo)) == ["from-cli", "via-cli"]
    assert subprocess.run(["git", "show", "main~1:where.txt"], cwd=colony.repo, capture_output=True,
                          text=True).stdout.splitlines() == [
        "sandboxed", "declared key: seen", "other secret: absent", "colony: visible", "heartbeat: ok",
        "task add: ok"]
    assert file_on_main(colony.repo, "where.txt").splitlines()[-1] == "heartbeat: ok"  # from-cli's run
    assert colony.last_beat("c1") is not None


def test_bwrap_asked_for_but_missing_exits_2_naming_the_fix(colony: Colony, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with git and the shell, but no bwrap
    bin_dir.mkdir()
    for tool in ("git", "bash", "sh"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir)}
    model = script(tmp_path / "s.yaml", [])
    launched = cli("--agents", "1", "--repo", str(colony.repo), "--model", model, "--sandbox", "bwrap", env=env)
    assert launched.returncode == 2, launched.stderr
    assert "apt-get install bubblewrap" in launched.stderr and "--sandbox none" in launched.stderr
    assert not list(colony.home.glob("agents/*/agent.log"))  # refused before any agent started
    alone = agent_run(colony, tmp_path, "a1", model, "--sandbox", "bwrap", env=env)
    assert alone.returncode == 2 and "apt-get install bubblewrap" in alone.stderr
    # auto falls back to none, with a warning naming the same fix; the agent runs.
    auto = agent_run(colony, tmp_path, "a2", model, "--sandbox", "auto", env=env)
    assert auto.returncode == 0, auto.stderr
    assert "UNSANDBOXED" in auto.stderr and "apt-get install bubblewrap" in auto.stderr


def test_a_bad_sandbox_setting_is_refused(colony: Colony, tmp_path: Path) -> None:
    config = colony.home / "config.yaml"
    original = config.read_text()
    config.write_text(original + "sandbox: docker\n")
    proc = agent_run(colony, tmp_path, "a1", script(tmp_path / "s.yaml", []))
    assert proc.returncode == 2 and "sandbox 'docker'" in proc.stderr and "auto, bwrap, none" in proc.stderr
    config.write_text(original + "sandbox: none\nsandbox_write: ~/.cache/pip\n")
    proc = agent_run(colony, tmp_path, "a1", script(tmp_path / "s.yaml", []))
    assert proc.returncode == 2 and "sandbox_write" in proc.stderr


def test_the_agent_drops_its_key_before_it_starts_any_process(colony: Colony, tmp_path: Path) -> None:
    """git's fsmonitor hook runs in the harness's own git calls (not sandboxed): it must not
    inherit the key, which the agent dropped from its environment once its model was built."""
    dump = tmp_path / "git-env.txt"
    hook = tmp_path / "fsmonitor.sh"
    hook.write_text(f"#!/bin/sh\nenv >> {dump}\nexit 1\n")
    hook.chmod(0o755)
    subprocess.run(["git", "config", "core.fsmonitor", str(hook)], cwd=colony.repo, check=True)
    colony.add(Task(id="touch", title="Touch a file"))
    model = script(tmp_path / "s.yaml", [{"match": "touch", "actions": [{"write": {"path": "t.txt", "content": "t"}},
                                                                       {"finish": "done"}]}])
    proc = agent_run(colony, tmp_path, "a1", model, "--sandbox", "none",
                     env={"ANTHROPIC_API_KEY": FAKE_KEY, "MY_SERVICE_TOKEN": "tok-abcdef-123456"})
    assert proc.returncode == 0, proc.stderr
    assert landed_ids(colony.repo) == ["touch"]
    seen = dump.read_text()
    assert "STIGMERGY_GIT" in seen or "PATH=" in seen  # the hook ran with the harness's environment
    assert FAKE_KEY not in seen and "tok-abcdef-123456" not in seen
