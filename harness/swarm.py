"""The launcher: start N independent agent processes, restart the ones that crash, stop them together.

    python -m harness [run] --agents 16 --repo ./target [--roles coder=12,merger=2] [--until-empty]

It never reads, assigns or orders tasks: each agent is a plain ``python -m harness agent run``
process that finds its own work in the colony. Kill the launcher (even with SIGKILL) and the
agents carry on, because each runs in its own session with its output in a file, not a pipe.
One launcher per colony (``launcher.lock``, an flock: a second one exits 2 naming the first).
What the launcher adds is supervision:

- roles: ``--roles coder=12,merger=2`` with ``--agents 16`` gives 12 coders, 2 mergers and 2 more
  coders (the rest is filled with ``coder``); counts that add up to more than ``--agents`` are
  refused; without ``--agents`` the count is the sum of the roles (or 4 when no roles are given).
  Without ``--roles`` the mix is ``default_mix`` (all coders below 4 agents, then a merger per 8,
  a tester from 8, a critic from 12). ``any`` agents (``--roles any=4``) take each task's role
  (roles.py). Ids are ``<role>-NN`` (``coder-01``, ``merger-02``), numbered per role.
- restarts: an agent that exits non-zero or is killed by a signal is started again after 1 s,
  2 s, 4 s ... (capped at 60 s); the delay starts over once an agent has run for a minute. Exit 0
  means the agent is done (STOP, SIGTERM, or --until-empty with nothing left) and is not restarted;
  exit 2 means it refused its arguments (bad --model, config), which no restart can fix (the
  launcher quotes the agent's own error line from its agent.log). An agent
  that crashes ``crash_limit`` (3) times in a row before it ever heartbeat (an import error, a
  broken install) is not restarted again: the launcher says so with the tail of its agent.log and,
  once no agent is left, exits 1.
- adoption: an agent id whose lock (``agents/<id>/lock``) a live process still holds, say one
  a SIGKILLed launcher left running, is not started again beside it but supervised by polling
  the lock: it gets the stop signals (only while the lock still names it, through a pidfd, so a
  recycled pid is never signalled), and when it goes it ended cleanly if its last heartbeat says
  ``exited``, else it crashed and is restarted with the usual back-off.
- stopping: the first SIGINT/SIGTERM sends SIGTERM to every agent (they abort the current step,
  release their claim and exit 0), a second one sends SIGKILL. ``.stigmergy/STOP`` appearing, or
  ``--max-hours`` passing (written to ``deadline.json``, which every agent honours by itself, so
  it holds with no launcher; the first to see it pass lays STOP) ends restarts and waits for the
  agents to leave. With ``--until-empty`` (passed on to the agents) it ends when every agent has
  exited 0. A STOP or deadline left over from an earlier run is removed at launch, or the new
  agents would leave at once.
- SIGHUP (a closed terminal) is not a stop: the launcher carries on, writing to its log only.
- faults: ``.stigmergy/FAULT`` (a configuration fault an agent met: see faults.py) stops restarts
  like STOP; once the agents are gone the launcher prints its message and exits 2. A FAULT from an
  earlier run is removed at launch, and red verdicts of main are dropped so main is checked again.
- progress: a line of done/total, agents alive, cost and ETA, redrawn in place on a terminal,
  else said as a plain line when the finished count changes and at least once a minute (progress.py).
- summary: when the agents are gone, what landed, failed and is left, the conflicts, the commits
  and the spend (summary.py, which the demo shows too); a line more when a colony budget (USD or
  tokens) was reached, which is why work is left.

Output: one line per lifecycle change on stderr and in ``<home>/launcher.log``; each agent's
stdout and stderr are appended to ``<home>/agents/<id>/agent.log``; events ``launch``,
``agent_exit``, ``agent_restart`` and ``agent_adopt`` go to the colony's event log. Idle cost is
one ``waitpid`` per agent (one flock probe per adopted agent) every ``poll`` seconds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from harness import agentlog, deadline, faults, gate, roles, summary
from harness.colony import Colony
from harness.errors import AlreadyRunning, HarnessError, UsageError
from harness.launchlog import LauncherLog
from harness.meter import budget_reached, ledger_totals
from harness.pidlock import Holder, PidLock, agent_lock, agent_processes, holder, launcher_lock
from harness.progress import Progress
from harness.redact import redact, secret_env

DEFAULT_ROLE = "coder"
DEFAULT_AGENTS = 4
USAGE_EXIT = 2  # an agent's "bad arguments" exit: restarting cannot help
CRASH_EXIT = 1  # an agent kept crashing at start-up and was given up on
FAULT_EXIT = 2  # the colony stopped on a configuration fault (.stigmergy/FAULT): fix it, relaunch
_ROLE_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,40}\Z")  # leaves room for "-NN" in a 64-char id


@dataclass(frozen=True)
class AgentSpec:
    id: str
    role: str


@dataclass
class Options:
    """Everything `run` needs; the CLI maps its flags one to one onto these fields."""

    repo: Path
    agents: int | None = None
    model: str | None = None
    roles: str | None = None
    max_hours: float | None = None
    until_empty: bool = False
    workspaces: Path | None = None
    verify: str | None = None
    branch: str | None = None  # the landing branch, over config.yaml's `branch:`
    agent_args: Sequence[str] = ()  # more `agent run` flags, passed to every agent as they are
    nest: str | None = None  # the agents' environment is this nest (their --nest is in agent_args)
    id_prefix: str = ""  # every agent id starts with it (a nest's host: its name)
    # The command before the agent's own flags; tests of the launcher's supervision may stand in
    # a smaller program. Default: this interpreter running `python -m harness agent run`.
    agent_cmd: Sequence[str] | None = None
    poll: float = 0.5
    backoff_start: float = 1.0
    backoff_cap: float = 60.0
    healthy_after: float = 60.0
    crash_limit: int = 3  # crashes in a row before the first heartbeat that end an agent's restarts
    # The colony budgets, over config.yaml's: for the summary only; the agents hold to them by
    # themselves (through agent_args or config.yaml).
    budget_usd: float | None = None
    budget_tokens: int | None = None


def parse_roles(text: str | None) -> dict[str, int]:
    """``coder=12,merger=2`` -> {"coder": 12, "merger": 2}; order is kept (it is the id order)."""
    counts: dict[str, int] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, num = part.partition("=")
        name = name.strip()
        if not sep or not num.strip().isdigit():
            raise UsageError(f"--roles: {part!r} is not ROLE=COUNT (e.g. --roles coder=12,merger=2)")
        if not _ROLE_RE.match(name):
            raise UsageError(f"--roles: {name!r} is not a valid role name: use a-z, 0-9 and '_', "
                             "starting with a letter or digit")
        if name in counts:
            raise UsageError(f"--roles: role {name!r} is given twice")
        counts[name] = int(num)
    return counts


def default_mix(total: int) -> dict[str, int]:
    """The roles of ``total`` agents when --roles is not given: coders, and from 4 agents on the
    specialists that carry a long run: a merger per 8 agents (at least one: conflicts grow with
    the square of the agents), a tester from 8, a critic from 12. Coders come first, so their ids
    (coder-01 ...) are the same as in a colony of coders only. 16 -> coder=12, merger=2, tester=1, critic=1."""
    if total < 4:
        return {DEFAULT_ROLE: total}
    rest = {"merger": max(1, total // 8), "tester": int(total >= 8), "critic": int(total >= 12)}
    return {DEFAULT_ROLE: total - sum(rest.values()), **{k: n for k, n in rest.items() if n}}


def plan(agents: int | None, roles: str | None, prefix: str = "") -> list[AgentSpec]:
    """The agents to run: the roles asked for, then coders up to ``agents``; without --roles, the
    default mix. Their ids start with ``prefix`` (a host of a nest: nest.id_prefix)."""
    counts = {name: n for name, n in parse_roles(roles).items() if n > 0}
    asked = sum(counts.values())
    total = agents if agents is not None else (asked or DEFAULT_AGENTS)
    if total < 1:
        raise UsageError(f"--agents must be at least 1, got {total}")
    if asked > total:
        raise UsageError(f"--roles asks for {asked} agents but --agents is {total}: raise --agents or lower the counts")
    if roles is None:
        counts = default_mix(total)
    elif asked < total:
        counts[DEFAULT_ROLE] = counts.get(DEFAULT_ROLE, 0) + total - asked
    specs = []
    for role, n in counts.items():
        width = max(2, len(str(n)))
        specs += [AgentSpec(f"{prefix}{role}-{i:0{width}d}", role) for i in range(1, n + 1)]
    return specs


def role_models(plan: list[AgentSpec], home: Path) -> tuple[str, ...]:
    """The models named by the roles these agents work as (an `any` agent may take any role)."""
    return tuple(r.model for r in roles.may_work_as({a.role for a in plan}, home) if r.model is not None)


@dataclass
class _Agent:
    """One supervised agent: its current process, and when to start it again after a crash."""

    spec: AgentSpec
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = 0.0  # the next back-off; 0 until the first crash
    restart_at: float | None = None
    restarts: int = 0
    exit_code: int | None = None  # the last exit, once it is not going to run again
    # An agent an earlier launcher started that still holds its id: supervised, not started again.
    adopted: Holder | None = None
    pidfd: int | None = None  # the adopted process itself, for signals no recycled pid can receive
    early_crashes: int = 0  # crashes in a row before the process ever heartbeat (quickly, at start-up)
    gave_up: str | None = None  # why it is not restarted any more


class Swarm:
    def __init__(self, colony: Colony, options: Options, out: TextIO | None = None) -> None:
        self.colony = colony
        self.opts = options
        self.log = LauncherLog(colony.home / "launcher.log", out if out is not None else sys.stderr, colony.repo)
        self.progress = Progress(colony, self.log)
        self.began = time.monotonic()
        self.agents = [self._agent(spec) for spec in plan(options.agents, options.roles, options.id_prefix)]
        self.signals = 0
        self.hangups = 0
        self.stop_reason: str | None = None

    # -- what one agent runs --------------------------------------------------------------------------
    def _agent(self, spec: AgentSpec) -> _Agent:
        o = self.opts
        argv = [*(o.agent_cmd or (sys.executable, "-m", "harness", "agent", "run")),
                "--id", spec.id, "--role", spec.role, "--repo", str(self.colony.repo)]
        if o.model:
            argv += ["--model", o.model]
        if o.workspaces:
            argv += ["--workspaces", str(Path(o.workspaces).resolve())]
        if o.verify:
            argv += ["--verify", o.verify]
        if o.branch:
            argv += ["--branch", o.branch]
        if o.until_empty:
            argv.append("--until-empty")
        argv += o.agent_args
        return _Agent(spec, argv, self.colony.home / "agents" / spec.id / "agent.log")

    def _start(self, agent: _Agent) -> None:
        agent.log.parent.mkdir(parents=True, exist_ok=True)
        if agentlog.rotate(agent.log, int(self.colony.config.log_max_bytes)):  # only here: see agentlog.py
            self._say(f"rotated {agent.log} (over {self.colony.config.log_max_bytes} bytes) to {agent.log.name}.1")
        env = {**os.environ, "STIGMERGY_AGENT": agent.spec.id, "STIGMERGY_ROLE": agent.spec.role,
               "STIGMERGY_REPO": str(self.colony.repo)}
        with open(agent.log, "ab") as log:
            log.write(f"--- launcher {os.getpid()}: starting {agent.spec.id} at {time.ctime()}\n".encode())
            log.flush()
            # Own session: a Ctrl-C on the terminal reaches only the launcher, which decides what
            # the agents get; and nothing ties an agent's life to the launcher's.
            agent.proc = subprocess.Popen(agent.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          env=env, start_new_session=True)
        agent.started = time.monotonic()
        agent.restart_at = None

    def _say(self, text: str) -> None:
        self.log.say(text)

    # -- agents an earlier launcher left running ------------------------------------------------------
    def _let_start(self, agent: _Agent, patience: float = 15.0) -> None:
        """An earlier launcher killed just after starting this agent leaves a process that has not
        taken its lock yet: wait for it to take it (then it is adopted) or to go, never start a twin."""
        lock, give_up = agent_lock(self.colony.home, agent.spec.id), time.monotonic() + patience
        while holder(lock) is None and time.monotonic() < give_up:
            if agent.spec.id not in agent_processes(self.colony.repo):
                return
            time.sleep(0.05)

    def _adopt(self, agent: _Agent) -> bool:
        """Supervise the live process holding this agent's id, if there is one, instead of starting
        a second one beside it in the same worktree."""
        lock = agent_lock(self.colony.home, agent.spec.id)
        found = holder(lock)
        if found is None or not found.pid:
            return False
        pidfd: int | None = None
        if found.host == self.colony.host:
            try:
                pidfd = os.pidfd_open(found.pid)
            except ProcessLookupError:
                return False  # held, but not by the process it names: nothing we could supervise
            except OSError:
                pass  # a kernel without pidfds: the lock check alone guards our signals
        if holder(lock) != found:  # it went away meanwhile: the pidfd may name a recycled pid
            if pidfd is not None:
                os.close(pidfd)
            return False
        agent.adopted, agent.pidfd, agent.proc, agent.restart_at = found, pidfd, None, None
        agent.started = time.monotonic() - max(0.0, time.time() - found.started)
        self.colony.event("agent_adopt", None, agent=agent.spec.id, pid=found.pid, host=found.host,
                          since=found.started)
        self._say(f"{agent.spec.id} is still running ({found.describe()}): adopted, not started again")
        return True

    def _warn_strays(self) -> None:
        """Live agents of an earlier launch that this one does not plan (a smaller --agents)."""
        planned = {a.spec.id for a in self.agents}
        for lock in sorted((self.colony.home / "agents").glob("*/lock")):
            found = holder(lock) if lock.parent.name not in planned else None
            if found is not None:
                self._say(f"{lock.parent.name} is still running ({found.describe()}) but is not one of this "
                          f"launch's agents: it carries on unsupervised (`kill {found.pid}` stops it)")

    def _still_held(self, agent: _Agent) -> bool:
        return agent.adopted is not None and holder(agent_lock(self.colony.home, agent.spec.id)) == agent.adopted

    def _check_adopted(self, agent: _Agent, now: float) -> None:
        """An adopted agent is gone once its lock is free; its last heartbeat says how it went."""
        gone = agent.adopted
        if gone is None or self._still_held(agent):
            return
        agent.adopted = None
        if agent.pidfd is not None:
            os.close(agent.pidfd)
            agent.pidfd = None
        beat = self.colony.last_beat(agent.spec.id) or {}
        clean = beat.get("state") == "exited" and beat.get("pid") == gone.pid
        ran = now - agent.started
        self.colony.event("agent_exit", None, agent=agent.spec.id, pid=gone.pid, code=0 if clean else None,
                          ran_s=round(ran, 1), by="launcher", adopted=True)
        if clean or self.stop_reason is not None:
            agent.exit_code = 0 if clean else None
            self._say(f"{agent.spec.id} exited (adopted pid {gone.pid}" + ("" if clean else
                      ", without its goodbye heartbeat") + ")")
            return
        agent.delay = self._back_off(agent, ran)
        agent.restart_at = now + agent.delay
        self._say(f"{agent.spec.id} (adopted pid {gone.pid}) died without its goodbye heartbeat after "
                  f"{ran:.1f}s; restarting in {agent.delay:g}s")

    def _signal_adopted(self, agent: _Agent, sig: signal.Signals) -> None:
        # Not our child: its pid may have been reused since. Signal only while the lock still names
        # it, through the pidfd taken at adoption (which never names another process).
        if agent.adopted is None or agent.adopted.host != self.colony.host or not self._still_held(agent):
            return
        try:
            if agent.pidfd is not None:
                signal.pidfd_send_signal(agent.pidfd, sig)
            else:
                os.kill(agent.adopted.pid, sig)
        except ProcessLookupError:
            pass

    # -- the supervision loop -------------------------------------------------------------------------
    def run(self) -> int:
        lock = PidLock(launcher_lock(self.colony.home))  # before anything: a second launcher touches nothing
        running = lock.acquire()
        if running is not None:
            raise AlreadyRunning(f"a launcher is already running on this colony ({running.describe()}): stop it "
                                 f"(Ctrl-C, SIGTERM, or `stigmergy stop --repo {self.colony.repo}`) or wait for it")
        if self.colony.stop_path.exists():
            self.colony.stop_path.unlink(missing_ok=True)
            self._say(f"removed {self.colony.stop_path} left from an earlier stop")
        if deadline.clear(self.colony.home):
            self._say(f"removed {deadline.deadline_path(self.colony.home)} left from an earlier run")
        self._clear_faults()
        until = None
        if self.opts.max_hours is not None:  # in the environment: the agents hold it without us
            until = time.time() + self.opts.max_hours * 3600
            deadline.write(self.colony.home, until, os.getpid())
        restore = self._install_signals()
        try:
            starting = agent_processes(self.colony.repo)
            for agent in self.agents:
                if agent.spec.id in starting:
                    self._let_start(agent)
                if not self._adopt(agent):
                    self._start(agent)
            self._warn_strays()
            self.colony.event("launch", None, launcher=os.getpid(), until_empty=self.opts.until_empty,
                              max_hours=self.opts.max_hours, model=self.opts.model,
                              agents={a.spec.id: {"role": a.spec.role, "pid": self._pid(a),
                                                  "adopted": a.adopted is not None} for a in self.agents})
            self._say(f"started {len(self.agents)} agent(s): " + ", ".join(a.spec.id for a in self.agents)
                      + f"; logs in {self.colony.home / 'agents'}")
            handled = 0
            while True:
                if self.hangups and self.log.terminal is not None:
                    self.log.terminal_gone("SIGHUP")
                if self.signals > handled:
                    handled = self.signals
                    self._on_signal(handled)
                if self.stop_reason is None:
                    if self.colony.fault_path.exists():
                        self._stopping("configuration fault (FAULT): agents release their claims and exit")
                    # The deadline before STOP: an agent may have laid STOP for it already.
                    elif until is not None and time.time() >= until:
                        laid = deadline.lay_stop(self.colony.stop_path)
                        self._stopping(f"--max-hours {self.opts.max_hours} passed: "
                                       f"{'created' if laid else 'found'} {self.colony.stop_path}")
                    elif self.colony.stop_path.exists():
                        self._stopping("STOP file found; agents finish and exit")
                self._reap_exits()
                if self.stop_reason is None:
                    self._restart_due()
                if not any(a.proc or a.adopted or a.restart_at is not None for a in self.agents):
                    break
                if self.opts.nest is None:  # a host's own colony holds no tasks: `status --nest` tells
                    self.progress.tick()
                time.sleep(self.opts.poll)
        finally:
            restore()
            if self.opts.nest is None:
                self.progress.finish()
            deadline.clear(self.colony.home, launcher=os.getpid())  # nobody is left to hold to it
            lock.release()
        self._summary()
        fault = faults.read(self.colony.home)
        if fault is not None:
            self._say(f"the colony stopped on a configuration fault: {fault.get('message')}")
            return FAULT_EXIT
        main = gate.main_now(self.colony)
        if main and main["current"] and not main["ok"]:  # e.g. --until-empty with main's fix attempts spent
            self._say(f"main is red: `{main['command']}` fails on unmodified main ({main['task']} holds the "
                      "output); fix main or the verify command, then launch again")
            return FAULT_EXIT
        refused: dict[str, list[str]] = {}  # the agent's own words -> the agents that said them
        for a in self.agents:
            if a.exit_code == USAGE_EXIT:
                refused.setdefault(self._refusal(a), []).append(a.spec.id)
        for why, ids in refused.items():
            self._say(f"agent(s) {', '.join(ids)} refused their arguments (exit 2): {why} (from "
                      f"{self.colony.home / 'agents' / ids[0] / 'agent.log'})")
        if refused:
            return USAGE_EXIT
        crashed = [a.spec.id for a in self.agents if a.gave_up]
        if crashed:
            self._say(f"agent(s) {', '.join(crashed)} kept crashing at start-up and were not restarted: "
                      "see their agent.log, fix the cause, then launch again")
            return CRASH_EXIT
        self._say("all agents have exited")
        return 0

    def _clear_faults(self) -> None:
        """A FAULT from an earlier run would stop the new colony at once, and a red verdict would
        keep it waiting on an environment the user may have fixed: both are checked afresh."""
        old = faults.clear(self.colony.home)
        if old is not None:
            self._say(f"removed {self.colony.fault_path} left from an earlier run ({old.get('kind')})")
        gate.forget_red(self.colony.home)

    def _summary(self) -> None:
        try:
            if self.opts.nest is not None:
                self._say(self._nest_summary(self.opts.nest))
            else:
                for line in summary.lines(summary.collect(self.colony, time.monotonic() - self.began)):
                    self._say(line)
            o, cfg = self.opts, self.colony.config
            reached = budget_reached(ledger_totals(self.colony.home / "ledger"),
                                     o.budget_usd if o.budget_usd is not None else cfg.budget_usd,
                                     o.budget_tokens if o.budget_tokens is not None else cfg.budget_tokens)
            if reached:  # why work is left: the colony did not fail, it was told where to stop
                self._say(f"{reached}: agents claimed nothing more")
        except (OSError, ValueError, HarnessError) as e:  # the account is a courtesy: it must not change the exit
            self._say(f"no summary: {e}")

    def _nest_summary(self, url: str) -> str:
        """The account of a host of a nest: the nest's tasks, and this host's spend."""
        from harness.nest import Nest
        from harness.redact import redact
        counts = Nest(url).survey()["tasks"]
        spent = ledger_totals(self.colony.home / "ledger")
        return (f"finished in {time.monotonic() - self.began:.1f}s; the nest {redact(url)} has "
                + ", ".join(f"{n} {status}" for status, n in counts.items())
                + f"; this host spent ${spent.cost_usd:.4f} ({spent.tokens} tokens). `stigmergy status --nest URL` "
                "shows every host's agents")

    def _pid(self, agent: _Agent) -> int | None:
        return agent.proc.pid if agent.proc else agent.adopted.pid if agent.adopted else None

    def _reap_exits(self) -> None:
        now = time.monotonic()
        for agent in self.agents:
            if agent.adopted is not None:
                self._check_adopted(agent, now)
            if agent.proc is None:
                continue
            code = agent.proc.poll()
            if code is None:
                continue
            pid, ran = agent.proc.pid, now - agent.started
            agent.proc = None
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
            self.colony.event("agent_exit", None, agent=agent.spec.id, pid=pid, code=code, ran_s=round(ran, 1),
                              by="launcher")
            if code == USAGE_EXIT and self._adopt(agent):
                continue  # it found its id held by a live agent a dead launcher had started
            if code == 0 or code == USAGE_EXIT or self.stop_reason is not None:
                agent.exit_code = code
                self._say(f"{agent.spec.id} exited ({how})")
                continue
            if self._crash_loop(agent, pid, ran, how):
                continue
            agent.delay = self._back_off(agent, ran)
            agent.restart_at = now + agent.delay
            self._say(f"{agent.spec.id} died ({how}) after {ran:.1f}s; restarting in {agent.delay:g}s")

    def _crash_loop(self, agent: _Agent, pid: int, ran: float, how: str) -> bool:
        """A process that dies quickly before its first heartbeat never got going (an import error,
        a broken environment): restarting it cannot help, and --until-empty would wait forever.
        After ``crash_limit`` of those in a row, give up on it; True when we did."""
        beat = self.colony.last_beat(agent.spec.id) or {}
        early = ran < self.opts.healthy_after and beat.get("pid") != pid
        agent.early_crashes = agent.early_crashes + 1 if early else 0
        if agent.early_crashes < self.opts.crash_limit:
            return False
        agent.exit_code, agent.gave_up = CRASH_EXIT, f"{agent.early_crashes} crashes in a row at start-up"
        self.colony.event("agent_given_up", None, agent=agent.spec.id, crashes=agent.early_crashes, last=how)
        self._say(f"{agent.spec.id} died ({how}) after {ran:.1f}s, {agent.gave_up} before it ever "
                  f"heartbeat: not restarting it. The end of {agent.log}:\n{self._log_tail(agent)}")
        return True

    @staticmethod
    def _refusal(agent: _Agent, lines: int = 3) -> str:
        """Why an agent refused to start, in its own words: the last `stigmergy: ...` line its
        latest start wrote to agent.log (where the CLI puts the error), else that start's last lines."""
        try:
            text = agent.log.read_text(errors="replace")
        except OSError as e:
            return f"its agent.log is unreadable ({e})"
        every = text.splitlines()
        starts = [i for i, line in enumerate(every) if line.startswith("--- launcher ")]
        own = every[starts[-1] + 1:] if starts else every  # this start's lines, not an earlier run's
        said = [line.removeprefix("stigmergy: ").strip() for line in own if line.startswith("stigmergy: ")]
        why = said[-1] if said else " | ".join(line.strip() for line in own[-lines:] if line.strip())
        return redact(why or "its agent.log says nothing", secret_env(os.environ).values())

    @staticmethod
    def _log_tail(agent: _Agent, lines: int = 12) -> str:
        try:
            text = agent.log.read_text(errors="replace")
        except OSError as e:
            return f"    (unreadable: {e})"
        return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])

    def _back_off(self, agent: _Agent, ran: float) -> float:
        """A crash: back off exponentially, but an agent that had been healthy for a while starts
        over at the shortest delay (this crash is news, not a crash loop)."""
        if agent.delay == 0 or ran >= self.opts.healthy_after:
            return self.opts.backoff_start
        return min(agent.delay * 2, self.opts.backoff_cap)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for agent in self.agents:
            if agent.restart_at is not None and now >= agent.restart_at:
                self._start(agent)
                agent.restarts += 1
                self.colony.event("agent_restart", None, agent=agent.spec.id, pid=self._pid(agent),
                                  delay=agent.delay, restarts=agent.restarts)

    def _stopping(self, reason: str) -> None:
        self.stop_reason = reason
        for agent in self.agents:
            agent.restart_at = None  # no restarts once stopping: the colony is winding down
        running = sum(1 for a in self.agents if a.proc or a.adopted)
        self._say(f"{reason}; waiting for {running} agent(s)")

    def _on_signal(self, count: int) -> None:
        # `count` may jump by two between polls (a process group signalled twice at once): the
        # stop must still begin, and only a signal after the first one escalates to SIGKILL.
        if self.stop_reason is None:
            self._stopping("stopping: sent SIGTERM to every agent (Ctrl-C again to kill them)")
        if count == 1:
            self._signal_all(signal.SIGTERM)
        else:
            self._say("killing every agent (SIGKILL)")
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: signal.Signals) -> None:
        for agent in self.agents:
            self._signal_adopted(agent, sig)
            if agent.proc and agent.proc.poll() is None:
                try:
                    os.kill(agent.proc.pid, sig)  # the agent itself: its own children are its business
                except ProcessLookupError:
                    pass

    def _install_signals(self) -> Callable[[], None]:
        """SIGINT/SIGTERM only count; the loop acts on them (handlers must not do real work)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signals go to the main thread only; the caller handles them

        def count(signum: int, frame: FrameType | None) -> None:
            self.signals += 1

        def hangup(signum: int, frame: FrameType | None) -> None:
            self.hangups += 1  # a closed terminal: not a stop (the default would end us silently)

        old = {sig: signal.signal(sig, count) for sig in (signal.SIGINT, signal.SIGTERM)}
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup it is ignored already
            old[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return restore


def run(options: Options, out: TextIO | None = None) -> int:
    """Launch and supervise the agents until they are all gone; the exit status for the CLI."""
    if options.max_hours is not None and options.max_hours <= 0:
        raise UsageError(f"--max-hours must be positive, got {options.max_hours}")
    colony = Colony.open(Path(options.repo))
    if options.nest is None:  # a nest's branch is the nest's, fetched by each agent
        colony.landing_branch(options.branch)  # once, here: not N agents failing every task on a missing branch
    return Swarm(colony, options, out).run()
