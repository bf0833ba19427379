"""The command line: `python -m harness` and `stigmergy` are this one entry point.

Exit status: 0 ok, 2 bad input or usage (the message names the problem), 3 nothing to claim.
Every command takes --repo (default: the current directory).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from harness import sandbox, tasks
from harness.colony import Colony
from harness.environment import Environment
from harness.errors import (FilingRefused, HarnessError, InvalidTask, NotARepository, NothingToClaim, UnknownTask,
                            UsageError)
from harness.pool import Entry, effective_priority, find_cycle
from harness.tasks import Task, readiness

if TYPE_CHECKING:
    from harness.nest import Nest

Handler = Callable[[argparse.Namespace], int]


def _repo(args: argparse.Namespace) -> Path:
    return Path(args.repo or os.getcwd())


def _colony(args: argparse.Namespace) -> Colony:
    return Colony.open(_repo(args))


def _host(args: argparse.Namespace) -> tuple[Colony, Nest | None]:
    """The colony in --repo, and the nest at --nest: then the colony is this host's part of the
    nest's (nestagent.py), made on first use."""
    if not args.nest:
        return _colony(args), None
    if getattr(args, "branch", None):
        raise UsageError("--branch does not go with --nest: work lands on the nest's branch (`nest init URL "
                         "--branch NAME` chose it)")
    from harness.nest import Nest
    from harness.nestagent import host_colony
    from harness.redact import redact
    nest = Nest(args.nest)
    try:
        return host_colony(_repo(args), nest), nest
    except NotARepository:
        raise UsageError(f"with --nest, --repo (default: here) is this host's clone of the nest's repository, "
                         f"and {_repo(args)} is none: `git clone {redact(args.nest)}` it and run this there") from None


def _workspaces(args: argparse.Namespace, colony: Colony) -> Path | None:
    """--workspaces; on a host of a nest, by default inside its colony (which is all the host's own)."""
    return Path(args.workspaces) if args.workspaces else colony.home / "workspaces" if args.nest else None


def _environment(args: argparse.Namespace) -> Environment:
    """The colony the command speaks to: the nest at --nest (a git remote, nest.py), else the
    one on local disk in --repo."""
    if getattr(args, "nest", None):
        from harness.nest import Nest
        return Nest(args.nest)
    return _colony(args)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- init ---------------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    colony = Colony.init(_repo(args), branch=args.branch)
    print(f"colony ready in {colony.home}; work lands on branch {colony.config.branch!r}")
    return 0


# -- launcher, stop, demo -----------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from harness import swarm
    from harness.checkout import UserCheckout
    from harness.git import Git
    from harness.models.registry import check_spec

    colony, _ = _host(args)
    check_prompts(colony)
    prefix = ""
    if args.nest:
        from harness.nest import host_name, id_prefix
        prefix = id_prefix(host_name())
    plan = swarm.plan(args.agents, args.roles, prefix)
    guard_agents(len(plan), args.force)
    model = args.model or colony.config.model
    if model:
        check_spec(model)  # here, once, rather than in N agent logs
    elif args.backend != "command":
        raise UsageError("no model: pass --model (e.g. anthropic/claude-sonnet-5, or scripted:PATH), set `model:` "
                         "in .stigmergy/config.yaml, or use --backend command --agent-cmd CMD")
    budget_usd, budget_tokens = guard_spend(colony, args, model, swarm.role_models(plan, colony.home))
    # Probed once here too: `bwrap` that cannot work stops the launch (exit 2), `auto` warns once.
    sandbox.resolve(args.sandbox or colony.config.sandbox, lambda text: print(f"stigmergy: {text}", file=sys.stderr))
    # On a host of a nest the user's checkout is never moved: landings go to the nest.
    checkout = UserCheckout(Git(colony.repo), colony.landing_branch(args.branch)) if not args.nest else None
    dirty = checkout.describe() if checkout else None
    if dirty:
        print(f"stigmergy: {dirty}", file=sys.stderr, flush=True)
    try:
        return swarm.run(swarm.Options(
            repo=_repo(args), agents=args.agents, model=args.model, roles=args.roles, max_hours=args.max_hours,
            until_empty=args.until_empty, workspaces=_workspaces(args, colony),
            verify=args.verify, branch=args.branch, agent_args=_agent_args(args), budget_usd=budget_usd,
            budget_tokens=budget_tokens, nest=args.nest, id_prefix=prefix))
    finally:
        if checkout:
            checkout.recover()  # a lander killed while it held the user's index.lock must not leave it behind


# Flags the launcher passes through to every `agent run` unchanged.
AGENT_FLAGS = ("nest", "api_base", "backend", "agent_cmd", "budget_usd", "budget_tokens", "max_steps", "max_tokens",
               "max_seconds", "max_cost_usd", "sandbox")

PRICE_FIX = ("set its price in .stigmergy/config.yaml, e.g. `model_options: {price: {input: 3.0, output: 15.0}}` "
             "(USD per million tokens; zeros are fine for a free local server: `price: {input: 0, output: 0}`)")


