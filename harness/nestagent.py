"""An agent of a colony spread over machines: the loop of agent.py, with a nest (nest.py) as its
environment.

Tasks, claims, heartbeats, notes, events and STOP are in the nest, so every host's agents see
the same colony. What is one host's own stays in that host's colony, in its clone of the target
(``.stigmergy/``): ledgers, runs and transcripts, main's verdicts, the cool-down, FAULT, the
agent locks and the worktrees. Its config.yaml is the nest's, written anew at every start.

What differs from an agent on one machine, and why:

- **Main** is the nest's landing branch, fetched before every pick into a local branch of the
  agent's own (``stigmergy-nest/<agent>``): never the branch the host's user has checked out,
  which the colony does not move on a host (``git pull`` brings the landed work).
- **Landing** is ``integrate.land_remote``: merge onto the fetched tip, verify that exact tree,
  then ``Nest.land``, one atomic push that moves the branch and ends the claim as done, each
  from its expected value. The claim is the fence: a stale owner's push fails on its record,
  so there is no claim ref. A lost race fetches the new tip, merges and verifies again.
- **A merge conflict** keeps the attempt on the nest (``refs/stigmergy/conflicts/<task>``) and
  puts the task back uncounted, with a note naming the paths, to be redone on the new main:
  merge_conflict tasks, whose bookkeeping moves tasks without a claim, are one colony's only.
- **A red main** holds this host's agents, uncounted, until main is green again: the red task
  is this host's, not filed into the nest.
- **No idle sweeps** (their token and record are on one host's disk).
- **STOP** is the nest's or this host's (``stigmergy stop`` with or without --nest), looked at
  no more often than every ``STOP_LOOK_S`` (each look is a listing of the nest).
- **Spend** goes to the nest with each heartbeat (``refs/stigmergy/ledger/<agent>``), so the
  colony budgets and ``report --nest`` count every host's.
- **A nest out of reach** is waited out: nothing is claimed or reaped meanwhile, a release is
  tried again, a landing round fetches again; only a release that cannot reach it for
  ``RELEASE_PATIENCE_S`` ends the agent (its beats stop, so the claim goes stale for others).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from harness import integrate, tasks
from harness.agent import Agent, AgentOptions, Blameless, Check
from harness.colony import Colony
from harness.errors import NestUnreachable, NotOwner
from harness.fence import AlreadyLanded, Fence, Fenced
from harness.gate import Decision, Fix, Hold
from harness.git import Git
from harness.integrate import Conflict, Contended, Landed
from harness.leases import Claim
from harness.meter import budget_reached, file_entries, ledger_entries, totals_of
from harness.models.base import Model
from harness.nest import Nest
from harness.tasks import Task
from harness.workspace import exclude

LOCAL_MAIN = "stigmergy-nest/"  # + agent id: the local branch holding the nest's tip as last fetched
STOP_LOOK_S = 2.0
RETRY_S = 5.0  # how long to wait before trying the nest again after it was out of reach
RELEASE_PATIENCE_S = 600.0  # after that, the agent gives up (exits): its beats stop, the claim goes stale
SPEND_LOOK_S = 10.0  # other hosts' spend, for the budget: it reaches the nest with their beats anyway


def host_colony(repo: Path, nest: Nest) -> Colony:
    """This host's colony, in ``repo`` (a clone of the target): made on first use, its config
    the nest's. All of it is this host's own, so none of it shows in the clone's `git status`."""
    colony = Colony.init(repo, config_text=nest.config_text)
    exclude(Git(colony.repo), f"/{colony.home.relative_to(colony.repo).as_posix()}/")
    return colony


