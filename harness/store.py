"""The colony's store: its files on disk, what they say and how tasks move between folders.

Layout under `<repo>/.stigmergy/` (or $STIGMERGY_HOME):

    config.yaml                          settings (may be committed)
    tasks/{pending,active,done,failed}/<id>.yaml   the folder is the status
    tasks/quarantine/<file>              malformed task files, with <file>.reason
    notes/<id>.jsonl                     notes and failed approaches for the next claimant
    events.jsonl                         every add, claim, release, done, fail, reap, quarantine
    runs/<id>/<attempt>/                 what one attempt wrote down (transcript, verify log)
    index/pool[-<role>].snap             the pick index in heap order, for one-shot claims (snapshot.py)

(Claims and heartbeats, under locks/ and agents/, are the leases': leases.py.) A task file is
created with link(2), so one writer wins an id; it is moved between status folders with rename(2),
so it is in exactly one of them; events and notes are JSON lines, each appended in one write.
The store knows nothing of claims: the colony (colony.py) moves a task only while it holds one.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import fsutil, tasks
from harness.errors import InvalidTask, UnknownTask
from harness.pool import meta_of
from harness.tasks import Task

STATUSES = ("pending", "active", "done", "failed")
FOLDERS = (*(f"tasks/{s}" for s in (*STATUSES, "quarantine")), "locks", "agents", "notes", "runs", "index")


class Store:
    def __init__(self, home: Path) -> None:
        self.home = home

    def create(self) -> None:
        """Make the layout's folders (idempotent)."""
        for sub in FOLDERS:
            (self.home / sub).mkdir(parents=True, exist_ok=True)

    @property
    def events_path(self) -> Path:
        return self.home / "events.jsonl"


    def task_dir(self, status: str) -> Path:
        return self.home / "tasks" / status

    def run_dir(self, task_id: str, attempt: str) -> Path:
        path = self.home / "runs" / task_id / attempt
        path.mkdir(parents=True, exist_ok=True)
        return path

    def event(self, event: str, task: str | None = None, **fields: Any) -> None:
        fsutil.append_line(self.events_path, {"ts": round(time.time(), 3), "event": event, "task": task, **fields})

    def events(self) -> list[dict[str, Any]]:
        return fsutil.read_lines(self.events_path)

    def add_note(self, task_id: str, agent: str, text: str, kind: str = "note") -> None:
        tasks.check_id(task_id)
        fsutil.append_line(self.home / "notes" / f"{task_id}.jsonl",
                           {"ts": round(time.time(), 3), "agent": agent, "kind": kind, "text": text})

    def notes(self, task_id: str) -> list[dict[str, Any]]:
        return fsutil.read_lines(self.home / "notes" / f"{task_id}.jsonl")

    def add(self, task: Task) -> Task:
        """File a new pending task; its id must not exist in any status."""
        self.add_many([task])
        return task

    def add_many(self, new: list[Task]) -> None:
        """File tasks whose ids exist nowhere yet. A batch is synced once, not file by file."""
        files = []
        for task in new:
            tasks.check_id(task.id)
            if self.locate(task.id):
                raise InvalidTask(f"task {task.id!r} already exists; choose another --id or leave it out")
            files.append(tasks.serialise(task))  # every one, before any is written: all or nothing
        staged = []
        for task, raw in zip(new, files):
            tmp = self.task_dir("pending") / f".{task.id}.{secrets.token_hex(4)}.tmp"
            fsutil.atomic_write(tmp, raw, fsync=len(new) == 1)
            staged.append((task, tmp))
        if len(new) > 1:
            os.sync()
        events: list[dict[str, Any]] = []
        try:
            for task, tmp in staged:
                try:
                    os.link(tmp, self.task_dir("pending") / f"{task.id}.yaml")  # create-only: one writer wins
                except FileExistsError:
                    raise InvalidTask(f"task {task.id!r} already exists; choose another --id") from None
                events.append({"ts": round(time.time(), 3), "event": "add", "task": task.id,
                               "meta": meta_of(task), "created_by": task.created_by})
        finally:
            for _, tmp in staged:
                tmp.unlink(missing_ok=True)
            if events:
                fsutil.append_lines(self.events_path, events)

    def ids(self, status: str = "all") -> set[str]:
        """Names suffice: no task file is parsed."""
        return {name[:-5] for st in (STATUSES if status == "all" else (status,))
                for name in os.listdir(self.task_dir(st)) if name.endswith(".yaml") and not name.startswith(".")}

    def locate(self, task_id: str) -> tuple[str, Path] | None:
        for status in STATUSES:
            path = self.task_dir(status) / f"{task_id}.yaml"
            if path.exists():
                return status, path
        return None

    def get(self, task_id: str) -> tuple[str, Task]:
        tasks.check_id(task_id)
        found = self.locate(task_id)
        task = self.read_task(found[1]) if found else None
        if found is None or task is None:
            raise UnknownTask(f"no task {task_id!r}; `stigmergy task list --status all` shows what exists")
        return found[0], task

    def read_task(self, path: Path) -> Task | None:
        """Parse one task file; a malformed one is quarantined (never fatal) and None returned."""
        try:
            return tasks.load(path)
        except FileNotFoundError:
            return None
        except (InvalidTask, OSError) as e:
            self.quarantine(path, str(e))
            return None

    def quarantine(self, path: Path, reason: str) -> None:
        qdir = self.task_dir("quarantine")
        dest = qdir / f"{path.name}.{int(time.time())}.{secrets.token_hex(2)}"
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return  # somebody else quarantined it first
        fsutil.atomic_write(dest.with_name(dest.name + ".reason"), reason + "\n")
        tid = path.name[:-5] if path.name.endswith(".yaml") else path.name
        self.event("quarantine", tid if tasks.ID_RE.match(tid) else None, file=path.name, reason=reason)

    def listing(self, status: str = "pending") -> list[tuple[str, Task]]:
        out = []
        for st in STATUSES if status == "all" else (status,):
            for path in sorted(self.task_dir(st).glob("*.yaml")):
                task = self.read_task(path)
                if task is not None:
                    out.append((st, task))
        return out

    def retry(self, task_id: str, by: str) -> Task:
        """A failed task back to pending with skip_count 0 (a person decided it deserves another
        go); its notes stay, so the next claimant sees what was tried."""
        path = self.task_dir("failed") / f"{tasks.check_id(task_id)}.yaml"
        task = self.read_task(path)
        if task is None:
            where = self.locate(task_id)
            raise UnknownTask(f"task {task_id!r} is not failed" + (f" (it is {where[0]})" if where else
                              " (no such task)") + "; `stigmergy task list --status failed` shows the failed ones")
        task.skip_count, task.not_before = 0, None
        fsutil.atomic_write(path, task.to_yaml())
        try:
            os.rename(path, self.task_dir("pending") / f"{task_id}.yaml")
        except FileNotFoundError:
            raise UnknownTask(f"task {task_id!r} was moved while retrying it; look at `task show {task_id}`") from None
        self.add_note(task_id, by, "re-opened by `task retry` after it failed", kind="retry")
        self.event("retry", task_id, agent=by, meta=meta_of(task))
        return task

    def move(self, task_id: str, src: str, dest: str, change: Callable[[Task], object] | None = None) -> Task | None:
        """Move a task's file from folder ``src`` to ``dest`` (after ``change``, if any, is applied to
        it); the task as moved, or None when it was not in ``src`` (a crash moved it already: moves
        are idempotent)."""
        path = self.task_dir(src) / f"{task_id}.yaml"
        task = self.read_task(path)
        if task is not None and change is not None:
            change(task)
            fsutil.atomic_write(path, task.to_yaml())
        try:
            os.rename(path, self.task_dir(dest) / f"{task_id}.yaml")
        except FileNotFoundError:
            pass
        return task
