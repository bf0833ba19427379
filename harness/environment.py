"""The contract between agents and the environment they coordinate through.

Agents share nothing but an environment: tasks, claims, heartbeats, notes and events. This is
what any backend of it promises (today the colony on local disk, colony.py; tests/
test_environment.py is the contract suite every backend must pass). The words:

- A task is *pending*, *active* (claimed), *done* or *failed*; it is in exactly one of these.
- A task is *ready* when it is pending, every task it depends on is done and its back-off is
  over (tasks.readiness is the one definition).
- A *claim* is a lease on one active task: (task, agent, generation, token). Generations of a
  task only grow; the highest is the current claim until it ends (release, done, fail, reap).
- A claim is *stale* when its owner's pid is gone (on the owner's host), or the owner's last
  heartbeat and the claim are both older than ``lease_ttl``, or the owner said it exited.

Every method may be called by many processes at once, on one host or (for a backend that allows
it) several; none needs a coordinator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from harness.config import Config
from harness.leases import Claim
from harness.tasks import Task


class Environment(Protocol):
    home: Path  # where the environment keeps what it writes down about this colony
    config: Config

    # -- tasks ----------------------------------------------------------------------------------
    def add(self, task: Task) -> Task:
        """File a new pending task. Its id must exist nowhere yet (InvalidTask otherwise): of two
        processes filing one id, exactly one succeeds. An ``add`` event is recorded."""

    def add_many(self, new: list[Task]) -> None:
        """``add`` for a batch, all checked before any is filed."""

    def get(self, task_id: str) -> tuple[str, Task]:
        """The task and its status (UnknownTask when there is none)."""

    def listing(self, status: str = "pending") -> list[tuple[str, Task]]:
        """(status, task) of every task in ``status`` ("all" for every status). A malformed task
        file is quarantined, never returned and never fatal."""

    def ids(self, status: str = "all") -> set[str]:
        """The ids of every task in ``status`` ("all": any), without reading the tasks where the
        backend can (a typo'd dependency check, ``task list``'s done set)."""

    def ready(self, task: Task) -> bool:
        """Claimable as far as its own file says: dependencies done and no back-off left."""

    # -- claims ---------------------------------------------------------------------------------
    def claim(self, agent: str, role: str | None = None, pid: int | None = None) -> tuple[Claim, Task] | None:
        """Claim the most urgent ready task for ``agent`` in ``role`` and return it, or None when
        nothing is ready. Exactly one of any number of racing claimants wins a task; the winner's
        claim is generation N+1 of the task's claims. A claim whose owner is stale counts as free
        (it is reaped on the way). A ``claim`` event is recorded."""

    def current_claim(self, task_id: str) -> Claim | None:
        """The task's current claim, or None when nobody holds it."""

    def holds(self, claim: Claim) -> bool:
        """``claim`` is still the task's current claim (not ended, not taken over)."""

    def heartbeat(self, agent: str, pid: int | None = None, **info: Any) -> None:
        """Renew every claim of ``agent``: it is alive (``info`` is shown by status). An agent beats
        every ``heartbeat_interval`` seconds; ``state="exited"`` says goodbye: what it still holds
        is stale at once."""

    def last_beat(self, agent: str) -> dict[str, Any] | None:
        """The agent's last heartbeat (its ``ts``, ``pid``, ``host`` and info), or None."""

    def release(self, task_id: str, agent: str, note: str | None = None, token: str | None = None,
                skip: bool = True) -> int:
        """End ``agent``'s claim and put the task back to pending, with ``note`` for the next
        claimant. ``skip`` counts the attempt (skip_count + 1, which makes the task more urgent
        and starts its back-off); an agent that stops for reasons not the task's passes False.
        NotOwner when ``agent`` (with ``token``, if given) does not hold the current claim.
        Returns the new skip_count."""

    def done(self, task_id: str, agent: str, token: str | None = None, **fields: Any) -> None:
        """End the claim; the task is done (``fields`` go on the ``done`` event). NotOwner as above."""

    def fail(self, task_id: str, agent: str, note: str, token: str | None = None) -> None:
        """End the claim; the task has failed, ``note`` says why. NotOwner as above."""

    def idle(self) -> bool:
        """Nothing to do for anyone: no task active, none ready and none backing off (what is
        left pending waits on a task that will never be done)."""

    def reap(self, reaper: str) -> list[str]:
        """Put every active task whose claim is stale back to pending (skip_count + 1, a note
        naming the owner that abandoned it); the ids this call reaped. Of many processes reaping
        one stale claim at once, exactly one reaps it."""

    # -- what agents leave for each other -------------------------------------------------------
    def add_note(self, task_id: str, agent: str, text: str, kind: str = "note") -> None:
        """Leave a note on a task for whoever works on it next (and the morning report)."""

    def notes(self, task_id: str) -> list[dict[str, Any]]:
        """The task's notes, oldest first: ``ts``, ``agent``, ``kind`` and ``text``."""

    def event(self, event: str, task: str | None = None, **fields: Any) -> None:
        """Record an event; each is appended whole (never interleaved with another's)."""

    def events(self) -> list[dict[str, Any]]:
        """Every event so far, in the order recorded: ``ts``, ``event``, ``task`` and fields."""

    def request_stop(self, now: bool = False) -> Path:
        """Ask every agent to stop: claim nothing more, finish (``now``: abort) what they hold."""

    def stop_requested(self) -> bool:
        """A person (STOP) or a configuration fault asked every agent to stop: claim nothing more."""