def guard_spend(colony: Colony, args: argparse.Namespace, model: str | None,
                role_models: tuple[str, ...] = ()) -> tuple[float | None, int | None]:
    """The colony budgets (flags over config.yaml), refused when they could never be reached.
    ``role_models``: the models the roles of the mix name (`model:`), checked like the colony's.

    A model whose spend cannot be counted is logged at $0 a call: a USD budget with it would never
    trip, so it is refused (exit 2) with the fix; without one, a warning says status and report will
    show $0. An agent CLI (--backend command) reports neither cost nor tokens to us: no budget holds."""
    from harness.models.registry import spend_countable

    _agent_cmd(args)  # a bad --backend/--agent-cmd pair is the first thing to fix
    cfg = colony.config
    usd = args.budget_usd if args.budget_usd is not None else cfg.budget_usd
    tokens = args.budget_tokens if args.budget_tokens is not None else cfg.budget_tokens
    usd_from = "--budget-usd" if args.budget_usd is not None else "budget_usd in .stigmergy/config.yaml"
    tokens_from = "--budget-tokens" if args.budget_tokens is not None else "budget_tokens in .stigmergy/config.yaml"
    if usd is not None and usd < 0:
        raise UsageError(f"{usd_from} must be 0 or more, got {usd}")
    if tokens is not None and tokens < 0:
        raise UsageError(f"{tokens_from} must be 0 or more, got {tokens}")
    if args.backend == "command":
        budget = f"{usd_from} {usd}" if usd is not None else f"{tokens_from} {tokens}" if tokens is not None else None
        if budget:
            raise UsageError(f"{budget} cannot be enforced with --backend command: the agent CLI calls its model "
                             "itself and the harness counts none of its cost or tokens. Drop the budget, cap the "
                             "spend in the CLI or its provider account, and bound the run with --max-hours")
        _warn("warning: the spend of the agent CLI (--backend command) cannot be counted: report and status "
              "will show $0 for it")
        return usd, tokens
    for spec in dict.fromkeys(m for m in (model, *role_models) if m is not None):
        if spend_countable(spec, cfg.model_options):
            continue
        if usd is not None:
            raise UsageError(f"{usd_from} {usd} could never be reached: the spend of model {spec} cannot be counted "
                             "(it is in no price table we know, so every call is logged at $0). Either "
                             f"{PRICE_FIX}, or cap tokens with --budget-tokens N (or budget_tokens) instead")
        _warn(f"warning: the spend of model {spec} cannot be counted: report and status will show $0 for it; to "
              f"count it, {PRICE_FIX}" + ("" if tokens is not None else "; --budget-tokens N caps its tokens"))
    return usd, tokens


AGENTS_PER_CORE = 4  # more than this many agents a core is refused without --force


def guard_agents(count: int, force: bool) -> None:
    """Far more agents than cores is refused (exit 2) unless --force: each agent is a process that
    runs the model's commands and the tests in its own worktree, so they would starve each other."""
    cores = _cores()
    if count <= AGENTS_PER_CORE * cores or force:
        return
    raise UsageError(f"{count} agents is far more than this machine's {cores} core(s) can run (over "
                     f"{AGENTS_PER_CORE} a core): each agent is a process that runs commands and tests, and so "
                     f"many would starve each other and time out. Use at most --agents {AGENTS_PER_CORE * cores}, "
                     "or pass --force to launch them anyway (e.g. when the model's latency, not the CPU, is "
                     "what limits them)")


def _cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _warn(text: str) -> None:
    print(f"stigmergy: {text}", file=sys.stderr, flush=True)


def _add_agent_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-base", help="base URL of an OpenAI- or Anthropic-compatible endpoint")
    p.add_argument("--backend", choices=("model", "command"),
                   help="model: our tool loop; command: an external agent CLI does the work")
    p.add_argument("--agent-cmd", help="the CLI for --backend command: a preset (claude, codex, aider, "
                   "gemini) or a shell line using {prompt_file}")
    p.add_argument("--budget-usd", type=float, help="colony-wide spend limit in USD (overrides config.yaml)")
    p.add_argument("--budget-tokens", type=int, metavar="N", help="colony-wide limit on tokens, input + output + "
                   "cache, summed over every agent's ledger (overrides config.yaml)")
    p.add_argument("--max-steps", type=int, help="model calls per attempt (default 100)")
    p.add_argument("--max-tokens", type=int, help="tokens per attempt (input + output + cache)")
    p.add_argument("--max-seconds", type=float, help="wall time per attempt")
    p.add_argument("--max-cost-usd", type=float, help="spend per attempt")
    p.add_argument("--sandbox", choices=sandbox.MODES, help="run the model's commands, verify and an agent CLI "
                   "in bubblewrap: auto (when it works here; the default), bwrap (required) or none")


def _agent_args(args: argparse.Namespace) -> list[str]:
    _agent_cmd(args)  # refuse a bad combination here, not in N agents
    out: list[str] = []
    for name in AGENT_FLAGS:
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


