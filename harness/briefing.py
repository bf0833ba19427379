"""What an agent sends its model: the system prompt, the first user message, the verify feedback.

One code path for the agent (agent.py), for `stigmergy prompt render` (what an agent would send for
a task, without running one) and for the launch check (every template rendered with a sample, so a
broken override stops `run` before any agent starts rather than an agent mid-run).
"""

from __future__ import annotations

from typing import Any

import jinja2

from harness import notes, repocontext, roles, tasks
from harness.colony import Colony
from harness.environment import Environment
from harness.config import Config
from harness.errors import UsageError
from harness.git import Git
from harness.repocontext import Context, Input, RepoMap
from harness.roles import Role
from harness.tasks import Task
from harness.templates import Templates

TEMPLATES = ("system", "system_command", "task", "merge_conflict", "context", "verify_failure", "idle")
SWEEP_LIST = 40  # tasks of each kind (open, recently done) an idle sweep's prompt names


def repo_context(git: Git, branch: str, task: Task, cfg: Config) -> Context:
    """What the prompts of an attempt at ``task`` show of the repository, read at the tip of ``branch``."""
    return repocontext.gather(git, branch, task, inputs_chars=int(cfg.prompt_inputs_chars),
                              map_chars=int(cfg.prompt_map_chars))


def opening(templates: Templates, colony: Environment, task: Task, *, agent: str, role: Role, verify: list[str],
            context: Context, cli: bool, task_notes: list[dict[str, Any]] | None = None) -> tuple[str, str]:
    """The system prompt and the first user message of an attempt at ``task``.

    The system prompt holds only what is the same for every task of a role on this repository
    (the rules, the role, the repository's map), so a provider caches it as the prompt's prefix;
    everything about the task comes after it, in the first message. ``cli``: the agent is an agent
    CLI (--backend command), which has its own tools, not our tool loop's, so its system prompt
    speaks in its terms. ``task_notes``: the task's notes (default: read from the colony)."""
    cfg = colony.config
    system = system_prompt(templates, cfg, agent=agent, role=role, context=context, cli=cli)
    all_notes = colony.notes(task.id) if task_notes is None else task_notes
    shown, hidden = notes.for_prompt(all_notes, cfg.prompt_notes_chars)
    conflict = task.kind == "merge_conflict" and "ref" in task.meta
    prompt = templates.render("merge_conflict" if conflict else "task", task=task, notes=shown, notes_hidden=hidden,
                              verify=" && ".join(verify), context=context)
    return system, prompt


def system_prompt(templates: Templates, cfg: Config, *, agent: str, role: Role, context: Context, cli: bool) -> str:
    """What is the same for every task of a role on this repository: the rules, the role, the map."""
    stable: dict[str, Any] = {"agent": agent, "role": role, "branch": context.branch}
    stable |= {"role_prompt": templates.role_prompt(role, **stable), "repo": context.map}
    return (templates.render("system_command", **stable, max_new_tasks=cfg.max_new_tasks_per_attempt)
            if cli else templates.render("system", **stable))


def sweep_opening(templates: Templates, cfg: Config, *, sweep: str, agent: str, role: Role, context: Context,
                  open_tasks: list[Task], recent_tasks: list[Task]) -> tuple[str, str]:
    """The system prompt (as for a task: the cached prefix stays the same) and the first message
    of an idle sweep (idle.j2): the role's `when_idle`, the repository, and the tasks it must not refile."""
    shown_open, shown_recent = open_tasks[:SWEEP_LIST], recent_tasks[:SWEEP_LIST]
    left_out = len(open_tasks) + len(recent_tasks) - len(shown_open) - len(shown_recent)
    system = system_prompt(templates, cfg, agent=agent, role=role, context=context, cli=False)
    prompt = templates.render("idle", sweep=sweep, role=role, when_idle=role.when_idle or "", context=context,
                              open_tasks=shown_open, recent_tasks=shown_recent, left_out=left_out,
                              max_tasks=cfg.sweep_max_tasks)
    return system, prompt


def feedback(templates: Templates, excerpt: str, round_: int, rounds: int, cli: bool) -> str:
    """The message after a failed verify: its excerpt, and which repair round this is."""
    return templates.render("verify_failure", excerpt=excerpt, round=round_, rounds=rounds, cli=cli)


# Every state an input can be in, so the launch check renders every branch of the templates.
SAMPLE_CONTEXT = Context(
    "main", "0123abc", RepoMap("./: README.md\nsrc/: app.py lib/ (2 files)", 3, 2),
    log=["0123abc A sample commit (coder-02, task sample-0002)"], recent=["src/app.py"],
    touching=["0123abc A sample commit (coder-02, task sample-0002)"],
    inputs=[Input("README.md", "shown", "A sample.\n", ""),
            Input("src/app.py", "cut", "import os\n", "cut at 10 of 900 characters; the rest is in your worktree"),
            Input("logo.png", "binary", "", "binary, not shown"), Input("gone.txt", "missing", "", "not on the branch")],
    inputs_chars=1000)


def check(colony: Colony) -> None:
    """Parse every role and render every template once with a sample task: a bad role file or
    template raises UsageError naming the file and line, before any agent starts."""
    home = colony.home
    role_list = roles.load_all(home)
    templates = Templates(home)
    role = role_list[0]
    sample = {"kind": "note", "agent": "coder-01", "text": "a sample note"}
    context = SAMPLE_CONTEXT
    plain = tasks.from_dict({"id": "sample-0000", "title": "A sample task", "body": "Do the sample thing.",
                             "inputs": ["README.md"], "outputs": ["src/app.py"], "verify": "true",
                             "skip_count": 1}, "the sample task")
    conflict = tasks.from_dict({"id": "sample-0001", "title": "Resolve a conflict", "kind": "merge_conflict",
                                "resolves": "sample-0000", "meta": {"ref": "refs/x", "paths": ["src/app.py"]},
                                "body": "The conflicting work."}, "the sample conflict")
    for task in (plain, conflict):
        for cli in (False, True):
            opening(templates, colony, task, agent="coder-01", role=role, verify=["true"], context=context,
                    cli=cli, task_notes=[sample, sample])
    for other in role_list[1:]:  # each role's own body, rendered into the system prompt
        for cli in (False, True):
            system_prompt(templates, colony.config, agent=f"{other.name}-01", role=other, context=context, cli=cli)
    for cli in (False, True):
        feedback(templates, "E   assert 1 == 2", 1, 2, cli)
    sweeper = next((r for r in role_list if r.when_idle), role)
    sweep_opening(templates, colony.config, sweep="sweep-critic-1", agent="critic-01", role=sweeper,
                  context=context, open_tasks=[plain], recent_tasks=[conflict])
    # Any other override (an {% include %}d partial, say) is at least parsed.
    for path in sorted((home / "prompts").glob("*.j2")):
        if path.stem not in TEMPLATES:
            try:
                templates.env.get_template(path.name)
            except jinja2.TemplateSyntaxError as e:
                raise UsageError(f"{path}:{e.lineno}: template syntax error: {(e.message or '').rstrip('.')}. "
                                 "Fix the template") from None
