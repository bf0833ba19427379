"""One agent: an independent process that senses the environment, claims, works, verifies, lands.

    while not stopped:
        sense: heartbeat (a thread), reap stale claims, read STOP, FAULT and the budget
        gate: wait out a colony cool-down or a disk short of space; is main green? (gate.py;
              while it is red, only its fix)
        pick and claim the best ready task for my role (back off when none)
        prepare: reset my worktree to the tip of main (or main + the conflicting work)
        work: render the prompt and run the model's tool loop
        verify: run the verify command; on failure feed the excerpt back, a bounded number of rounds
        land: one fenced commit on main, the user's checkout moved with it (or the landing waits
              while it would overwrite their changes); a conflict becomes a merge_conflict task
        finish: done, or back to pending with a note (skip_count + 1), claim released

Stopping is data: a step that cannot go on raises `GiveUp(note)`, and the claim is released with
that note for the next claimant. What is not the task's fault never counts against it: a red main
or an endpoint outage raises `Blameless(note)` (released uncounted; a nest out of reach and a
full disk are released so too), and a configuration fault (`ColonyFault`) lays FAULT, which
stops the colony, as crashes on three different tasks in a row do. Nothing here talks to another
agent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import (briefing, conflicts, deadline, faults, filing, fsutil, integrate, notes, roles, sandbox, sweep,
                     tasks)
from harness.checkout import Blocked
from harness.colony import Colony
from harness.environment import Environment
from harness.leases import Claim
from harness.command import CommandBackend
from harness.errors import (AgentCrashing, AlreadyRunning, ColonyFault, FilingRefused, HarnessError, ModelTransient,
                            NestUnreachable, NotOwner, UsageError)
from harness.gate import Decision, Fix, Gate, Go, Hold
from harness.fence import AlreadyLanded, Fence, Fenced
from harness.fence import take as take_fence
from harness.integrate import Conflict, Contended, Landed, Unchanged, Verdict, VerifyFailed
from harness.meter import FREE, Ledger, Price, budget_reached, cost_usd, ledger_totals
from harness.models.base import Model, Reply, Request
from harness.models.retry import CoolDown
from harness.pidlock import PidLock, agent_lock
from harness.redact import SECRET_NAME, secret_env
from harness.repocontext import Context
from harness.sandbox import Sandbox
from harness.tasks import Task
from harness.toolloop import Limits, Outcome, Transcript, continue_attempt, run_attempt
from harness.templates import Templates
from harness.tools import Toolbox
from harness.verify import run_checked, run_verify
from harness.workspace import Workspace

Check = Callable[[Path], Verdict]  # verify, run in a worktree
LAND_RETRY_S = 2.0  # how often a landing held back by the user's checkout looks again
LAND_ROUNDS = 3  # landing rounds (integrate.land's tries each) before a contended landing gives up
CRASHES_TO_FAULT = 3  # crashed attempts in a row, on as many tasks, that stop the colony (Agent.stop_if_crashing)


NAP_STEP, NAP_QUICK, NAP_SLOW_STEP = 0.2, 2.0, 1.0  # how often a nap looks for work: see Agent.nap


class GiveUp(Exception):
    """This attempt cannot go on; the note says why and is kept for the next claimant."""


class Stop(Exception):
    """The agent was told to stop (SIGTERM, STOP now, budget) in the middle of a step."""


class Blameless(Exception):
    """This attempt cannot go on, and not by the task's fault (red main, outage): released uncounted."""


@dataclass
class AgentOptions:
    agent: str
    role: str = "coder"
    model: str | None = None
    workspaces: Path = field(default_factory=lambda: Path("workspaces"))
    verify: str | None = None  # overrides the config's repo-wide verify command
    until_empty: bool = False
    budget_usd: float | None = None  # overrides the config's budget_usd
    budget_tokens: int | None = None  # overrides the config's budget_tokens
    limits: Limits = field(default_factory=Limits)
    api_base: str | None = None
    agent_cmd: str | None = None  # the command backend: an external agent CLI (or a preset name)
    branch: str | None = None  # the landing branch; overrides the config's `branch:`
    max_idle_sleep: float = 30.0
    sandbox: str | None = None  # auto | bwrap | none; overrides the config's `sandbox:`


