"""The account at the end of a run, which the launcher prints when its agents are gone (and so the
demo, which runs the launcher): what landed, what was turned into conflict tasks or discovered,
what failed or is left, the commits on the landing branch, whether the checkout is clean, the
spend. Read from the colony (tasks, events, ledgers) and from git (the trailers on main).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness import report
from harness.colony import Colony
from harness.git import Git

_TRAILER = re.compile(r"^(Task-Id|Resolves):\s*(\S+)\s*$", re.M)


@dataclass
class Summary:
    headline: str  # report.summary_line: landed, done without change, failed, left; the spend
    tasks: list[str]  # every task the colony knows of, the backlog plus what agents filed
    statuses: dict[str, str]
    landed: list[str]  # Task-Id trailers on main's first-parent line, oldest first
    resolved: list[str]  # Resolves trailers: tasks whose work landed through a conflict task
    conflicts: list[str]  # merge_conflict tasks
    discovered: list[str]  # tasks filed by agents (conflicts excluded)
    commits: int
    dirty: list[str]  # `git status --porcelain` of the checkout
    seconds: float
    branch: str


def collect(colony: Colony, seconds: float) -> Summary:
    git, branch = Git(colony.repo), colony.config.branch
    known = colony.listing("all")
    log = git.run("log", "--first-parent", "--format=%B%x00", branch)
    landed: list[str] = []
    resolved: list[str] = []
    for message in log.split("\0"):
        for key, value in _TRAILER.findall(message):
            (landed if key == "Task-Id" else resolved).append(value)
    landed.reverse()
    return Summary(
        headline=report.summary_line(report.build(colony)),
        tasks=[t.id for _, t in known], statuses={t.id: st for st, t in known}, landed=landed, resolved=resolved,
        conflicts=[t.id for _, t in known if t.kind == "merge_conflict"],
        discovered=[t.id for _, t in known if (t.discovered_from or t.discovered_by) and t.kind != "merge_conflict"],
        commits=int(git.run("rev-list", "--count", branch).strip()),
        dirty=git.run("status", "--porcelain").splitlines(), seconds=seconds, branch=branch)


def lines(s: Summary) -> list[str]:
    count = {st: sum(1 for v in s.statuses.values() if v == st) for st in ("pending", "active", "failed")}
    return [
        f"finished in {s.seconds:.1f}s: {s.headline}",
        f"  tasks created        {len(s.tasks)} ({len(s.discovered)} discovered by agents, "
        f"{len(s.conflicts)} merge conflict{'s' * (len(s.conflicts) != 1)})",
        f"  tasks landed         {len(s.landed)} Task-Id commits on {s.branch}"
        + (f" (+{len(s.resolved)} landed through their conflict task)" if s.resolved else ""),
        f"  conflicts -> tasks   {len(s.conflicts)}" + (f": {', '.join(s.conflicts)}" if s.conflicts else ""),
        f"  failed / pending     {count['failed']} / {count['pending'] + count['active']}",
        f"  commits              {s.commits} on {s.branch}",
        f"  git status           {'clean' if not s.dirty else f'{len(s.dirty)} entries'}",
    ]
