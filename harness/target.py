"""The target repository as it comes: which branch work lands on, and why a path cannot be a target.

A colony lands on one branch: the one checked out when `init` ran (recorded as `branch:` in
config.yaml; `main` when a config has none), or `--branch NAME`. Everything here runs before any
agent starts or claims, so a repository that cannot take work fails once, at exit 2, with the fix
in the message, instead of every task failing in an agent log.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import NoLandingBranch, NotARepository
from harness.git import Git


def not_a_repository(path: Path) -> NotARepository:
    """The error for a path with no working tree at or above it. Only this error path runs git: a
    bare repository is a repository, and `git init` there would be the wrong advice."""
    if path.is_dir():
        done = Git(path).call("rev-parse", "--is-bare-repository", "--absolute-git-dir")
        lines = done.stdout.split()
        if done.returncode == 0 and lines[:1] == ["true"] and len(lines) == 2:
            bare = Path(lines[1])
            clone = bare.with_name(bare.name[:-4] if bare.name.endswith(".git") and len(bare.name) > 4
                                   else f"{bare.name}-checkout")
            return NotARepository(
                f"{bare} is a bare repository: it has no working tree for agents to branch from. Clone it "
                f"(`git clone {bare} {clone}`), run the colony in the clone (`stigmergy init --repo {clone}`), "
                f"and push the landed branch back from there (`git -C {clone} push`)")
    return NotARepository(f"{path} is not inside a git repository; run `git init` there first or pass --repo")


def require_commits(repo: Path) -> None:
    """An empty repository (no commit on any ref) has no branch to land on and no tree to branch from."""
    if not Git(repo).run("rev-list", "-n1", "--all").strip():
        raise NoLandingBranch(
            f"{repo} has no commit yet, so there is no branch for agents to land work on: make one with "
            f"`git -C {repo} commit --allow-empty -m \"initial commit\"`, then run `stigmergy init` again")


def current_branch(repo: Path) -> str:
    """The branch checked out in the user's checkout: what `init` records when not told otherwise."""
    name = Git(repo).run("symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip()
    if not name:
        raise NoLandingBranch(
            f"{repo} is on a detached HEAD, so init cannot tell which branch agents should land on: "
            f"pass --branch NAME (e.g. `stigmergy init --branch main --repo {repo}`) or check the branch out first")
    return name


def require_branch(repo: Path, name: str, source: str) -> str:
    """`name` if it is an existing local branch of `repo`; else an error saying where the name came
    from (`source`) and which branches there are."""
    git = Git(repo)
    if git.call("check-ref-format", f"refs/heads/{name}").returncode != 0:
        raise NoLandingBranch(f"landing branch {name!r} ({source}) is not a valid branch name: "
                              "pass --branch NAME with a branch of the repository")
    if git.call("show-ref", "--verify", "--quiet", f"refs/heads/{name}").returncode != 0:
        branches = git.run("for-each-ref", "--format=%(refname:short)", "--count=10", "refs/heads/").split()
        if not branches:
            require_commits(repo)  # no commit at all: the fix is a first commit, not a branch
        have = f"its branches: {', '.join(branches)}" if branches else "it has no branch yet"
        raise NoLandingBranch(
            f"landing branch {name!r} ({source}) does not exist in {repo} ({have}): pass --branch NAME "
            f"naming one of them, set `branch:` in .stigmergy/config.yaml (or `stigmergy init --branch NAME`), "
            f"or create it (`git -C {repo} branch {name}`)")
    return name
