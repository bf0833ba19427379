"""The fence: the right to land one task, held in git beside the colony's claim.

``refs/stigmergy/claims/<task>`` points to a blob ``claim <task> <generation> <token>`` written
by the current holder, or to the landed commit itself once the task landed (colonies before that
wrote a blob ``landed <task> <commit>``; both are read). A landing moves main and this ref in one
git transaction, each from its expected old value (integrate.py), so an owner that lost its claim
can never land. :func:`take` is the one place a claim and its fence are joined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.errors import GitError
from harness.git import ZERO_OID, Git
from harness.tasks import check_id

if TYPE_CHECKING:  # the fence needs only the colony's answer to holds(): no import at run time
    from harness.colony import Colony
    from harness.leases import Claim

CLAIMS = "refs/stigmergy/claims/"


@dataclass(frozen=True)
class Fenced:
    reason: str


@dataclass(frozen=True)
class AlreadyLanded:
    commit: str


def take(colony: Colony, git: Git, claim: Claim) -> Fence | AlreadyLanded | Fenced:
    """The claim-and-fence handshake, once ``claim`` is won in the colony:

    1. write our fence (:meth:`Fence.acquire`): the ref moves to our blob, unless the task has
       landed already (AlreadyLanded: an earlier owner landed it and died before saying so) or
       a later generation holds it (Fenced);
    2. check that the colony's claim is still ours. Whoever claims after us acquires after us,
       so either we see their claim here, or their acquire moves the ref off our blob and our
       landing fails its old-value check: a claim lost at any moment never lands.

    The fence goes with the claim: :meth:`Fence.release` when the task goes back to pending or
    fails; a landing leaves the ref naming the landed commit (gc removes it with the task)."""
    fence = Fence.acquire(git, claim.task_id, claim.generation, claim.token)
    if isinstance(fence, Fence) and not colony.holds(claim):
        return Fenced(f"claim on {claim.task_id} was taken over before work started")
    return fence


@dataclass(frozen=True)
class Fence:
    """The right to land one task, held as ``refs/stigmergy/claims/<task>`` -> our claim blob.

    Protocol for the claimer: claim the task in the colony, ``Fence.acquire``, then re-check the
    colony claim is still ours. Any later claimant acquires after us and so moves the ref off our
    blob, which makes our landing transaction fail. Generations only grow (the colony's claim
    CAS), so an acquire older than the claim already recorded is refused: an owner paused
    between claiming and acquiring cannot push the current owner out.
    """

    git: Git
    task_id: str
    blob: str

    @property
    def ref(self) -> str:
        return CLAIMS + self.task_id

    @classmethod
    def acquire(
        cls, git: Git, task_id: str, generation: int, token: str, *, attempts: int = 50
    ) -> Fence | AlreadyLanded | Fenced:
        check_id(task_id, "claim ref")
        ref = CLAIMS + task_id
        blob = git.run("hash-object", "-w", "--stdin",
                       input=f"claim {task_id} {generation} {token}\n").strip()
        for _ in range(attempts):
            old = git.ref_value(ref)
            if old is not None:
                if old == blob:
                    return cls(git, task_id, blob)
                what, value = claim_record(git, old)
                if what == "landed":
                    return AlreadyLanded(value)
                if what == "claim" and int(value) > generation:
                    return Fenced(f"claim on {task_id} is at generation {value} > {generation}")
            # Compare-and-swap on the value just read: a racing claimant makes this fail, then
            # we re-read and overwrite it (or find the task landed).
            done = git.call("update-ref", "-m", f"stigmergy: claim gen {generation}",
                            ref, blob, old or ZERO_OID)
            if done.returncode == 0:
                return cls(git, task_id, blob)
        raise GitError(["update-ref", ref], 1, f"claim ref kept changing over {attempts} tries")

    def holds(self) -> bool:
        return self.git.ref_value(self.ref) == self.blob

    def release(self) -> bool:
        """Drop the claim ref if it is still ours (a landed marker is never removed)."""
        done = self.git.call("update-ref", "-d", self.ref, self.blob)
        return done.returncode == 0


def claim_record(git: Git, obj: str) -> tuple[str, str]:
    """What a claim ref's object says, in one git call: ("landed", commit), ("claim", generation)
    or ("", "") for anything else. A commit is the landed commit itself; a blob ``landed <task>
    <commit>`` is how colonies before that recorded it."""
    head, _, body = git.run("cat-file", "--batch", input=obj + "\n", check=False).partition("\n")
    kind = head.split()[1:2]
    if kind == ["commit"]:
        return "landed", obj
    words = body.split() if kind == ["blob"] else []
    if len(words) == 3 and words[0] == "landed":
        return "landed", words[2]
    if len(words) == 4 and words[0] == "claim" and words[2].isdigit():
        return "claim", words[2]
    return "", ""


def fenced(fence: Fence) -> Fenced:
    """Why ``fence`` no longer holds, read from its ref."""
    current = fence.git.ref_value(fence.ref)
    what, landed = claim_record(fence.git, current) if current else ("", "")
    if what == "landed":
        return Fenced(f"task {fence.task_id} already landed as {landed[:12]}")
    return Fenced(f"claim on {fence.task_id} was taken over (claim ref moved)")
