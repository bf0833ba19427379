"""What a prompt shows of the repository: a map of its files, recent commits, and the task's inputs.

Everything is read from git at one commit, the landing branch's tip, never from a worktree: an
agent and `stigmergy prompt render` see the same, and an agent's half-done edits or a conflicted
worktree never leak in. A handful of git commands per attempt (the tree listing, one log of the
branch, one log of the task's paths, one read per input shown), each bounded by a budget.

The map is the part that stays the same across tasks (it changes only when files are added or
removed), so it goes into the system prompt, the cached prefix; the commits and the inputs change
with every landing and every task, so they go into the task's own message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.git import Git
from harness.tasks import Task
from harness.textfmt import clip

LOG_COMMITS = 8  # recent commits of the branch a prompt shows, with the files they changed
TOUCHING_COMMITS = 6  # recent commits touching the task's own paths
RECENT_FILES = 15  # most recently changed files shown
LINE_CHARS = 200  # one directory's line in the map
DIR_FILES = 40  # files a directory input lists
READ_BYTES = 1 << 20  # an input above this is not read at all: its start is not worth the read
MAX_INPUTS = 20  # inputs read for one prompt (each is one git command)
_SEP = "\x1f"
_REC = "\x1e"


@dataclass(frozen=True)
class RepoMap:
    """The branch's files grouped by directory, one line each, folded to fit a budget."""

    text: str  # "src/app/: lib/ (12 files) a.py b.py"; "" when the branch has no files (or no budget)
    files: int  # files on the branch
    folded: int  # files only counted (under a folded folder or a "+N more"), not named


@dataclass(frozen=True)
class Input:
    """One of the task's inputs as the branch has it."""

    path: str
    state: str  # shown, cut, binary, large, missing, directory, unread (the budget was spent)
    text: str  # what is shown: the content (whole or its start) or a directory's files; else ""
    note: str  # what the prompt says about it when not shown whole, e.g. "cut at 1,200 of 5,000 characters"


@dataclass(frozen=True)
class Context:
    """Everything the prompts of one attempt show of the repository (the templates' ``context``)."""

    branch: str
    tip: str  # abbreviated commit of the branch's tip; "" when it has none
    map: RepoMap
    log: list[str] = field(default_factory=list)  # "abc1234 Subject (author, task id)", newest first
    recent: list[str] = field(default_factory=list)  # files those commits changed, newest first
    touching: list[str] = field(default_factory=list)  # commits touching the task's paths, newest first
    inputs: list[Input] = field(default_factory=list)
    inputs_chars: int = 0  # the budget the inputs were shown within


def task_paths(task: Task) -> list[str]:
    """The paths a task names: inputs, outputs and (a merge conflict) the conflicting files."""
    paths = [*task.inputs, *task.outputs, *(str(p) for p in task.meta.get("paths", []) if isinstance(p, str))]
    return list(dict.fromkeys(p.strip("/") for p in paths if p.strip("/")))


def gather(git: Git, branch: str, task: Task, *, inputs_chars: int, map_chars: int) -> Context:
    """The context of an attempt at ``task``, read at the tip of ``branch``."""
    full = git.resolve(f"refs/heads/{branch}")
    if full is None:
        return Context(branch, "", RepoMap("", 0, 0), inputs_chars=inputs_chars)
    tip = git.run("rev-parse", "--short", full).strip()
    tree = _tree(git, full)
    log, recent = _log(git, full)
    return Context(branch, tip, repo_map(sorted(tree), map_chars), log, recent,
                   _touching(git, full, task_paths(task)), read_inputs(git, full, task.inputs, tree, inputs_chars),
                   inputs_chars)


def _tree(git: Git, commit: str) -> dict[str, tuple[str, int]]:
    """path -> (type, size in bytes; -1 when git gives none, e.g. a submodule) of every file."""
    out: dict[str, tuple[str, int]] = {}
    for record in git.run("ls-tree", "-r", "-l", "-z", "--full-tree", commit).split("\0"):
        meta, _, path = record.partition("\t")
        parts = meta.split()
        if len(parts) == 4:
            out[path] = (parts[1], int(parts[3]) if parts[3].isdigit() else -1)
    return out