def cmd_stop(args: argparse.Namespace) -> int:
    path = _environment(args).request_stop(now=args.now)
    print(f"created {path}: agents " + ("abort their current step and exit" if args.now
                                        else "finish their current task and exit"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from harness import demo

    guard_agents(args.agents, args.force)
    if args.nest:
        from harness import nestdemo
        return nestdemo.run(Path(args.dir), agents=args.agents, timeout=args.timeout)
    return demo.run(Path(args.dir), agents=args.agents, timeout=args.timeout)


# -- task ---------------------------------------------------------------------------------------------
def _read_body(args: argparse.Namespace) -> str:
    if args.body is not None and args.body_file is not None:
        raise UsageError("give --body or --body-file, not both")
    if args.body_file is not None:
        try:
            return Path(args.body_file).read_text()
        except OSError as e:
            raise UsageError(f"--body-file {args.body_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--body-file {args.body_file}: not UTF-8 text; a task body must be text") from None
    return args.body or ""


def cmd_task_add(args: argparse.Namespace) -> int:
    from harness import deadline, filing, roles

    colony = _environment(args)
    data: dict[str, Any] = {
        "id": args.id or tasks.new_id(args.title), "title": args.title, "kind": args.kind,
        "priority": args.priority, "depends_on": args.depends_on, "inputs": args.input,
        "outputs": args.output, "body": _read_body(args), "created_by": args.created_by,
    }
    for key in ("role", "verify"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    known = roles.known(colony.home)
    # Run by an agent (its CLI, or its model's bash: the agent sets STIGMERGY_AGENT, and
    # STIGMERGY_TASK while at work), the task is checked as the tool loop's create_task is, then
    # attributed to the agent and counted against its filing caps.
    agent, working_on = os.environ.get("STIGMERGY_AGENT"), os.environ.get("STIGMERGY_TASK")
    if agent:
        try:
            if colony.stop_requested() or deadline.Watch(colony.home).passed():
                raise FilingRefused("stopping", "the colony is stopping, so no task is filed now: finish the "
                                    "task at hand and say what is left in your final summary")
            filing.check(data, known, _worktree(Path.cwd()))
        except FilingRefused as e:
            raise filing.refusal(colony, agent, working_on, e) from None
    filing.check_role(args.role, known)  # people too: a misspelt role would match no agent, unnoticed
    if agent and working_on and args.created_by == "human":
        filing.check_caps(colony, agent, working_on)
        data["created_by"] = agent
    task = tasks.from_dict(data, "task add")
    check_depends(colony, [task], "task add")
    colony.add(task)
    _warn_cycles(colony)
    print(task.id)
    return 0


def check_depends(colony: Environment, new: list[Task], source: str) -> None:
    """Every dependency names a task that exists in any status, or one filed along with it: a typo
    would leave the task waiting forever on a task nobody will ever file."""
    filed = {t.id for t in new}
    known = colony.ids() if any(t.depends_on for t in new) else set()  # a listing only when there is a question
    for task in new:
        unknown = [d for d in task.depends_on if d not in filed and d not in known]
        if unknown:
            raise UnknownTask(f"{source}: task {task.id!r} depends on {', '.join(map(repr, unknown))}, but no task "
                              "has that id: check the spelling (`stigmergy task list --status all` shows every "
                              "id), or file that task first")


def _worktree(cwd: Path) -> Path:
    """The worktree an agent CLI runs in: the nearest folder up from ``cwd`` with a .git (a file,
    in a worktree), where filed paths are looked up; ``cwd`` itself when there is none."""
    return next((d for d in (cwd, *cwd.parents) if (d / ".git").exists()), cwd)


def _warn_cycles(colony: Environment) -> None:
    waiting = {t.id: t.depends_on for _, t in colony.listing("pending") if t.depends_on}
    cycle = find_cycle(waiting)
    if cycle:
        print(f"warning: dependency cycle {' -> '.join(cycle)}: these tasks can never be ready", file=sys.stderr)


def _rows(colony: Environment, status: str, role_name: str | None) -> list[dict[str, Any]]:
    from harness import roles
    role = roles.load_role(role_name, colony.home) if role_name else None  # its `prefers:` earn the bonus
    listed = colony.listing(status)
    done = colony.ids("done")
    cycle = set(find_cycle({t.id: t.depends_on for st, t in listed if st == "pending"}) or [])
    now, rows = time.time(), []
    for st, t in listed:
        waiting, retry_in = readiness(t, done.__contains__, now)  # retry_in: backing off after a failure
        row = t.to_dict() | {"status": st, "effective_priority": round(
            effective_priority(colony.config, Entry.of(t, role), now), 1)}
        if st == "pending":
            row["ready"] = not waiting and not retry_in
            if waiting:
                row["waiting_on"] = waiting
            if retry_in:
                row["retry_in"] = max(1, round(retry_in))
            if t.id in cycle:
                row["cycle"] = True
        rows.append(row)
    rows.sort(key=lambda r: (r["status"] != "active", -r["effective_priority"], r["id"]))
    return rows


def cmd_task_list(args: argparse.Namespace) -> int:
    rows = _rows(_environment(args), args.status, args.role)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        flag = "" if r.get("ready", True) else (" [cycle]" if r.get("cycle") else " [waiting: " + ",".join(
            r["waiting_on"]) + "]" if r.get("waiting_on") else f" [retry in {r['retry_in']}s]")
        print(f"{r['effective_priority']:6.1f}  {r['status']:<8} {r['id']:<40} {r['title']}{flag}")
    return 0


def cmd_task_show(args: argparse.Namespace) -> int:
    from harness import history  # the event replay of reports: not loaded by every `task claim`

    colony = _colony(args)
    status, task = colony.get(args.id)
    claim = colony.current_claim(task.id)
    info = task.to_dict() | {"status": status, "notes": colony.notes(task.id)}
    if claim:
        info["claim"] = {"agent": claim.agent, "generation": claim.generation, "claimed_at": claim.claimed_at}
    info = _redacted(info)
    past = _redacted(history.build(colony, task.id))  # notes and release notes may hold a leaked key
    if args.json:
        _print_json(info | {"history": past})
    else:
        print(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), end="")
        print("\n".join(history.render(past)))
    return 0


def _redacted(data: Any) -> Any:
    from harness.redact import redact_data, secret_env
    from harness.secrets_scan import literals

    return redact_data(data, literals(secret_env(os.environ)))


# One line each: `[ \t]`, not `\s`, which would let an empty box take the next line as its title.
_BOX = re.compile(r"[ \t]*[-*][ \t]+\[( |x|X)\](?:[ \t]+(.*?))?[ \t]*\Z")


def parse_import(text: str, source: str, warn: Callable[[str], None] = _warn) -> list[Task]:
    """A YAML list of tasks, or a markdown checklist (`- [ ] title`; checked boxes are skipped, and
    so is an empty box, with a warning naming its line)."""
    boxes = [(n, m) for n, line in enumerate(text.splitlines(), 1) if (m := _BOX.match(line))]
    if boxes:
        out = []
        for n, m in boxes:
            mark, title = m.groups()
            if mark != " ":
                continue
            if not title:
                warn(f"warning: {source} line {n}: an empty checklist item has no title: skipped")
                continue
            out.append(tasks.from_dict({"id": tasks.new_id(title), "title": title}, f"{source} line {n}: {title!r}"))
        return out
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidTask(f"{source}: neither a markdown checklist nor valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, list):
        raise InvalidTask(f"{source}: expected a YAML list of tasks or a markdown checklist `- [ ] title`")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "id" not in item and isinstance(item.get("title"), str):
            item = {"id": tasks.new_id(item["title"]), **item}
        out.append(tasks.from_dict(item, f"{source}: item {i + 1}"))
    return out


def cmd_task_import(args: argparse.Namespace) -> int:
    colony = _colony(args)
    try:
        text = Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {args.file}: {e}") from None
    new = parse_import(text, args.file)  # all validated before any is added
    ids = [t.id for t in new]
    dupes = {i for i in ids if ids.count(i) > 1} | {i for i in ids if colony.store.locate(i)}
    if dupes:
        raise InvalidTask(f"{args.file}: task id(s) already exist or repeat: {', '.join(sorted(dupes))}")
    check_depends(colony, new, args.file)
    colony.add_many(new)
    _warn_cycles(colony)
    print(f"imported {len(new)} task(s)")
    return 0


def cmd_task_retry(args: argparse.Namespace) -> int:
    colony = _colony(args)
    if bool(args.ids) == bool(args.failed):
        raise UsageError("task retry: name the failed task ids, or pass --failed for all of them (not both)")
    ids = args.ids or [t.id for _, t in colony.listing("failed")]
    for tid in ids:
        colony.retry(tid, by=args.agent)
        print(f"re-opened {tid}")
    if not ids:
        print("no failed tasks")
    return 0


def cmd_task_claim(args: argparse.Namespace) -> int:
    colony = _environment(args)
    got = colony.claim(args.agent, args.role, pid=args.pid)
    if got is None:
        raise NothingToClaim("no ready task to claim")
    claim, task = got
    if args.json:
        _print_json(task.to_dict() | {"generation": claim.generation, "token": claim.token,
                                      "notes": colony.notes(task.id)})
    else:
        print(task.id)
    return 0


def cmd_task_release(args: argparse.Namespace) -> int:
    _environment(args).release(args.id, args.agent, note=args.note)
    return 0


def cmd_task_done(args: argparse.Namespace) -> int:
    _environment(args).done(args.id, args.agent)
    return 0


def cmd_task_fail(args: argparse.Namespace) -> int:
    _environment(args).fail(args.id, args.agent, note=args.note)
    return 0


def _agent_cmd(args: argparse.Namespace) -> str | None:
    if args.backend == "command" and not args.agent_cmd:
        raise UsageError("--backend command needs --agent-cmd CMD (or a preset: claude, codex, aider, gemini)")
    if args.agent_cmd and args.backend != "command":  # None means the default, `model`
        raise UsageError("--agent-cmd is for --backend command")
    return str(args.agent_cmd) if args.agent_cmd else None


def cmd_agent_run(args: argparse.Namespace) -> int:
    from harness.agent import Agent, AgentOptions
    from harness.toolloop import Limits

    colony, nest = _host(args)
    workspaces = os.environ.get("STIGMERGY_WORKSPACES") if not args.workspaces else None
    opts = AgentOptions(
        agent=args.id, role=args.role, model=args.model, verify=args.verify, until_empty=args.until_empty,
        workspaces=Path(workspaces or _workspaces(args, colony) or "workspaces").resolve(),
        budget_usd=args.budget_usd, budget_tokens=args.budget_tokens, api_base=args.api_base,
        agent_cmd=_agent_cmd(args), branch=args.branch,
        limits=Limits(max_steps=args.max_steps or 100, max_tokens=args.max_tokens, max_seconds=args.max_seconds,
                      max_cost_usd=args.max_cost_usd), sandbox=args.sandbox)
    check_prompts(colony)
    model = args.model or colony.config.model
    if model or args.backend == "command":
        guard_spend(colony, args, model)
    if nest is not None:
        from harness.nestagent import NestAgent
        agent: Agent = NestAgent(colony, nest, opts)
    else:
        agent = Agent(colony, opts)
    agent.forget_keys()  # the model client holds its key now: no child of ours inherits one
    return agent.run()


def cmd_status(args: argparse.Namespace) -> int:
    from harness import status

    if args.watch is not None and args.json:
        raise UsageError("--watch and --json do not go together: `status --json` is one snapshot "
                         "(run it in a loop for a series)")
    if args.nest:
        from harness.nest import Nest
        nest = Nest(args.nest)
        if args.watch is not None:
            from harness import watch
            return watch.watch_nest(nest, args.watch)
        survey = nest.survey()
        print(json.dumps(survey, indent=2, sort_keys=True) if args.json else status.render_nest(survey))
        return 0
    if args.watch is not None:
        from harness import watch
        return watch.watch(_colony(args), args.watch)
    snap = status.snapshot(_colony(args))
    if args.json:
        _print_json(snap)
    else:
        print(status.render(snap))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness import report

    html = _html_target(args.html) if args.html else None
    colony, nest = _host(args)  # with --nest, the nest's account; this host's files in the scan
    built = report.account(colony, os.environ, nest)
    if html:
        _write_html(html, built, colony.repo)
    if args.json:
        _print_json(built)
    else:
        print(report.render(built))
    hits = built["secrets_scan"]["hits"]
    if hits:
        # Still exit 0: the report is an account, not a check. But said on stderr too, so that
        # `report --json | jq` in a script is not silent about it.
        print(f"stigmergy: the secrets scan found {len(hits)} secret(s) written down by this run: see the end "
              "of the report, and rotate those keys", file=sys.stderr)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from harness import agentlog

    colony = _colony(args)
    tasks.check_id(args.agent, "agent")
    log = colony.home / "agents" / args.agent / "agent.log"
    if not log.parent.is_dir():
        known = sorted(p.name for p in (colony.home / "agents").iterdir() if p.is_dir())
        raise UsageError(f"no agent {args.agent!r} in this colony; known: {', '.join(known) or 'none yet'}")
    if args.lines < 0:
        raise UsageError(f"-n/--lines must be 0 or more, got {args.lines}")
    out = sys.stdout.buffer

    def write(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()
    try:
        write(b"".join(agentlog.last_lines(log, args.lines)))
        if args.follow:
            agentlog.follow(log, write)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a follow ends: quietly (a closed pipe is main()'s to end quietly)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from harness import gc

    if args.runs_older_than < 0:
        raise UsageError(f"--runs-older-than must be 0 or more days, got {args.runs_older_than}")
    result = gc.collect(_colony(args), dry_run=args.dry_run, runs_older_than_days=args.runs_older_than)
    print(gc.render(result))
    return 0


def _html_target(given: str) -> Path:
    """Refused before the report is built: a wrong path should not cost a scan of the whole run."""
    path = Path(given)
    if path.is_dir() or not path.parent.is_dir():
        raise UsageError(f"--html {given}: " + ("that is a folder" if path.is_dir() else
                         f"folder {path.parent} does not exist") + "; name a file in an existing folder")
    return path


def _write_html(path: Path, built: dict[str, Any], repo: Path) -> None:
    from harness import fsutil, report_html

    try:
        fsutil.atomic_write(path, report_html.render(built, title=f"stigmergy morning report: {repo.name}"))
    except OSError as exc:
        raise UsageError(f"--html {path}: cannot write it ({exc.strerror}); name a file you may write") from None
    print(f"stigmergy: report written to {path}", file=sys.stderr)


def cmd_agent_heartbeat(args: argparse.Namespace) -> int:
    _environment(args).heartbeat(args.agent, pid=args.pid)
    return 0


def cmd_fake_server(args: argparse.Namespace) -> int:
    # Imported here: the server is a test/demo tool, and every other command should not load it.
    from harness.models.fake_server import serve

    serve(args.port, args.script, api_key=args.api_key, dialect=args.dialect, context_tokens=args.context_tokens)
    return 0


# -- roles and prompts --------------------------------------------------------------------------------
def check_prompts(colony: Colony) -> None:
    """Every role parsed and every template rendered once, before any agent starts (exit 2 if broken)."""
    from harness import briefing
    briefing.check(colony)


def _where(path: Path, colony: Colony) -> str:
    return f"{'override' if path.is_relative_to(colony.home) else 'shipped'} {path}"


def cmd_roles_list(args: argparse.Namespace) -> int:
    from harness import roles
    colony = _colony(args)
    found = roles.load_all(colony.home)
    if args.json:
        print(json.dumps([roles.summary(r) | {"source": _where(r.source, colony)} for r in found], indent=2))
        return 0
    name_w = max(len(r.name) for r in found)
    for r in found:
        print(f"{r.name:<{name_w}}  {r.description}")
        print(f"{'':<{name_w}}  {roles.traits(r)}; {_where(r.source, colony)}")
    return 0


def cmd_roles_show(args: argparse.Namespace) -> int:
    from harness import roles
    colony = _colony(args)
    role = roles.load_role(args.name, colony.home)
    print(f"# {_where(role.source, colony)}")
    print(f"# as read: {roles.traits(role)}")
    print(role.source.read_text(encoding="utf-8"), end="")
    return 0


def cmd_prompt_render(args: argparse.Namespace) -> int:
    from harness import briefing, roles
    from harness.git import Git
    from harness.templates import Templates
    colony = _colony(args)
    _, task = colony.get(args.task)
    # `--role any`: the role an `any` agent would take for this task (its hint, else the first that prefers it).
    role = roles.for_task(roles.agent_role(args.role or task.role or "coder", colony.home), task, colony.home)
    templates = Templates(colony.home)
    branch = colony.landing_branch()
    verify = [c for c in (colony.config.verify, task.verify) if c and c.strip()]
    # The agent's worktree is reset to the tip of the landing branch before it works: read the same from git.
    context = briefing.repo_context(Git(colony.repo), branch, task, colony.config)
    cli = args.backend == "command"
    system, prompt = briefing.opening(templates, colony, task, agent=args.agent or f"{role.name}-01", role=role,
                                      verify=verify, context=context, cli=cli)
    first = "merge_conflict" if task.kind == "merge_conflict" and "ref" in task.meta else "task"
    print(f"===== system prompt ({templates.source('system_command' if cli else 'system')}) =====")
    print(system, end="" if system.endswith("\n") else "\n")
    print(f"===== first user message ({templates.source(first)}) =====")
    print(prompt, end="" if prompt.endswith("\n") else "\n")
    return 0


def cmd_prompt_idle(args: argparse.Namespace) -> int:
    from harness import briefing, roles, sweep
    from harness.git import Git
    from harness.templates import Templates
    colony = _colony(args)
    role = roles.load_role(args.role, colony.home)
    if role.when_idle is None:
        print(f"stigmergy: role {role.name!r} has no `when_idle:`, so its agents never sweep; this is what "
              "they would send if it had one", file=sys.stderr)
    templates, agent, sid = Templates(colony.home), args.agent or f"{role.name}-01", sweep.next_id(colony, role.name)
    context = briefing.repo_context(Git(colony.repo), colony.landing_branch(), sweep.pseudo_task(sid, role, agent),
                                    colony.config)
    system, prompt = sweep.opening(colony, templates, role, agent, sid, context)
    print(f"===== system prompt ({templates.source('system')}) =====")
    print(system, end="" if system.endswith("\n") else "\n")
    print(f"===== first user message ({templates.source('idle')}) =====")
    print(prompt, end="" if prompt.endswith("\n") else "\n")
    return 0


def cmd_nest_init(args: argparse.Namespace) -> int:
    from harness.config import DEFAULT_CONFIG, with_branch
    from harness.nest import Nest
    from harness.redact import redact

    try:
        text = DEFAULT_CONFIG if args.config is None else Path(args.config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {args.config}: cannot read it ({exc}); name a config.yaml") from None
    nest = Nest.init(args.url, with_branch(text, args.branch) if args.branch else text)
    print(f"nest ready at {redact(args.url)}; work lands on branch {nest.config.branch!r} "
          "(an existing nest keeps its config)")
    return 0


# -- the parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", help="target git repository (default: current directory)")
    nest = argparse.ArgumentParser(add_help=False, parents=[common])  # commands that speak the contract only
    nest.add_argument("--nest", metavar="URL", default=os.environ.get("STIGMERGY_NEST") or None,
                      help="the colony in this git remote (`nest init`) instead of the one in --repo "
                           "(env STIGMERGY_NEST)")

    p = argparse.ArgumentParser(prog="stigmergy", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", parents=[common], help="create .stigmergy/ in a git repository")
    init.add_argument("--branch", metavar="NAME", help="the branch work lands on (default: the current branch)")
    init.set_defaults(func=cmd_init)

    launch = sub.add_parser("run", parents=[nest], help="launch and supervise agent processes (the default command)")
    launch.add_argument("--agents", type=int, help="how many agents (default: the sum of --roles, else 4)")
    launch.add_argument("--model", help="anthropic/<m>, openai/<m>, litellm/<provider>/<m> or scripted:<path>")
    launch.add_argument("--roles", metavar="ROLE=N,...", help="e.g. coder=12,merger=2 (the rest are coders); any=N: agents that take each task's "
                        "role; default: a mix by --agents (all coders below 4, then a merger per 8, a tester "
                        "from 8, a critic from 12)")
    launch.add_argument("--max-hours", type=float, help="then create .stigmergy/STOP and wait for the agents")
    launch.add_argument("--until-empty", action="store_true", help="agents exit when no task is ready or active")
    launch.add_argument("--workspaces", metavar="DIR", help="root of agents' worktrees (default ./workspaces)")
    launch.add_argument("--verify", metavar="CMD", help="repo-wide verify command (overrides config.yaml)")
    launch.add_argument("--branch", metavar="NAME", help="the branch work lands on (overrides config.yaml)")
    launch.add_argument("--force", action="store_true", help=f"launch more than {AGENTS_PER_CORE} agents a core")
    _add_agent_flags(launch)
    launch.set_defaults(func=cmd_run)

    stop = sub.add_parser("stop", parents=[nest], help="create .stigmergy/STOP: agents finish and exit")
    stop.add_argument("--now", action="store_true", help="abort the current step instead of finishing it")
    stop.set_defaults(func=cmd_stop)

    demo = sub.add_parser("demo", help="build a small target repo and backlog, run a scripted colony on it")
    demo.add_argument("--agents", type=int, default=4)
    demo.add_argument("--dir", default="stigmergy-demo", help="where to create the target (must not exist)")
    demo.add_argument("--timeout", type=float, default=600, help="seconds before the demo stops its colony")
    demo.add_argument("--force", action="store_true", help=f"run more than {AGENTS_PER_CORE} agents a core")
    demo.add_argument("--nest", action="store_true", help="across machines: the colony in a nest served by git "
                      "daemon on loopback, three host clones sharing the agents (--agents in all)")
    demo.set_defaults(func=cmd_demo)

    st = sub.add_parser("status", parents=[nest], help="tasks, claims, live agents, tokens and spend")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", metavar="SECONDS", nargs="?", type=float, const=2.0,
                    help="redraw every SECONDS (default 2) until Ctrl-C; without a terminal, one line each")
    st.set_defaults(func=cmd_status)

    rep = sub.add_parser("report", parents=[nest], help="per task: what landed, what failed and why, the cost; then a secrets scan")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML page")
    rep.set_defaults(func=cmd_report)

    logs = sub.add_parser("logs", parents=[common], help="an agent's log: its last lines, or -f to follow it")
    logs.add_argument("agent", metavar="AGENT")
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many of the last lines (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="then print what is appended, until Ctrl-C")
    logs.set_defaults(func=cmd_logs)

    gcp = sub.add_parser("gc", parents=[common], help="remove what finished work and stopped agents left behind")
    gcp.add_argument("--dry-run", action="store_true", help="print what would go and change nothing")
    gcp.add_argument("--runs-older-than", type=float, default=14, metavar="DAYS",
                     help="remove run folders of finished tasks older than this (default 14)")
    gcp.set_defaults(func=cmd_gc)

    task = sub.add_parser("task", help="manage the task pool").add_subparsers(dest="task_command", required=True)
    add = task.add_parser("add", parents=[nest], help="file a new pending task")
    add.add_argument("title")
    add.add_argument("--id")
    add.add_argument("--priority", default="normal", help="0-100 or low|normal|high|critical")
    add.add_argument("--role")
    add.add_argument("--kind", default="task", choices=tasks.KINDS)
    add.add_argument("--depends-on", action="append", default=[], metavar="ID")
    add.add_argument("--input", action="append", default=[], metavar="PATH")
    add.add_argument("--output", action="append", default=[], metavar="PATH")
    add.add_argument("--verify", metavar="CMD")
    add.add_argument("--body")
    add.add_argument("--body-file", metavar="F")
    add.add_argument("--created-by", default="human", help=argparse.SUPPRESS)
    add.set_defaults(func=cmd_task_add)

    ls = task.add_parser("list", parents=[nest], help="tasks by effective priority")
    ls.add_argument("--status", default="pending", choices=("pending", "active", "done", "failed", "all"))
    ls.add_argument("--role", help="rank as an agent of this role would")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_task_list)

    show = task.add_parser("show", parents=[common], help="one task with its notes, claim and history")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_task_show)

    imp = task.add_parser("import", parents=[common], help="add tasks from a YAML list or markdown checklist")
    imp.add_argument("file")
    imp.set_defaults(func=cmd_task_import)

    retry = task.add_parser("retry", parents=[common], help="re-open failed tasks: pending, skip_count 0, notes kept")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--failed", action="store_true", help="every failed task")
    retry.add_argument("--agent", default="human", help=argparse.SUPPRESS)
    retry.set_defaults(func=cmd_task_retry)

    claim = task.add_parser("claim", parents=[nest], help="claim the best ready task (exit 3: none ready)")
    claim.add_argument("--agent", required=True)
    claim.add_argument("--role")
    claim.add_argument("--pid", type=int, help="a long-lived process whose death frees the claim")
    claim.add_argument("--json", action="store_true")
    claim.set_defaults(func=cmd_task_claim)

    for name, func, help_ in (("release", cmd_task_release, "back to pending, skip_count + 1"),
                              ("done", cmd_task_done, "mark a claimed task done"),
                              ("fail", cmd_task_fail, "mark a claimed task failed")):
        sp = task.add_parser(name, parents=[nest], help=help_)
        sp.add_argument("id")
        sp.add_argument("--agent", required=True)
        if name != "done":
            sp.add_argument("--note", required=name == "fail")
        sp.set_defaults(func=func)

    np = sub.add_parser("nest", help="a colony in a git remote, shared by machines").add_subparsers(
        dest="nest_command", required=True)
    ni = np.add_parser("init", help="make a git remote a nest: its config under refs/stigmergy/ (idempotent)")
    ni.add_argument("url", help="any git remote: a path (made a bare repository when missing), ssh, https, git://")
    ni.add_argument("--branch", metavar="NAME", help="the branch work lands on (default: main)")
    ni.add_argument("--config", metavar="FILE", help="a config.yaml to start from (default: the commented defaults)")
    ni.set_defaults(func=cmd_nest_init)

    agent = sub.add_parser("agent", help="agent processes").add_subparsers(dest="agent_command", required=True)
    run = agent.add_parser("run", parents=[nest], help="run one agent process (the launcher starts these)")
    run.add_argument("--id", required=True, help="this agent's name, unique in the colony")
    run.add_argument("--role", default="coder")
    run.add_argument("--model", help="anthropic/<m>, openai/<m>, litellm/<provider>/<m> or scripted:<path>")
    run.add_argument("--workspaces", help="root of agents' worktrees (default ./workspaces)")
    run.add_argument("--verify", metavar="CMD", help="repo-wide verify command (overrides config.yaml)")
    run.add_argument("--branch", metavar="NAME", help="the branch work lands on (overrides config.yaml)")
    run.add_argument("--until-empty", action="store_true", help="exit when no task is ready or active")
    _add_agent_flags(run)
    run.set_defaults(func=cmd_agent_run)

    hb = agent.add_parser("heartbeat", parents=[nest], help="refresh an external agent's lease")
    hb.add_argument("--agent", required=True)
    hb.add_argument("--pid", type=int)
    hb.set_defaults(func=cmd_agent_heartbeat)

    rl = sub.add_parser("roles", help="the colony's roles: shipped and overridden").add_subparsers(
        dest="roles_command", required=True)
    rls = rl.add_parser("list", parents=[common], help="each role: name, description, what it prefers, its "
                        "model, tools and steps, whether it sweeps, the file it comes from")
    rls.add_argument("--json", action="store_true", help="one JSON list of the roles' front matter as read")
    rls.set_defaults(func=cmd_roles_list)
    rsh = rl.add_parser("show", parents=[common], help="one role's file: front matter and prompt, and where it is")
    rsh.add_argument("name")
    rsh.set_defaults(func=cmd_roles_show)

    pr = sub.add_parser("prompt", help="the prompts agents send").add_subparsers(dest="prompt_command", required=True)
    prr = pr.add_parser("render", parents=[common], help="print what an agent would send for a task: the system "
                        "prompt and the first user message")
    prr.add_argument("--task", required=True, metavar="ID")
    prr.add_argument("--role", help="the agent's role (default: the task's role, else coder; any: the role an "
                     "`any` agent would take)")
    prr.add_argument("--agent", metavar="ID", help="the agent id the prompt names (default: ROLE-01)")
    prr.add_argument("--backend", choices=("model", "command"), default="model",
                     help="command: as an agent CLI gets it (the system_command template)")
    prr.set_defaults(func=cmd_prompt_render)
    pri = pr.add_parser("idle", parents=[common], help="print what an idle sweep of a role would send now")
    pri.add_argument("--role", required=True, help="a role with `when_idle:` (e.g. critic)")
    pri.add_argument("--agent", metavar="ID", help="the agent id the prompt names (default: ROLE-01)")
    pri.set_defaults(func=cmd_prompt_idle)

    fake = sub.add_parser("fake-server", help="scripted fake Anthropic/OpenAI API on 127.0.0.1 (tests, demos)")
    fake.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port; the URL is printed)")
    fake.add_argument("--script", required=True, help="YAML/JSON script of conversations (see models/fake_server.py)")
    fake.add_argument("--api-key", help="accept only this key (default: any non-empty key)")
    fake.add_argument("--dialect", help="behave like this local server: llama.cpp or vllm")
    fake.add_argument("--context-tokens", type=int, help="a context window: longer prompts get the server's 400")
    fake.set_defaults(func=cmd_fake_server)
    return p


def version() -> str:
    """The installed package's version; a checkout run without installing has harness.__version__."""
    from importlib import metadata

    try:
        return metadata.version("stigmergy-harness")
    except metadata.PackageNotFoundError:
        from harness import __version__
        return __version__


class _Version(argparse.Action):
    """`--version`, looked up only when asked: reading package metadata costs every other command."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def _stdout_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone: poll says POLLERR for it."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")  # `python -m harness --agents 16 ...` is the launcher
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, not at exit: a reader that has gone is met inside this try
        return code
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a pipe of ours to some other process: a real error
        # The reader stopped reading (`| head`): it has what it wanted. The documented way (the
        # Python docs' "Note on SIGPIPE"): stdout to devnull, so the final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except HarnessError as e:
        print(f"stigmergy: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # Typically an agent CLI whose own sandbox made the colony read-only: say so, not a traceback.
        print(f"stigmergy: cannot write {e.filename or 'the colony'} ({e.strerror}): the colony home "
              "(.stigmergy/, or STIGMERGY_HOME) must be writable here; an agent CLI's own sandbox must "
              "be off (the presets turn it off) or allow that folder", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
