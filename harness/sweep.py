"""Idle sweeps: an agent whose role has `when_idle` and finds nothing ready looks for work itself.

    nothing claimed -> the role's sweep due? (sweep_interval) -> main known green? no stop, budget
    left? -> take the role's token -> due still? record the start -> worktree at the tip of main
    -> the model gets idle.j2 (bash and create_task only) -> what it files carries discovered_by,
    repeats of open or recent tasks are refused -> worktree reset (its changes are discarded)
    -> token released

Idle agents must neither flood the pool nor burn the budget: one sweep of a role at a time in the
colony (the token), at most one per role every `sweep_interval` seconds colony-wide (the record),
at most `sweep_max_tasks` tasks each, every call on the agent's ledger (task ``sweep-<role>-<n>``).
An agent with --until-empty sweeps at most once, so a sweep that files nothing cannot keep such a
colony alive, and its other agents wait for a running sweep before they call the colony empty.
An agent CLI (--backend command) never sweeps: its tools are its own, and a sweep must not edit.

State in the colony:

    sweeps/<role>.json            {"n", "started", "agent"}: the role's latest sweep (the rate limit)
    locks/_sweep-<role>.lock/     the token: claim generations like a task's, with the same lease
    runs/sweep-<role>-<n>/001/    the sweep's transcript.jsonl
"""

from __future__ import annotations

import os
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import briefing, filing, fsutil, roles, tasks
from harness.colony import Colony
from harness.errors import ColonyFault, FilingRefused, HarnessError, ToolError
from harness.repocontext import Context
from harness.roles import Role
from harness.tasks import Task
from harness.templates import Templates
from harness.toolloop import Outcome, Transcript, run_attempt
from harness.tools import BASH, CREATE_TASK, FINISH, Toolbox

if TYPE_CHECKING:
    from harness.agent import Agent

TOOLS = (BASH, CREATE_TASK, FINISH)  # a sweep inspects and files; it edits nothing and has no task to note on
WHY = "an idle sweep inspects and files tasks but changes nothing"
RECENT_S = 24 * 3600  # done or failed tasks this recent count as known: a sweep must not refile them
TOKEN_PREFIX = "_sweep-"  # '_' starts no task id: a token's lock never shares a task's


def token(role: str) -> str:
    return f"{TOKEN_PREFIX}{role}"


def record(colony: Colony, role: str) -> dict[str, Any]:
    found = fsutil.read_json(colony.home / "sweeps" / f"{role}.json")
    return found if isinstance(found, dict) else {}


def due(colony: Colony, role: str, now: float) -> bool:
    """The role's last sweep (by any agent) started at least sweep_interval seconds ago, or never."""
    return now - float(record(colony, role).get("started", 0)) >= colony.config.sweep_interval


def running(colony: Colony) -> bool:
    """Some agent is sweeping now (its token is held under a good lease)."""
    first = ".lock.000001"  # every token ever taken has its first generation
    return any(colony.leases.token_held(p.name[:-len(first)]) for p in (colony.home / "locks").glob(f"{TOKEN_PREFIX}*{first}"))


def known_tasks(colony: Colony, now: float) -> tuple[list[tuple[str, Task]], list[tuple[str, Task]]]:
    """The open tasks, and the done or failed ones that finished within RECENT_S (by the file's
    ctime, which the move into done/ or failed/ sets), each newest first: what a sweep must not refile."""
    open_ = sorted([*colony.listing("pending"), *colony.listing("active")], key=lambda st: -st[1].created_at)
    recent: list[tuple[float, str, Task]] = []
    for status in ("done", "failed"):
        for path in colony.store.task_dir(status).glob("*.yaml"):
            try:
                changed = path.stat().st_ctime
            except FileNotFoundError:
                continue
            task = colony.store.read_task(path) if changed >= now - RECENT_S else None
            if task is not None:
                recent.append((changed, status, task))
    recent.sort(key=lambda r: -r[0])
    return open_, [(status, task) for _, status, task in recent]


class SweepSink:
    """Where a sweep's create_task files: checked as every filing is, then refused when it repeats
    a known task, when the sweep has filed its sweep_max_tasks, or once a stop has begun."""

    def __init__(self, colony: Colony, agent: str, worktree: Path, stopping: Callable[[], bool]) -> None:
        self.colony, self.agent, self.worktree, self.stopping = colony, agent, worktree, stopping
        self.filed: list[str] = []
        self.refused: list[str] = []  # one line per refusal, for the sweep_end event

    def create_task(self, fields: dict[str, Any]) -> str:
        limit = self.colony.config.sweep_max_tasks
        try:
            if self.stopping():
                raise FilingRefused("stopping", filing.STOPPING)
            if len(self.filed) >= limit:
                raise FilingRefused("limit", f"not filed: this sweep has filed {limit} tasks (sweep_max_tasks), "
                                    "its most: call finish")
            filing.check(fields, roles.known(self.colony.home), self.worktree)
            open_, recent = known_tasks(self.colony, time.time())
            filing.check_duplicate(fields, [*open_, *recent])
        except FilingRefused as e:
            self.refused.append(f"{e.reason}: {fields.get('title')}")
            raise
        filing.check_caps(self.colony, self.agent, None)  # the hourly cap holds for sweeps too
        data = {"id": tasks.new_id(str(fields.get("title", "task"))), **fields,
                "created_by": self.agent, "discovered_by": self.agent}
        tid = self.colony.add(tasks.from_dict(data, "create_task")).id
        self.filed.append(tid)
        return tid

    def add_note(self, text: str) -> None:
        raise ToolError("an idle sweep has no task to note on: file a task (create_task) or finish")