def _commits(git: Git, commit: str, *args: str, paths: list[str] | None = None) -> list[tuple[str, list[str]]]:
    fmt = f"--format={_REC}%h{_SEP}%s{_SEP}%an{_SEP}%(trailers:key=Task-Id,valueonly,separator=%x2C)"
    # A path is a path, never pathspec magic; and printed as it is, not quoted octal escapes.
    out = git.run("-c", "core.quotePath=false", "log", "--first-parent", fmt, *args, commit, "--", *(paths or []),
                  check=False, env={"GIT_LITERAL_PATHSPECS": "1"})
    commits = []
    for record in out.split(_REC)[1:]:
        head, _, files = record.partition("\n")
        short, subject, author, task = (head.split(_SEP) + ["", "", ""])[:4]
        who = f"{author}, task {task.strip()}" if task.strip() else author
        commits.append((f"{short} {subject} ({who})", [f for f in files.splitlines() if f]))
    return commits


def _log(git: Git, commit: str) -> tuple[list[str], list[str]]:
    commits = _commits(git, commit, f"-{LOG_COMMITS}", "--name-only")
    recent = list(dict.fromkeys(f for _, files in commits for f in files))
    return [line for line, _ in commits], recent[:RECENT_FILES]


def _touching(git: Git, commit: str, paths: list[str]) -> list[str]:
    return [line for line, _ in _commits(git, commit, f"-{TOUCHING_COMMITS}", paths=paths)] if paths else []


# -- the map ------------------------------------------------------------------------------------------

def repo_map(paths: list[str], budget: int) -> RepoMap:
    """``paths`` by directory, one line each, within ``budget`` characters. Until it fits, long lines
    are cut ("… +9 more (9 files)"), then the deepest folders are folded into their parent's line
    ("lib/ (12 files)"), down to the top level alone on one line."""
    if not paths or budget <= 0:  # a budget of 0: no map at all
        return RepoMap("", len(paths), len(paths))
    # Folders keep their own lines as long as they can: a long line is cut first, a folder folded next.
    holding = {p.rpartition("/")[0] for p in paths if "/" in p}  # folders with files of their own
    deepest = max(p.count("/") for p in paths)
    for depth in range(deepest, 0, -1):
        # Each folder that holds files takes a line of at least its name at this depth: skip a depth
        # that cannot fit without building it (a big repository has thousands of folders).
        if sum(len(f) + 3 for f in holding if f.count("/") < depth) > budget:
            continue
        for width in (budget, LINE_CHARS):
            lines, folded = _map_lines(paths, depth, width)
            if len("\n".join(lines)) <= budget:
                return RepoMap("\n".join(lines), len(paths), folded)
    lines, folded = _map_lines(paths, 0, budget)  # the top level alone, on one line cut to the budget
    return RepoMap(clip(lines[0], budget), len(paths), folded)


def _map_lines(paths: list[str], depth: int, width: int) -> tuple[list[str], int]:
    """The map's lines listing folders at most ``depth`` deep, deeper ones folded into their
    ancestor's line; and how many files are counted rather than named."""
    named: dict[str, list[str]] = {}
    below: dict[str, dict[str, int]] = {}
    for path in paths:
        parts = path.split("/")
        bucket = "/".join(parts[:min(depth, len(parts) - 1)])
        if len(parts) - 1 <= depth:
            named.setdefault(bucket, []).append(parts[-1])
        else:
            sub = below.setdefault(bucket, {})
            sub[parts[depth]] = sub.get(parts[depth], 0) + 1
    lines, folded = [], 0
    for bucket in sorted(set(named) | set(below)):
        # (label, files it stands for, named): a folded folder only counts its files, and goes first
        # since it stands for more of them; a line cut short keeps the folders
        items = [(f"{d}/ ({n} file{'s' if n > 1 else ''})", n, False) for d, n in sorted(below.get(bucket, {}).items())]
        items += [(name, 1, True) for name in sorted(named.get(bucket, []))]
        line, counted = _line(f"{bucket}/:" if bucket else "./:", items, width)
        lines.append(line)
        folded += counted
    return lines, folded


