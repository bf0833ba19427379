"""How much disk the agents' worktrees take: a night of builds (virtualenvs, node_modules, caches
the model's commands leave behind) can fill a disk, and `status` should say so before it does.

The worktrees are found the way git knows them (`git worktree list --porcelain`): those on a
branch `stigmergy/<agent>`, the branch every agent's worktree is reset onto, and those named
after a known agent (`<workspaces>/<agent>`: after a landing the worktree is left detached on the
merged commit, on no branch). That finds them wherever `--workspaces` put them, without asking
any agent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.errors import GitError
from harness.git import Git

AGENT_BRANCH = "refs/heads/stigmergy/"


def agent_worktrees(repo: Path, agents: set[str]) -> dict[str, Path]:
    """Agent id -> its worktree: the worktrees of `repo` on a `stigmergy/<agent>` branch, or named
    after one of `agents` (the main checkout never counts)."""
    try:
        out = Git(repo).run("worktree", "list", "--porcelain")
    except (GitError, OSError):
        return {}
    found: dict[str, Path] = {}
    for i, block in enumerate(out.split("\n\n")):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value
        branch, path = fields.get("branch", ""), fields.get("worktree")
        if not path or i == 0 or not os.path.isdir(path):  # the first one is the main checkout
            continue
        if branch.startswith(AGENT_BRANCH):
            found[branch[len(AGENT_BRANCH):]] = Path(path)
        elif Path(path).name in agents:
            found[Path(path).name] = Path(path)
    return found


def tree_bytes(root: Path) -> int:
    """The sizes of the files under `root` summed, symlinks not followed, `.git` left out (in a
    worktree it is a small file pointing at the shared repository, whose objects are not its own)."""
    total, folders = 0, [str(root)]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except OSError:  # removed or unreadable meanwhile: an agent resets its worktree often
            continue
        with entries:
            for entry in entries:
                if entry.name == ".git":
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


def usage(repo: Path, agents: set[str]) -> dict[str, Any]:
    """The agents' worktrees: where they are, bytes per agent and in all."""
    trees = agent_worktrees(repo, agents)
    by_agent = {agent: tree_bytes(path) for agent, path in sorted(trees.items())}
    return {"bytes": sum(by_agent.values()), "by_agent": by_agent,
            "roots": sorted({str(path.parent) for path in trees.values()})}