class NestAgent(Agent):
    def __init__(self, colony: Colony, nest: Nest, opts: AgentOptions, model: Model | None = None) -> None:
        self.nest = nest
        self._stop_look = (0.0, False)  # when the nest's STOP was last looked at, and what was seen
        self._spend_look: tuple[float, list[dict[str, Any]]] = (float("-inf"), [])  # and other hosts' calls
        self._published: int | None = None  # how many of our ledger's calls the nest has
        self._beating = threading.Lock()
        self._unsure = False  # a claim's push failed: it may have gone through unheard (disown)
        super().__init__(colony, opts, model, env=nest, main=LOCAL_MAIN + tasks.check_id(opts.agent, "agent id"))

    def sync(self) -> str:
        """The nest's landing branch, fetched into this agent's local main; its tip."""
        return self.nest.pull(self.ws.repo, f"refs/heads/{self.ws.main}")

    # A nest out of reach (the network, the server) is a normal event of a night, not a crash:
    # what needs it waits for the next turn of the loop, and the heartbeat thread keeps trying.
    def claim_next(self) -> tuple[Claim, Task] | None:
        try:
            self.sync()  # main's verdict and the attempt both start from the nest's tip as it is now
            if self._unsure:  # the last claim's push may have gone through unheard
                for tid in self.nest.disown(self.id):
                    self.say(f"put back {tid}: its claim went through while the nest was out of reach")
                self._unsure = False
            return super().claim_next()
        except NestUnreachable as e:
            self._unsure = True
            self.say(f"claiming nothing for now: {e}")
            return None

    def sense(self) -> None:
        try:
            super().sense()
        except NestUnreachable as e:
            self.say(f"could not reap stale claims: {e}")

    def nothing_left(self) -> bool:
        try:
            return super().nothing_left()
        except NestUnreachable:
            return False

    def gatekeep(self) -> Decision:
        decision = super().gatekeep()
        if isinstance(decision, Fix):
            return Hold(f"main is red (this host's {decision.task} says how): fix it on the nest's "
                        f"{self.nest.config.branch!r}; nothing is claimed meanwhile", red=True)
        return decision

    def take_fence(self, claim: Claim) -> Fence | AlreadyLanded | Fenced | None:
        return None  # Nest.land expects the claim's own record: the claim is the fence

    def land_once(self, claim: Claim, task: Task, fence: Fence | None, commit: str,
                  trailers: list[tuple[str, str]], check: Check) -> integrate.LandResult:
        def push(candidate: str, tip: str) -> bool:
            return self.nest.land(claim, self.ws.repo, candidate, self.nest.config.branch, tip)
        try:
            return integrate.land_remote(self.ws, commit, task_id=task.id, title=task.title, verify=check,
                                         push=push, fetch=self.sync, trailers=trailers)
        except NotOwner as e:  # reaped; or landed by a push of ours whose answer was lost
            landed = self.nest.landed_by(claim)
            return AlreadyLanded(landed) if landed else Fenced(str(e))
        except NestUnreachable as e:  # the next round fetches: a push that did go through merges to nothing
            self.nap(RETRY_S)
            return Contended(1, f"the nest was out of reach ({e})")

    def release(self, claim: Claim, note: str, task: Task | None = None, skip: bool = True) -> None:
        # Our beats would keep a claim we failed to end alive all night: end it once the nest answers.
        give_up = time.monotonic() + RELEASE_PATIENCE_S
        while True:
            try:
                return super().release(claim, note, task, skip)
            except NestUnreachable as e:
                if time.monotonic() > give_up or self.signalled:
                    raise
                self.say(f"could not release {claim.task_id} yet: {e}")
                self.nap(RETRY_S)

    def landed(self, claim: Claim, task: Task, result: Landed | AlreadyLanded) -> bool:
        # Nest.land ended the claim as done in the push that moved the branch: nothing to end here.
        if isinstance(result, Landed):
            self.gate.record(result.tree, True, self.id)
        self.say(f"landed {task.id} as {result.commit[:10]} on the nest")
        return True

    def file_conflict(self, claim: Claim, task: Task, c: Conflict) -> None:
        self.nest.keep(self.ws.repo, c.ref, c.theirs)
        raise Blameless(f"its work conflicted with the nest's {self.nest.config.branch!r} on {', '.join(c.paths)} "
                        f"(kept on the nest at {c.ref}): redo it on the current main")

    def sweep(self) -> bool:
        return False

    def beat(self, **info: Any) -> None:
        # Our calls not yet in the nest go with the beat: the colony's spend is then every
        # host's, for the budget (budget_reached) and the report.
        with self._beating:  # the beat thread's and a landing's wait may beat at once
            if self._published is None:
                self._published = self.nest.published(self.id)
            calls = list(file_entries(self.ledger.path))[self._published:]
            try:
                self.nest.heartbeat(self.id, pid=os.getpid(), role=self.role.name, ledger=calls, **info)
            except NestUnreachable:
                self._published = None  # the push may have gone through: the next beat asks the nest
                raise
            self._published += len(calls)

    def budget_reached(self) -> str | None:
        """The colony budgets, held against every host's spend: the calls the nest has from other
        hosts (looked at every SPEND_LOOK_S at most) and this host's own ledgers."""
        if self.budget is None and self.budget_tokens is None:
            return None
        looked, elsewhere = self._spend_look
        if time.monotonic() - looked >= SPEND_LOOK_S:
            try:
                elsewhere = [c for c in self.nest.ledger() if c.get("host") != self.nest.host]
            except NestUnreachable:
                pass  # the spend last seen holds until the nest answers again
            self._spend_look = (time.monotonic(), elsewhere)
        here = ledger_entries(self.colony.home / "ledger")
        return budget_reached(totals_of([*elsewhere, *here]), self.budget, self.budget_tokens)

    def stop_asked(self) -> bool:
        if self.colony.stop_requested():  # this host's STOP or FAULT
            return True
        looked, seen = self._stop_look
        if time.monotonic() - looked >= STOP_LOOK_S:
            try:
                seen = self.nest.stop_requested()
            except NestUnreachable:
                pass  # what was seen last holds until the nest answers again
            self._stop_look = (time.monotonic(), seen)
        return seen