class Metered:
    """A Model that waits out the colony cool-down before each call, and (``record``, the tool
    loop's on_reply) writes every call's tokens and cost to this agent's ledger as it happens.

    The ledger line is written by the tool loop after the call returned, outside the region a
    stop or the deadline may interrupt: a reply that was paid for is always on the ledger."""

    def __init__(self, model: Model, ledger: Ledger, agent: str, task: str, cooldown: CoolDown | None = None,
                 abort: Callable[[], bool] = lambda: False, price: Price = FREE) -> None:
        self.model, self.ledger, self.agent, self.task = model, ledger, agent, task
        self.cooldown, self.abort, self.price = cooldown, abort, price
        self.name = model.name

    def complete(self, request: Request) -> Reply:
        # A colony cool-down (an outage, a 429) is waited out here, where a stop is heard at once,
        # rather than inside the provider's retries, which may sleep for minutes.
        while self.cooldown is not None and self.cooldown.remaining() > 0:
            if self.abort():
                raise ModelTransient("the agent stopped while the colony was cooling down")
            time.sleep(0.2)
        reply = self.model.complete(request)
        reply.cost_usd = cost_usd(reply.usage, self.price)  # the one place a call is priced
        return reply

    def record(self, reply: Reply) -> None:
        self.ledger.record(agent=self.agent, task=self.task, model=self.name, usage=reply.usage,
                           cost_usd=reply.cost_usd)


