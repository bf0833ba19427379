"""Main's verdict: does the unmodified tip of main pass the repo-wide verify command?

A task must never pay for a red main. So before claiming, an agent asks what main's tip tree
scored under the repo-wide command, a cached verdict per (tree, command) in

    .stigmergy/verdicts/<tree>-<8 hex of the command's sha256>.json   {ok, code, excerpt, log, ts, agent}
    .stigmergy/verdicts/main.json                                       the latest verdict of main's tip, for status
    .stigmergy/verdicts/red.jsonl                                       the red tasks filed so far

Keyed by tree, not commit: every landing's exact tree passed verify, so a landing records green
for main's new tip and main's verdict is known for free; only the first main and human commits
need a run. Exactly one agent per key runs it (create-only ``<key>.running`` holding its pid; a
dead or expired checker is taken over), in its own worktree reset to main, with no claim held
and no model call.

A red key gets one critical ``verify_failure`` task, ``main-red-<tree12>-<hash8>``, filed create-only (one
agent wins), whose body and note hold the failing output. While main is red agents claim only
that task, for at most ``red_main_attempts`` counted attempts; then the colony waits, claiming
nothing, until main's tip tree changes and is green (a human fix, or another verify command,
which is another key). A red task left pending once main is green by other means is settled done
with a note. Exit 126/127 (the command cannot run at all) is no verdict but a configuration fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import fsutil, tasks
from harness.colony import Colony
from harness.leases import pid_alive
from harness.errors import GitError, InvalidTask, VerifyNotRunnable
from harness.git import Git
from harness.tasks import Task
from harness.verify import NOT_RUNNABLE

RED_PREFIX = "main-red-"


@dataclass(frozen=True)
class Go:
    """Main is green (or there is no repo-wide verify): claim as usual."""


@dataclass(frozen=True)
class Fix:
    """Main is red: claim only its red task."""

    task: str


@dataclass(frozen=True)
class Hold:
    """Claim nothing for now: main is being checked, or is red and its fix is taken or spent."""

    why: str
    red: bool = False


Decision = Go | Fix | Hold


def command_hash(command: str) -> str:
    return hashlib.sha256(command.encode()).hexdigest()[:8]


def red_task_id(tree: str, command: str) -> str:
    """One red task per verdict key: another command on the same tree is another verdict."""
    return f"{RED_PREFIX}{tree[:12]}-{command_hash(command)}"


def not_runnable(command: str, code: int, excerpt: str) -> VerifyNotRunnable:
    what = "could not be executed (exit 126)" if code == 126 else "was not found (exit 127)"
    return VerifyNotRunnable(
        f"the verify command `{command}` {what} on unmodified main, so no task can pass it; fix: install the "
        f"runner it names, or set a command that exists (--verify CMD, or `verify:` in .stigmergy/config.yaml), "
        f"then relaunch. Its output:\n{excerpt[-1500:]}")


class Gate:
    def __init__(self, colony: Colony, git: Git, main: str, command: str | None, attempts: int) -> None:
        self.colony, self.git, self.main = colony, git, main
        self.command = command.strip() if command and command.strip() else None
        self.attempts = attempts
        self.dir = colony.home / "verdicts"
        self._green: str | None = None  # the last tree this process saw green: settles run once per tree

    # -- the cache ------------------------------------------------------------------------------------
    def tree(self) -> str:
        return self.git.run("rev-parse", f"refs/heads/{self.main}^{{tree}}").strip()

    def red_task(self, tree: str) -> str | None:
        return red_task_id(tree, self.command) if self.command is not None else None

    def key(self, tree: str) -> str:
        assert self.command is not None
        return f"{tree}-{command_hash(self.command)}"

    def verdict(self, tree: str) -> dict[str, Any] | None:
        if self.command is None:
            return {"ok": True, "code": 0}
        found = fsutil.read_json(self.dir / f"{self.key(tree)}.json")
        return found if isinstance(found, dict) and "ok" in found else None

    def known_green(self, tree: str) -> bool | None:
        """True green, False red, None not known yet."""
        v = self.verdict(tree)
        return None if v is None else bool(v["ok"])

    def record(self, tree: str, ok: bool, agent: str, code: int | None = 0, excerpt: str = "",
               log: str | None = None) -> dict[str, Any]:
        if self.command is None:
            return {"ok": True}
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self.key(tree)}.json"
        old = fsutil.read_json(path)
        if isinstance(old, dict) and old.get("ok") == ok:
            return old  # keep the first sighting: "red since" must not move
        v = {"ok": ok, "code": code, "excerpt": excerpt, "log": log, "ts": round(time.time(), 3), "agent": agent,
             "tree": tree, "command": self.command}
        fsutil.write_json(path, v, fsync=False)
        if tree == self.tree():
            fsutil.write_json(self.dir / "main.json", v | {"task": None if ok else self.red_task(tree)}, fsync=False)
        self.colony.event("verdict", None, agent=agent, tree=tree, ok=ok, code=code)  # wakes napping agents
        return v

    # -- who checks -----------------------------------------------------------------------------------
    def begin_check(self, tree: str, agent: str) -> bool:
        """Become the one checker of this key, taking over a dead or expired one; False: someone is."""
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / f"{self.key(tree)}.running"
        mine = json.dumps({"pid": os.getpid(), "host": self.colony.host, "agent": agent, "ts": time.time()})
        for _ in range(2):
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._stale(marker):
                    return False
                try:  # rename, not unlink: of many takers exactly one moves the stale marker away
                    os.rename(marker, f"{marker}.{os.getpid()}.stale")
                except FileNotFoundError:
                    return False
                os.unlink(f"{marker}.{os.getpid()}.stale")
                continue
            with os.fdopen(fd, "w") as f:
                f.write(mine)
            return True
        return False

    def end_check(self, tree: str) -> None:
        (self.dir / f"{self.key(tree)}.running").unlink(missing_ok=True)

    def _stale(self, marker: Path) -> bool:
        owner = fsutil.read_json(marker)
        try:
            age = time.time() - marker.stat().st_mtime
        except FileNotFoundError:
            return False
        if not isinstance(owner, dict):
            return age > 10  # torn while being written: give its writer a moment
        if owner.get("host") == self.colony.host and not pid_alive(int(owner.get("pid") or 0)):
            return True
        return age > self.colony.config.verify_timeout + 60

    # -- what the verdict means for claiming ----------------------------------------------------------
    def decide(self, tree: str, v: dict[str, Any], agent: str) -> Decision:
        if v.get("ok"):
            if self._green != tree:
                self._green = tree
                self.settle_obsolete(tree, agent)
            return Go()
        if v.get("code") in NOT_RUNNABLE and self.command is not None:
            raise not_runnable(self.command, int(v["code"]), str(v.get("excerpt", "")))
        tid = self.file_red(tree, v, agent)
        found = self.colony.store.locate(tid)
        if found is None:
            return Hold(f"main is red; its task {tid} is missing", red=True)
        status, path = found
        task = self.colony.store.read_task(path) if status == "pending" else None
        if task is not None and task.skip_count < self.attempts:
            return Fix(tid)
        why = "being fixed" if status == "active" else "waiting for a fix of main (its attempts are spent)"
        return Hold(f"main is red ({tid}): {why}", red=status != "active")

    def file_red(self, tree: str, v: dict[str, Any], agent: str) -> str:
        tid = red_task_id(tree, str(self.command))
        if self.colony.store.locate(tid) is not None:
            return tid
        body = (f"The repo-wide verify command fails on main itself (tree {tree[:12]}), before any task's "
                f"change, so no task can land until main is green again. Make `{self.command}` pass on main.\n\n"
                f"Full output: {v.get('log')}\n\n--- failing output ---\n{v.get('excerpt', '')}\n")
        red = Task(id=tid, title=f"Main is red: `{self.command}` fails on main"[:200], kind="verify_failure",
                   priority=tasks.PRIORITIES["critical"], body=body, created_by=agent)
        try:
            self.colony.add(red)
        except InvalidTask:
            return tid  # another agent filed it first
        fsutil.append_line(self.dir / "red.jsonl", {"task": tid, "tree": tree, "ts": round(time.time(), 3)})
        self.colony.add_note(tid, agent, f"verify fails on unmodified main:\n{v.get('excerpt', '')}\n"
                             f"(full output: {v.get('log')})", kind="main_red")
        return tid

    def settle_obsolete(self, tree: str, agent: str) -> list[str]:
        """Main is green: red tasks of other trees still pending have nothing left to fix."""
        settled = []
        # The red tasks ever filed are listed on the side: a landing must not list all of pending/.
        for tid in dict.fromkeys(str(r.get("task")) for r in fsutil.read_lines(self.dir / "red.jsonl")):
            if not (self.colony.store.task_dir("pending") / f"{tid}.yaml").exists():
                continue
            self.colony.add_note(tid, agent, f"main is green again (tree {tree[:12]}) without this task: "
                                 "nothing left to fix", kind="obsolete")
            try:  # the rename decides: of several agents settling at once, or one claiming it, one wins
                os.rename(self.colony.store.task_dir("pending") / f"{tid}.yaml", self.colony.store.task_dir("done") / f"{tid}.yaml")
            except FileNotFoundError:
                continue
            self.colony.event("done", tid, agent=agent, obsolete=True)
            settled.append(tid)
        return settled


def main_state(colony: Colony) -> dict[str, Any] | None:
    """The latest verdict recorded for main's tip (status shows it); None before any check."""
    found = fsutil.read_json(colony.home / "verdicts" / "main.json")
    return found if isinstance(found, dict) else None


def main_now(colony: Colony) -> dict[str, Any] | None:
    """Main's last recorded verdict, told whether it is still about main's tip (``current``)."""
    state = main_state(colony)
    if state is None:
        return None
    try:
        tip = Git(colony.repo).run("rev-parse", f"refs/heads/{colony.config.branch}^{{tree}}").strip()
    except GitError:
        return None
    return {"ok": bool(state.get("ok")), "since": state.get("ts"), "task": state.get("task"),
            "command": state.get("command"), "current": state.get("tree") == tip}


def forget_red(home: Path) -> int:
    """At launch: drop red verdicts, so a relaunch after fixing the environment checks main again
    (a red task already filed for that tree keeps its attempts). Green ones stay true."""
    dropped = 0
    for path in (home / "verdicts").glob("*.json"):
        v = fsutil.read_json(path)
        if isinstance(v, dict) and not v.get("ok", True):
            path.unlink(missing_ok=True)
            dropped += 1
    return dropped