def _line(head: str, items: list[tuple[str, int, bool]], width: int) -> tuple[str, int]:
    """``head`` and as many ``items`` as fit in ``width``, then "… +N more (F files)"; and the files
    the line counts without naming them."""
    room = sum(1 + len(label) for label, _, _ in items)  # what the items not yet on the line take
    files = sum(n for _, n, _ in items)
    line, counted = head, 0
    for i, (label, n, is_named) in enumerate(items):
        if len(line) + room <= width:  # the rest fits whole
            return " ".join([line, *(it[0] for it in items[i:])]), counted + sum(
                m for _, m, named in items[i:] if not named)
        more = f" … +{len(items) - i} more ({files} files)"
        if len(line) + 1 + len(label) + len(more) > width:
            return line + more, counted + files
        line += " " + label
        room -= 1 + len(label)
        files -= n
        counted += 0 if is_named else n
    return line, counted


# -- the inputs ---------------------------------------------------------------------------------------

def read_inputs(git: Git, commit: str, inputs: list[str], tree: dict[str, tuple[str, int]],
                budget: int) -> list[Input]:
    """Each input as ``commit`` has it, the texts together within ``budget`` characters: the small
    ones whole, the larger ones sharing what is left equally, each cut at a line end."""
    wanted = list(dict.fromkeys(p.strip("/") for p in inputs if p.strip("/")))
    texts: dict[str, str] = {}
    out: dict[str, Input] = {}
    for path in wanted:
        kind, size = tree.get(path, ("", 0))
        if kind == "blob" and size > READ_BYTES:
            out[path] = Input(path, "large", "", f"{size:,} bytes: too large to show here; read it in your worktree")
        elif kind == "blob" and len(texts) >= MAX_INPUTS:
            out[path] = Input(path, "unread", "", f"not shown: a prompt shows at most {MAX_INPUTS} inputs")
        elif kind == "blob":
            text = git.run("cat-file", "blob", f"{commit}:{path}", check=False)
            if "\0" in text[:8000]:  # git's own test for a binary file
                out[path] = Input(path, "binary", "", "binary, not shown")
            elif any("\udc80" <= c <= "\udcff" for c in text):  # bytes that are not UTF-8, surrogate-escaped
                out[path] = Input(path, "binary", "", "not UTF-8 text, not shown")
            else:
                texts[path] = text
        elif kind:
            out[path] = Input(path, "missing", "", f"a {kind} (a submodule), not a file")
        else:
            out[path] = _directory(path, tree)
    shares = _shares({p: len(t) for p, t in texts.items()}, budget)
    for path, text in texts.items():
        out[path] = _cut(path, text, shares[path])
    return [out[p] for p in wanted]


def _directory(path: str, tree: dict[str, tuple[str, int]]) -> Input:
    under = [p[len(path) + 1:] for p in tree if p.startswith(path + "/")]
    if not under:
        return Input(path, "missing", "", "not on the branch")
    more = f"… and {len(under) - DIR_FILES} more\n" if len(under) > DIR_FILES else ""
    return Input(path, "directory", "".join(f"{p}\n" for p in under[:DIR_FILES]) + more,
                 f"a directory of {len(under)} file{'s' if len(under) > 1 else ''}: its files")


def _shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Characters each text may show: the smallest first take all they need, and what is left is
    shared equally by the rest."""
    shares, left = {}, max(budget, 0)
    order = sorted(sizes, key=lambda p: (sizes[p], p))
    for i, path in enumerate(order):
        shares[path] = min(sizes[path], left // (len(order) - i))
        left -= shares[path]
    return shares


def _cut(path: str, text: str, share: int) -> Input:
    if not text:
        return Input(path, "shown", "", "an empty file")
    if len(text) <= share:
        return Input(path, "shown", text if text.endswith("\n") else text + "\n", "")
    if share == 0:
        return Input(path, "unread", "", "not shown: the inputs' budget is spent; read it in your worktree")
    cut = text[:share]
    if "\n" in cut:  # end at a whole line
        cut = cut[:cut.rindex("\n") + 1]
    return Input(path, "cut", cut if cut.endswith("\n") else cut + "\n",
                 f"cut at {len(cut):,} of {len(text):,} characters; the rest is in your worktree")