class Sink:
    """What the model's create_task and add_note tools write into: the environment itself.

    ``worktree`` is the agent's (a path with spaces must exist there to be filed); ``stopping``
    says a stop has begun (STOP, a signal, the deadline, FAULT), after which nothing is filed."""

    def __init__(self, env: Environment, agent: str, task: Task, worktree: Path | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.env, self.agent, self.task = env, agent, task
        self.worktree, self.stopping = worktree, stopping

    def create_task(self, fields: dict[str, Any]) -> str:
        # Every refusal is a tool error to the model; junk and a stop leave a note, and none of
        # them counts as a filing. The caps come last: only a task that would be filed counts.
        try:
            if self.stopping():
                raise FilingRefused("stopping", filing.STOPPING)
            filing.check(fields, roles.known(self.env.home), self.worktree)
        except FilingRefused as e:
            raise filing.refusal(self.env, self.agent, self.task.id, e) from None
        filing.check_caps(self.env, self.agent, self.task.id)
        data = {"id": tasks.new_id(str(fields.get("title", "task"))), **fields,
                "created_by": self.agent, "discovered_from": self.task.id}
        return self.env.add(tasks.from_dict(data, "create_task")).id

    def add_note(self, text: str) -> None:
        self.env.add_note(self.task.id, self.agent, text)


class Agent:
    def __init__(self, colony: Colony, opts: AgentOptions, model: Model | None = None,
                 env: Environment | None = None, main: str | None = None) -> None:
        """``colony``: this host's (ledgers, runs, verdicts, worktrees); ``env``: where tasks, claims,
        beats, notes, events and STOP are (default the colony; a nest: nestagent.py); ``main``: the
        local branch attempts start from (default the landing branch)."""
        self.colony, self.opts, self.cfg = colony, opts, colony.config
        self.env: Environment = env or colony
        self.id = tasks.check_id(opts.agent, "agent id")
        self.role = roles.agent_role(opts.role, colony.home)  # `any`: each task's role (roles.for_task)
        self.templates = Templates(colony.home)
        self.ws = Workspace(colony.repo, opts.workspaces, self.id, main=main or colony.landing_branch(opts.branch))
        self.command = CommandBackend(opts.agent_cmd, opts.limits.max_seconds or 3600,
                                      stall_seconds=self.cfg.cli_stall_seconds) if opts.agent_cmd else None
        spec = opts.model or self.cfg.model
        if model is None and not spec and self.command is None:
            raise UsageError("no model: pass --model (e.g. anthropic/claude-sonnet-5), set `model:` in "
                             "config.yaml, or use --backend command --agent-cmd CMD")
        self.cooldown = CoolDown(colony.home / "cooldown.json")
        self.gate = Gate(colony, self.ws.git, self.ws.main, self.repo_verify(), self.cfg.red_main_attempts)
        self.hold: Hold | None = None  # why the last pick claimed nothing, when main was the reason
        self.model = model or (self._load_model(str(spec)) if spec else None)
        self.role_models = self._load_role_models()
        self.ledger = Ledger(colony.home / "ledger" / f"{self.id}.jsonl")
        self.budget = opts.budget_usd if opts.budget_usd is not None else self.cfg.budget_usd
        self.budget_tokens = opts.budget_tokens if opts.budget_tokens is not None else self.cfg.budget_tokens
        self.secrets = list(secret_env(os.environ).values())
        self._build_sandboxes()
        self.signalled = False
        self.current: str | None = None
        self.last_outcome: Outcome | None = None  # the model's or CLI's last word on the current task
        self.waiting: str | None = None  # why the current landing waits, or why nothing is claimed (shown by status)
        self._reaped_at = 0.0
        self.full_until = 0.0  # the disk was full during an attempt: no claim before (short_of_room)
        self.crashes: list[str] = []  # the tasks of our crashed attempts since the last that did not crash
        self.deadline = deadline.Watch(colony.home)
        self.swept = 0  # idle sweeps this process ran (sweep.py)

    def _build_sandboxes(self) -> None:
        """Probe once, here: every command of this agent then runs in the same sandbox. An agent CLI
        gets its own: the colony folder writable (its task CLI), its config folders and its keys."""
        mode = self.opts.sandbox or self.cfg.sandbox
        exe = sandbox.resolve(mode, self.say)
        git_dir = self.ws.git.common_dir()

        def box(write: list[str], colony_writable: bool = False, read: list[str] | None = None) -> Sandbox:
            return Sandbox.for_agent(exe, worktree=self.ws.path, workspaces=self.ws.root, colony_home=self.colony.home,
                                     git_dir=git_dir, read=[*self.cfg.sandbox_read, *(read or [])], write=write,
                                     network=self.cfg.sandbox_network, colony_writable=colony_writable)
        self.sandbox = box(self.cfg.sandbox_write)
        self.cli_sandbox = self.sandbox
        self.cli_env: dict[str, str] = dict(os.environ)  # unsandboxed, an agent CLI inherits everything
        if self.command is not None and exe is not None:
            dirs, keys = self.command.needs(self.cfg.sandbox_cli_env)
            self.cli_sandbox = box([*self.cfg.sandbox_write, *dirs], colony_writable=True,
                                   read=self.command.program())
            # Sandboxed, only the keys it is known (preset) or declared (sandbox_cli_env) to need.
            self.cli_env = {k: v for k, v in os.environ.items() if k in keys or k == "STIGMERGY_HOME"}

    def forget_keys(self) -> list[str]:
        """Drop secret-looking variables from our own environment once the model client holds its
        key, so no process we start (git included) inherits one. Not for litellm, which reads
        provider keys from the environment at every call; an agent CLI's keys were copied at start."""
        models = [*self.role_models.values(), *([self.model] if self.model else [])]
        if any(m.name.startswith("litellm/") for m in models):
            return []
        dropped = [k for k in os.environ if SECRET_NAME.search(k)]
        for k in dropped:
            del os.environ[k]
        return dropped

    def _load_role_models(self) -> dict[str, Model]:
        """The models of the roles this agent may work as (`model:` in their front matter), built
        now, while the keys are still in the environment (forget_keys drops them). An agent CLI
        chooses its own model, so the command backend loads none."""
        if self.command is not None:
            return {}
        mine = roles.may_work_as({self.role.name}, self.colony.home)
        return {r.model: self._load_model(r.model) for r in mine if r.model is not None}

    def model_for(self, role: roles.Role) -> Model | None:
        """The model a task worked as ``role`` calls: the role's own, else the agent's."""
        return self.role_models[role.model] if role.model is not None and role.model in self.role_models else self.model

    def limits_for(self, role: roles.Role) -> Limits:
        """The attempt's limits, with the role's `max_steps` (when it has one) over --max-steps."""
        limits = self.opts.limits
        return limits if role.max_steps is None else dataclasses.replace(limits, max_steps=role.max_steps)

    def price_of(self, model: Model) -> Price:
        """What a call to ``model`` costs (unknown models: nothing; their tokens still count)."""
        from harness.models.registry import price_of
        return price_of(model.name, self.cfg.model_options) or FREE

    def _load_model(self, spec: str) -> Model:
        from harness.models.registry import load_model
        return load_model(spec, api_base=self.opts.api_base or self.cfg.api_base, cooldown=self.cooldown,
                          **self.cfg.model_options)

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        lock = self._hold_id()  # first of all: before we touch the worktree or claim anything
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(beating,), daemon=True)
        beat.start()
        idle = 0.2
        try:
            while not self.stopping():
                self.sense()
                reached = self.budget_reached()
                if reached:
                    self.say(f"{reached}: claiming nothing more")
                    break
                got = self.claim_next()
                if got is None and self.sweep():
                    continue
                if got is None:
                    if self.opts.until_empty and self.nothing_left():
                        break
                    self.nap(self.until_due(idle))
                    idle = min(idle * 2, self.opts.max_idle_sleep)
                    continue
                idle = 0.2
                if self.over_budget():  # another agent's call crossed it while we were claiming
                    self.release(got[0], "colony budget reached before work started", skip=False)
                    break
                self.attempt(*got)
        finally:
            beating.set()
            beat.join(timeout=5)
            # A last beat that says so: status stops counting us, and any claim we still hold is free.
            self.beat(task=None, state="exited")
            self.env.event("agent_exit", agent=self.id)
            lock.release()  # after the goodbye beat: whoever sees the id free also sees "exited"
        return ColonyFault.exit_code if self.colony.fault_path.exists() else 0

    def attempt(self, claim: Claim, task: Task) -> None:
        self.current = task.id
        self.say(f"claimed {task.id} (generation {claim.generation}): {task.title}")
        fence: Fence | AlreadyLanded | Fenced | None = None
        landed = crashed = False
        try:
            fence = self.take_fence(claim)
            if isinstance(fence, AlreadyLanded):  # an earlier owner landed it, then died
                landed = self.landed(claim, task, fence)
            elif isinstance(fence, Fenced):
                self.say(f"lost {task.id} before starting: {fence.reason}")
            else:
                run, env = self.colony.store.run_dir(task.id, f"{claim.generation:03d}"), self.command_env(task)
                check = self.verify(task, env, run)
                landed = self.finish(claim, task, fence, self.work(task, run, env, check), check)
        except GiveUp as e:
            self.release(claim, str(e), task)
        except Stop:
            self.release(claim, "the agent was stopped before it finished; nothing landed", skip=False)
        except (Blameless, ColonyFault, NestUnreachable) as e:  # the nest's outage mid-attempt is no task's fault
            if isinstance(e, ColonyFault):
                self.fault(e)
            self.release(claim, f"not counted against the task: {e}", skip=False)
        except Exception as e:
            if fsutil.out_of_space(e):  # no task's fault: uncounted, and claim_next waits a while
                self.full_until = time.monotonic() + self.cfg.retry_backoff
                self.release(claim, f"not counted against the task: the disk is full: {e}", skip=False)
            elif isinstance(e, HarnessError):
                self.release(claim, f"{type(e).__name__}: {e}", task)
            else:  # a bug must not kill the night: log it, free the task, go on
                self.say(traceback.format_exc())
                self.release(claim, f"agent crashed: {type(e).__name__}: {e}", task)
                crashed = True
                self.stop_if_crashing(task, e)
        finally:
            if not crashed:
                self.crashes.clear()
            if isinstance(fence, Fence) and not landed:
                fence.release()  # the fence goes with the claim (released, failed, deferred)
            self.current = self.waiting = None
            self.last_outcome = None

    def stop_if_crashing(self, task: Task, e: Exception) -> None:
        """Count a crash: one on CRASHES_TO_FAULT different tasks in a row is no task's doing (a bug,
        a folder gone bad) and would fail the whole backlog in a night, so the colony stops instead."""
        self.crashes.append(task.id)
        if len(set(self.crashes)) >= CRASHES_TO_FAULT:
            self.fault(AgentCrashing(
                f"{self.id} crashed on {CRASHES_TO_FAULT} different tasks in a row ({', '.join(dict.fromkeys(self.crashes))}), last "
                f"with {type(e).__name__}: {e}. A bug or a broken environment (the disk, a folder, permissions) "
                f"rather than the tasks: the colony stops instead of failing them all. The traceback is in "
                f"{self.id}'s log; fix the cause and relaunch"))

    def take_fence(self, claim: Claim) -> Fence | AlreadyLanded | Fenced | None:
        """The right to land, joined to the claim (fence.take); None: the claim itself is the fence."""
        return take_fence(self.colony, self.ws.git, claim)

    def work(self, task: Task, run: Path, env: dict[str, str], check: Check) -> str | None:
        """Run the model until its work passes verify; the verified commit, or None if no change."""
        conflict = task.kind == "merge_conflict" and "ref" in task.meta
        if conflict:
            integrate.prepare_conflict_worktree(self.ws, task.meta["ref"])
        else:
            self.ws.prepare()
        start = self.ws.wt.resolve("HEAD")
        role = roles.for_task(self.role, task, self.colony.home)
        system, prompt = briefing.opening(self.templates, self.env, task, agent=self.id, role=role,
                                          verify=self.verify_commands(task), context=self.repo_context(task),
                                          cli=self.command is not None)
        outcome, again = self.session(task, run, env, system, prompt, role)
        self.last_outcome = outcome
        rounds = self.cfg.verify_rounds
        for round_ in range(1, rounds + 2):
            self.check_outcome(outcome)
            made = self.ws.commit_all(f"{task.title}\n\nTask-Id: {task.id}\nAgent: {self.id}\n")
            commit = made or self.ws.wt.resolve("HEAD")  # none made: an agent CLI may have committed by itself
            if commit is None or commit == start:
                return None
            # A repair round that undid the change leaves main's tree: that is no work, not a landing.
            # (A first round's own commit differs from its parent, main's tip, by construction.)
            undone = made is None or round_ > 1
            if undone and start and self.ws.tree_of(commit) == self.ws.tree_of(start):
                return None
            verdict = check(self.ws.path)
            if verdict.ok:
                return commit
            self.blame(task, start)  # a red main is not this task's failure: find out before blaming it
            if round_ > rounds:
                raise GiveUp(f"verify still failed after {rounds} repair rounds. Approach tried: "
                             f"{outcome.summary or '(no summary)'}\n{verdict.log}")
            outcome = again(outcome, briefing.feedback(self.templates, verdict.log, round_, rounds,
                                                       self.command is not None))
            self.last_outcome = outcome
        raise AssertionError("unreachable")

    def session(self, task: Task, run: Path, env: dict[str, str], system: str, prompt: str,
                role: roles.Role) -> tuple[Outcome, Callable[[Outcome, str], Outcome]]:
        """Start the work, and say how to continue it with verify feedback: our tool loop, or an agent CLI."""
        if self.command is not None:
            # An agent CLI needs its own API key: all of our environment unsandboxed, its own keys sandboxed.
            command, box = self.command, self.cli_sandbox
            cli_env = {**self.cli_env, **env} if box.bwrap is None else {**env, **self.cli_env}
            rounds = iter(range(1, 1_000))
            return (command.run(f"{system}\n{prompt}", self.ws.path, cli_env, run, 0, box),
                    lambda _, feedback: command.run(f"{system}\n{prompt}\n{feedback}", self.ws.path, cli_env, run,
                                                    next(rounds), box))
        # must_abort is also polled every second during a call: SIGTERM or STOP now ends it at once.
        metered = self.metered(task.id, role)
        outcome = run_attempt(
            metered, system, prompt,
            Toolbox(self.ws.path, env, Sink(self.env, self.id, task, self.ws.path, self.stopping),
                    sandbox=self.sandbox, allowed=role.tools, why=f"the {role.name} role's `tools:`"),
            self.limits_for(role),
            Transcript(run / "transcript.jsonl"), task_id=task.id, task_title=task.title,
            abort_check=self.must_abort, secrets=self.secrets, on_reply=metered.record, say=self.say)
        return outcome, continue_attempt

    def metered(self, task_id: str, role: roles.Role) -> Metered:
        """The role's model (model_for), its calls on our ledger under ``task_id``; a stop is heard
        while it waits or calls."""
        model = self.model_for(role)
        assert model is not None
        return Metered(model, self.ledger, self.id, task_id, self.cooldown,
                       lambda: self.stopping() or self.must_abort(), self.price_of(model))

    def sweep(self) -> bool:
        """Nothing was claimed: a role with `when_idle` may look for work instead (sweep.py). True if it did."""
        return sweep.maybe(self)

    def finish(self, claim: Claim, task: Task, fence: Fence | None, commit: str | None, check: Check) -> bool:
        """Land the work (or say why not); True when it is on main."""
        if commit is None:  # the model finished without changing anything: nothing to land
            self.unchanged(claim, task, "its work leaves the worktree as main is")
            return False
        trailers = [("Resolves", task.resolves)] if task.resolves else []
        for _ in range(LAND_ROUNDS):  # main moving under every try of a round is a busy colony, not the work
            result = self.land_once(claim, task, fence, commit, trailers, check)
            if not isinstance(result, Contended) or self.stopping():
                break
            self.say(f"landing {task.id} again: {result.why or f'main moved under each of its {result.attempts} tries'}")
        if isinstance(result, Unchanged):
            self.unchanged(claim, task, f"merged into main ({result.main[:10]}) it changes nothing")
        elif isinstance(result, (Landed, AlreadyLanded)):
            return self.landed(claim, task, result)
        elif isinstance(result, Conflict):
            self.file_conflict(claim, task, result)
        elif isinstance(result, Fenced):
            self.say(f"fenced out of {task.id}: {result.reason}; my work does not land")
        elif isinstance(result, Blocked):
            raise Stop()  # stopped while the user's checkout held the landing back
        elif isinstance(result, Contended):
            raise Blameless(result.why or f"main moved under every landing try ({LAND_ROUNDS} rounds of {result.attempts})")
        else:
            if isinstance(result, VerifyFailed):  # main moved under us: to a red tree?
                self.blame(task, self.ws.git.resolve(f"refs/heads/{self.ws.main}") or commit)
            raise GiveUp(f"could not land: {type(result).__name__}: {getattr(result, 'log', result)}")
        return False

    def land_once(self, claim: Claim, task: Task, fence: Fence | None, commit: str,
                  trailers: list[tuple[str, str]], check: Check) -> integrate.LandResult:
        """One landing round (integrate.land): main in this repository, fenced by the claim ref."""
        assert fence is not None
        return integrate.land(self.ws, commit, title=task.title, fence=fence, trailers=trailers, verify=check,
                              wait=self.wait_to_land, keep_waiting=lambda: not self.stopping())

    def unchanged(self, claim: Claim, task: Task, why: str) -> None:
        """Done, but nothing lands. Said in the log, a note and the event (``change: false``), so
        neither a person nor `report` takes it for landed work; a CLI that failed and still exited
        0 shows here, with the end of its output."""
        said = (self.last_outcome.summary if self.last_outcome else "") or "(none)"
        note = f"done without a change: {why}; nothing landed. Last output:\n{said}"
        self.say(note)
        self.env.add_note(task.id, self.id, notes.brief(note), kind="unchanged")
        self.env.done(task.id, self.id, claim.token, landed=False, change=False)

    def landed(self, claim: Claim, task: Task, result: Landed | AlreadyLanded) -> bool:
        """The task's work is on main (by us now, or by an earlier owner that died before saying so)."""
        if task.resolves:  # the original's work is on main too: it counts as done first
            conflicts.settle(self.colony, task.resolves, by=self.id, via=task.id)
        self.env.done(task.id, self.id, claim.token, commit=result.commit)
        if isinstance(result, Landed):  # its exact tree passed verify: main's new verdict, for free
            self.gate.record(result.tree, True, self.id)
        self.say(f"landed {task.id} as {result.commit[:10]}")
        return True

    def wait_to_land(self, reason: str) -> bool:
        """The user's checkout holds the landing back: say why (log, event, heartbeat), wait, retry."""
        if reason != self.waiting:
            self.waiting = reason
            self.say(reason)
            self.env.event("landing_blocked", self.current, agent=self.id, reason=reason)
            self.beat(task=self.current, waiting=reason)
        self.nap(LAND_RETRY_S)
        return not self.stopping()  # a stop gives up: the task goes back to pending, uncounted

    def file_conflict(self, claim: Claim, task: Task, c: Conflict) -> None:
        body = (f"Conflicting paths: {', '.join(c.paths)}\nBase: {c.base}\nMain (ours): {c.ours}\n"
                f"Task work (theirs, kept at {c.ref}): {c.theirs}\n\n"
                f"--- main's change since the base ---\n{c.ours_diff}\n"
                f"--- the task's change since the base ---\n{c.theirs_diff}\n")
        ctask = Task(id=f"conflict-{task.id}"[:59] + "-" + tasks.new_id("x")[-4:],
                     title=f"Resolve merge conflict: {task.title}"[:200], kind="merge_conflict",
                     priority=tasks.PRIORITIES["critical"], role="merger", outputs=list(c.paths), body=body,
                     created_by=self.id, discovered_from=task.id, resolves=task.id,
                     meta={"ref": c.ref, "base": c.base, "ours": c.ours, "theirs": c.theirs, "paths": c.paths})
        self.env.add(ctask)
        try:
            conflicts.defer(self.colony, task.id, self.id, waits_on=ctask.id, token=claim.token,
                            note=f"landing conflicted with main on {', '.join(c.paths)}; {ctask.id} resolves it")
        except NotOwner:  # reaped meanwhile, or its resolution already landed it (conflicts.settle)
            self.say(f"{task.id} is no longer mine; {ctask.id} resolves it")
            return
        self.say(f"conflict on {task.id}: filed {ctask.id}")

    # -- helpers --------------------------------------------------------------------------------------
    def check_outcome(self, outcome: Outcome) -> None:
        # Finished work is verified and landed even past the budget: landing costs no model call.
        if not outcome.finished and self.must_abort():
            raise Stop()
        if isinstance(outcome.error, ColonyFault):
            raise outcome.error
        if self.command is not None and not outcome.finished:
            # The CLI's own error is at the end of its output (a warning is often its first line).
            self.say(f"the agent CLI stopped ({outcome.stopped_by}); its last lines:\n{outcome.summary}")
        if isinstance(outcome.error, ModelTransient):
            if self.command is not None:  # no provider of ours met the outage: the colony waits it out here
                self.cooldown.outage(30.0, 600.0)
            raise Blameless(f"the model endpoint is unreachable or failing (every retry spent), so the colony "
                            f"cools down: {outcome.error}")
        if not outcome.finished and self.command is not None:
            what = {"stall": "stalled", "time": "ran out of time"}.get(outcome.stopped_by or "", "failed")
            raise GiveUp(f"the agent CLI {what}. Its last lines:\n{outcome.summary or '(no output)'}")
        if outcome.stopped_by == "stuck":  # the model says it cannot: a counted release, its summary the note
            raise GiveUp(f"the model could not do it: {outcome.summary or '(no summary)'}")
        if not outcome.finished:
            why = f"{type(outcome.error).__name__}: {outcome.error}" if outcome.error else f"hit the {outcome.stopped_by} limit"
            raise GiveUp(f"the model did not finish ({why}). Last summary: {outcome.summary or '(none)'}")

    def repo_verify(self) -> str:
        return self.opts.verify if self.opts.verify is not None else self.cfg.verify

    def verify_commands(self, task: Task) -> list[str]:
        return [c for c in (self.repo_verify(), task.verify) if c and c.strip()]

    def verify(self, task: Task, env: dict[str, str], run: Path) -> Check:
        def check(worktree: Path) -> Verdict:
            return run_verify(self.verify_commands(task), worktree, env, self.cfg.verify_timeout, run / "verify.log",
                              base=f"refs/heads/{self.ws.main}", sandbox=self.sandbox)
        return check

    def command_env(self, task: Task) -> dict[str, str]:
        """The environment of the model's commands and of verify: ours, minus secrets and the
        harness's own settings, plus who we are. No STIGMERGY_HOME: a target whose tests use this
        package (ours do) would write into the live colony."""
        env = {k: v for k, v in os.environ.items() if not SECRET_NAME.search(k) and not k.startswith("STIGMERGY_")}
        env.update(STIGMERGY_AGENT=self.id, STIGMERGY_TASK=task.id, STIGMERGY_ROLE=self.role.name,
                   STIGMERGY_REPO=str(self.colony.repo))
        return env

    def repo_context(self, task: Task) -> Context:
        return briefing.repo_context(self.ws.wt, self.ws.main, task, self.cfg)

    def release(self, claim: Claim, note: str, task: Task | None = None, skip: bool = True) -> None:
        if len(note) > notes.NOTE_CHARS:  # the whole text to the run's folder, a brief to the note
            log = self.colony.store.run_dir(claim.task_id, f"{claim.generation:03d}") / "release.log"
            with open(log, "a") as f:
                f.write(note + "\n")
            where = f"\n(whole text: {log.relative_to(self.colony.home)})"
            note = notes.brief(note, notes.NOTE_CHARS - len(where)) + where
        try:
            if task is not None and task.skip_count + 1 >= self.cfg.max_attempts:
                # An impossible task must not burn the budget all night: after max_attempts it fails.
                self.env.fail(claim.task_id, self.id, f"gave up after {task.skip_count + 1} attempts: {note}",
                                 token=claim.token)
                self.say(f"failed {claim.task_id} after {task.skip_count + 1} attempts")
                return
            self.env.release(claim.task_id, self.id, note=note, token=claim.token, skip=skip)
            self.say(f"released {claim.task_id}: {note.splitlines()[0] if note else ''}")
        except NotOwner:
            self.say(f"{claim.task_id} is no longer mine (reaped or taken over); nothing to release")

    # -- faults that are not the task's ------------------------------------------------------------
    def claim_next(self) -> tuple[Claim, Task] | None:
        """Claim what the colony's state allows: nothing while it cools down after an outage or
        main is being checked, only main's fix while main is red, else the best ready task."""
        self.hold = None
        if self.cooldown.remaining() > 0:
            return None
        short = self.short_of_room()
        if short != self.waiting:  # said once; the beats carry it (`status` shows it) while it lasts
            self.waiting = short
            if short:
                self.say(short)
                with contextlib.suppress(OSError):  # a disk full to the last byte takes no event
                    self.env.event("disk_low", agent=self.id, reason=short)
        if short:
            self.hold = Hold(short)
            return None
        try:
            decision = self.gatekeep()
        except ColonyFault as e:
            self.fault(e)
            return None
        if isinstance(decision, Hold):
            self.hold = decision
            return None
        if isinstance(decision, Fix):
            got = self.colony.try_claim(decision.task, self.id, pid=os.getpid())
            return got if isinstance(got, tuple) else None
        return self.env.claim(self.id, self.pool_role(), pid=os.getpid())

    def short_of_room(self) -> str | None:
        """Why the disk lets us claim nothing now: less than min_free_mb free, or it was full during
        our last attempt less than retry_backoff seconds ago (else a disk full to the last byte,
        which statvfs may not show under min_free_mb, would be met by attempt after attempt)."""
        if (left := self.full_until - time.monotonic()) > 0:
            return f"the disk was full during the last attempt: claiming nothing for {left:.0f} s (retry_backoff)"
        return fsutil.short_of_space([self.colony.home, self.ws.path], self.cfg.min_free_mb)

    def pool_role(self) -> str | None:
        """The role picking favours: ours; none for an `any` agent, which takes each task's role."""
        return None if self.role.name == roles.ANY else self.role.name

    def gatekeep(self) -> Decision:
        """Main's verdict, from the cache or (by exactly one agent per tree) a run on main itself."""
        if self.gate.command is None:
            return Go()
        tree = self.gate.tree()
        verdict = self.gate.verdict(tree)
        if verdict is None:
            if not self.gate.begin_check(tree, self.id):
                return Hold("another agent is checking main")
            marked = tree
            try:
                self.ws.prepare()  # no claim held, no model call: verify on main as it is
                tree = self.ws.wt.run("rev-parse", "HEAD^{tree}").strip()  # main may have moved meanwhile
                log = self.gate.dir / f"{self.gate.key(tree)}.log"
                result, code = run_checked([self.gate.command], self.ws.path, self.command_env(Task(
                    id="main-check", title="verify main")), self.cfg.verify_timeout, log,
                    self.sandbox)
                self.say(f"main ({tree[:12]}) is {'green' if result.ok else 'red'} under `{self.gate.command}`")
                verdict = self.gate.record(tree, result.ok, self.id, code, result.log, str(log))
            except (HarnessError, OSError) as e:  # a git or disk hiccup: try again on the next pick
                self.say(f"could not check main: {type(e).__name__}: {e}")
                return Hold("main could not be checked")
            finally:
                self.gate.end_check(marked)
        return self.gate.decide(tree, verdict, self.id)

    def blame(self, task: Task, base: str | None) -> None:
        """A candidate failed verify. Its base known green: the task's failure (return). Known red,
        or not known (checked on the next pick, before anything is claimed): not the task's."""
        if base is None or self.gate.command is None:
            return
        tree = self.ws.git.run("rev-parse", f"{base}^{{tree}}").strip()
        green = self.gate.known_green(tree)
        if green or task.id == self.gate.red_task(tree):
            return
        raise Blameless(f"main ({tree[:12]}) is {'red' if green is False else 'not known to pass verify'}: "
                        "nothing of this attempt is held against the task")

    def fault(self, e: ColonyFault) -> None:
        laid = faults.record(self.colony.home, e, self.id, self.secrets)
        self.say(f"configuration fault, the colony stops: {laid['message']}")

    def nothing_left(self) -> bool:
        """For --until-empty: no task is ready or active, or main is red and its fix attempts are spent."""
        if self.hold is not None and self.hold.red and not self.env.ids("active"):
            return True
        return self.env.idle() and not sweep.running(self.colony)  # a sweep may yet file work

    def sense(self) -> None:
        if time.monotonic() - self._reaped_at > self.cfg.lease_ttl / 4:
            self._reaped_at = time.monotonic()
            for tid in self.env.reap(self.id):
                self.say(f"reaped stale claim on {tid}")

    def stopping(self) -> bool:
        if not self.signalled and self.deadline.passed() and deadline.lay_stop(self.colony.stop_path):
            # Ours to enforce, launcher or not: the plain STOP lets every agent finish its task.
            self.say(f"the colony's deadline (--max-hours) has passed: laid {self.colony.stop_path}")
            self.env.event("deadline_passed", agent=self.id)
        return self.signalled or self.stop_asked()

    def stop_asked(self) -> bool:
        return self.env.stop_requested()

    def _hold_id(self) -> PidLock:
        """One live process per agent id: two in one worktree would commit each other's files."""
        lock = PidLock(agent_lock(self.colony.home, self.id))
        holder = lock.acquire()
        if holder is not None:
            raise AlreadyRunning(f"agent {self.id} is already running ({holder.describe()}): "
                                 "stop it or choose another --id")
        return lock

    def must_abort(self) -> bool:
        """Checked before every model call and every second during one (harness.interrupt): abort
        now, not after the task (SIGTERM, STOP now, budget, FAULT)."""
        if self.signalled or self.over_budget() or self.colony.fault_path.exists():
            return True
        try:
            return self.colony.stop_path.read_text().strip() == "now"
        except FileNotFoundError:
            return False

    def over_budget(self) -> bool:
        return self.budget_reached() is not None

    def budget_reached(self) -> str | None:
        """Which colony budget the ledgers have reached ("colony budget of $5 reached"), or None."""
        if self.budget is None and self.budget_tokens is None:
            return None  # no ledger read at all: this runs before every model call
        return budget_reached(ledger_totals(self.colony.home / "ledger"), self.budget, self.budget_tokens)

    def nap(self, seconds: float) -> None:
        """Back off, but wake when the event log grows (a task was added or released), a stop is
        asked or ``seconds`` pass. Looked at every 0.2 s for the first 2 s of a nap, then every
        second: each look is a few stats, but waking 5 times a second is what idle agents spent
        (16 of them 2.4 % of a core over a minute; 1.2 % this way), and a second is soon enough."""
        start, size = time.monotonic(), self._log_size()
        while (left := start + seconds - time.monotonic()) > 0 and not self.stopping() and self._log_size() == size:
            time.sleep(min(NAP_STEP if time.monotonic() - start < NAP_QUICK else NAP_SLOW_STEP, left))

    def until_due(self, idle: float) -> float:
        """How long to nap: `idle`, or less when a task's back-off ends sooner (that writes no event)."""
        due = self.colony.pool(self.pool_role(), partial=True).next_due()  # the claims' own index
        return idle if due is None else max(0.05, min(idle, due - time.time()))

    def _log_size(self) -> int:
        try:
            return os.stat(self.colony.store.events_path).st_size
        except FileNotFoundError:
            return 0

    def _beat(self, stop: threading.Event) -> None:
        while True:
            try:
                self.beat(task=self.current, **({"waiting": self.waiting} if self.waiting else {}))
            except (OSError, HarnessError) as e:  # a full disk or a nest out of reach must not kill the
                # thread that keeps our lease: the next beat tries again
                self.say(f"heartbeat failed: {e}")
            if stop.wait(self.cfg.heartbeat_interval):
                return

    def beat(self, **info: Any) -> None:
        """Renew our claims: we are alive (``info`` is shown by status)."""
        self.env.heartbeat(self.id, pid=os.getpid(), role=self.role.name, **info)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signalled = True
        self._abort_commands()

    def _abort_commands(self) -> None:
        """SIGTERM the process group of every command we are running (a model's bash call, verify,
        an agent CLI: each runs in a session of its own), so a stop does not wait for a long test
        suite. Git calls share our group and are left to finish: they are short."""
        me, mine = os.getpid(), os.getpgrp()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                ppid, pgrp = int(fields[1]), int(fields[2])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me and pgrp != mine:
                try:
                    os.killpg(pgrp, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass

    def say(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {self.id}: {message}", file=sys.stderr, flush=True)