def maybe(agent: Agent) -> bool:
    """Run a sweep if this agent's role, the config and the colony allow one now; True if it ran."""
    role, cfg, colony = agent.role, agent.cfg, agent.colony
    allowed = tuple(t for t in TOOLS if t in role.tools or t == FINISH)
    if (role.when_idle is None or agent.model_for(role) is None or agent.command is not None
            or CREATE_TASK not in allowed or cfg.sweep_interval <= 0 or cfg.sweep_max_tasks <= 0
            or (agent.opts.until_empty and agent.swept)):
        return False
    if not due(colony, role.name, time.time()) or agent.stopping() or agent.over_budget():
        return False
    if agent.cooldown.remaining() > 0 or agent.short_of_room() or not main_green(agent):
        return False
    held = colony.leases.take_token(token(role.name), agent.id, os.getpid())
    if held is None:
        return False  # another agent of this role is sweeping
    try:
        number = _start(colony, role.name, agent.id)
        if number is None:
            return False  # one ran between our look and our token
        agent.swept += 1
        _sweep(agent, sweep_id(role.name, number), allowed)
    finally:
        colony.leases.drop_token(held)
    return True


def main_green(agent: Agent) -> bool:
    """Main's tip is known to pass the repo-wide verify (or there is none): never sweep a red or unknown main."""
    gate = agent.gate
    return gate.command is None or gate.known_green(gate.tree()) is True


def _start(colony: Colony, role: str, agent: str) -> int | None:
    """Under the token: still due? Then record this sweep's start (the rate limit counts from it, so
    a sweeper that dies mid-sweep does not let the next one start at once); its number."""
    now = time.time()
    if not due(colony, role, now):
        return None
    number = int(record(colony, role).get("n", 0)) + 1
    (colony.home / "sweeps").mkdir(exist_ok=True)
    fsutil.write_json(colony.home / "sweeps" / f"{role}.json",
                      {"n": number, "started": round(now, 3), "agent": agent}, fsync=False)
    return number


def _sweep(agent: Agent, sid: str, allowed: tuple[str, ...]) -> None:
    colony, role = agent.colony, agent.role
    sink = SweepSink(colony, agent.id, agent.ws.path, agent.stopping)
    agent.current = sid
    agent.say(f"nothing ready for a {role.name}: sweep {sid} looks for work ({role.name}'s when_idle)")
    colony.event("sweep_start", None, agent=agent.id, role=role.name, sweep=sid)
    outcome: Outcome | None = None
    try:
        outcome = _converse(agent, sid, allowed, sink)
        if isinstance(outcome.error, ColonyFault):
            agent.fault(outcome.error)
    except (HarnessError, OSError) as e:
        agent.say(f"sweep {sid} failed: {type(e).__name__}: {e}")
    except Exception:  # a bug must not kill the agent: say it, go on napping and claiming
        agent.say(traceback.format_exc())
    finally:
        try:
            agent.ws.prepare()  # nothing of a sweep stays in the worktree
        except (HarnessError, OSError) as e:
            agent.say(f"could not reset the worktree after {sid}: {e}")
        agent.current = None
        how = "no model call" if outcome is None else ("finished" if outcome.finished else
                                                        f"stopped by {outcome.stopped_by}")
        colony.event("sweep_end", None, agent=agent.id, role=role.name, sweep=sid, filed=sink.filed,
                     refused=sink.refused, outcome=how, steps=outcome.steps if outcome else 0)
        agent.say(f"sweep {sid} ended ({how}): filed {len(sink.filed)} task(s)"
                  + (f" {', '.join(sink.filed)}" if sink.filed else "")
                  + (f", {len(sink.refused)} refused" if sink.refused else ""))


def sweep_id(role: str, number: int) -> str:
    """A sweep's id: its ledger lines, run folder and events carry it (no task has it)."""
    return f"sweep-{role}-{number}"


def is_sweep_id(name: str) -> bool:
    """Whether ``name`` (a run folder's, say) has the shape of a sweep's id."""
    return re.fullmatch(r"sweep-[A-Za-z0-9_.-]+-[0-9]+", name) is not None


def next_id(colony: Colony, role: str) -> str:
    return sweep_id(role, int(record(colony, role).get("n", 0)) + 1)


def pseudo_task(sid: str, role: Role, agent: str) -> Task:
    """What stands for the task a sweep does not have: its id and title, no inputs or outputs."""
    return Task(id=sid, title=f"Idle sweep of the {role.name} role", created_by=agent)


def opening(colony: Colony, templates: Templates, role: Role, agent: str, sid: str,
            context: Context) -> tuple[str, str]:
    """The system prompt and first message of sweep ``sid``: for the agent, and for `prompt idle`."""
    open_, recent = known_tasks(colony, time.time())
    return briefing.sweep_opening(templates, colony.config, sweep=sid, agent=agent, role=role, context=context,
                                  open_tasks=[t for _, t in open_], recent_tasks=[t for _, t in recent])


def _converse(agent: Agent, sid: str, allowed: tuple[str, ...], sink: SweepSink) -> Outcome:
    colony, role = agent.colony, agent.role
    pseudo = pseudo_task(sid, role, agent.id)
    agent.ws.prepare()  # the tip of main, as a task's attempt starts
    system, prompt = opening(colony, agent.templates, role, agent.id, sid, agent.repo_context(pseudo))
    box = Toolbox(agent.ws.path, agent.command_env(pseudo), sink, sandbox=agent.sandbox, allowed=allowed, why=WHY)
    metered = agent.metered(sid, role)
    return run_attempt(metered, system, prompt, box, agent.limits_for(role),
                       Transcript(colony.store.run_dir(sid, "001") / "transcript.jsonl"), task_id=sid,
                       task_title=pseudo.title, abort_check=agent.must_abort, secrets=agent.secrets,
                       on_reply=metered.record, say=agent.say)
