"""The secrets scan at the end of `report`: did a secret get written down anywhere?

Redaction (redact.py) keeps the secrets the harness knows of out of what it writes; this checks
afterwards, over everything the run left: every file under the colony home (transcripts, verify
logs, agent CLI output, agent logs, launcher.log, events.jsonl, notes, tasks, ledgers; agents'
worktrees excepted) and the lines the colony's landed commits added (commits with a `Task-Id:`
trailer on the landing branch's first-parent line, message included).

It looks for the values of the report's own environment variables whose names look secret
(``redact.secret_env``), raw and in the encodings a model or a tool is likely to produce, and for
fixed-format key shapes whatever the environment. A hit names the place, the variable and the
encoding; the value itself is only ever shown masked.
"""

from __future__ import annotations

import base64
import bisect
import mmap
import os
import re
import textwrap
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.colony import Colony
from harness.git import Git

# Fixed-format keys, flagged even when their variable is not in the report's environment:
# (kind, literal prefixes, pattern, min_classes). The body must mix ``min_classes`` of lower,
# upper and digit: a random key always does, a slug like `sk-implement-the-json-parser` does not.
# The prefixes are searched with bytes.find and the pattern matched only where one is: a regex
# alternation run over every position was ten times slower (about 22 ms per MB).
KEY_SHAPES: tuple[tuple[str, tuple[bytes, ...], re.Pattern[bytes], int], ...] = (
    ("Anthropic API key", (b"sk-ant-",), re.compile(rb"sk-ant-[A-Za-z0-9_-]{20,}"), 3),
    ("OpenAI-style key", (b"sk-",), re.compile(rb"sk-(?!ant-)[A-Za-z0-9_-]{32,}"), 3),
    ("GitHub token", (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_"),
     re.compile(rb"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"), 3),
    ("AWS access key id", (b"AKIA", b"ASIA"), re.compile(rb"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"), 2),
    ("Slack token", (b"xox",), re.compile(rb"xox[abposr]-[A-Za-z0-9-]{10,}"), 2),
    ("Google API key", (b"AIza",), re.compile(rb"AIza[0-9A-Za-z_-]{35}"), 3),
)
_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class Form:
    """One way a secret may be written down: the bytes to look for, and what they are."""

    needle: bytes
    variable: str
    encoding: str


Span = tuple[int, int, "Form | None", str]  # start, end, the form found (None: a key shape), the text


@dataclass(frozen=True)
class Hit:
    where: str  # a path relative to the colony home, or "commit <sha> (<task>) <path>"
    line: int
    variable: str | None  # None for a key shape
    encoding: str  # "raw", "base64", ..., or "looks like a key (<kind>)"
    masked: str


@dataclass
class Scan:
    variables: list[str]
    artefacts: int = 0
    bytes: int = 0
    commits: int = 0
    seconds: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    branch_missing: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mask(text: str) -> str:
    """Enough to recognise which key it is, never enough to use it."""
    return f"{text[:4]}…({len(text)} chars)"


def base64_cores(data: bytes) -> list[bytes]:
    """The base64 of ``data`` as it appears inside any longer base64 text, at each of the three
    byte alignments: the characters that depend on ``data`` alone. Padding is left out on
    purpose: the core is a substring of the padded encoding too, so one needle finds both."""
    cores = []
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + data)
        start = -(-8 * align // 6)  # the first character no prefix bit reaches
        end = 8 * (align + len(data)) // 6  # the last one no following bit reaches
        cores.append(encoded[start:end])
    return cores


def forms(secrets: Mapping[str, str]) -> list[Form]:
    """Every needle for every secret, the most telling label first; one needle once (two
    variables holding the same value share its hits)."""
    found: dict[bytes, Form] = {}

    def add(needle: bytes, name: str, encoding: str) -> None:
        if len(needle) < 8:
            return
        old = found.get(needle)
        if old is None:
            found[needle] = Form(needle, name, encoding)
        elif name not in old.variable.split(", "):
            found[needle] = Form(needle, f"{old.variable}, {name}", old.encoding)

    for name, value in sorted(secrets.items()):
        raw = value.encode()
        add(raw, name, "raw")
        for label, data in ((f"base64 of {name}=…", f"{name}={value}".encode()), ("base64", raw)):
            for core in base64_cores(data):
                add(core, name, label)
                add(core.replace(b"+", b"-").replace(b"/", b"_"), name, label.replace("base64", "base64url"))
        add(raw.hex().encode(), name, "hex")
        add(raw.hex().upper().encode(), name, "hex")
        add(urllib.parse.quote(value, safe="").encode(), name, "url-encoded")
        add(urllib.parse.quote_plus(value, safe="").encode(), name, "url-encoded")
        add(value[::-1].encode(), name, "reversed")
    return list(found.values())


def literals(secrets: Mapping[str, str]) -> list[str]:
    """Every written form of the secrets, for redacting what `report` itself prints."""
    return [f.needle.decode("utf-8", "replace") for f in forms(secrets)]


def _classes(token: bytes) -> int:
    return sum(1 for cls in (rb"[a-z]", rb"[A-Z]", rb"[0-9]") if re.search(cls, token))


def _search(data: bytes | mmap.mmap, needles: list[Form]) -> list[Span]:
    """(start, end, form or None for a key shape, matched text) of every hit in ``data``; a hit
    inside a longer one (the base64 of the value inside the base64 of NAME=value, the raw value
    inside a key shape) is the longer one's."""
    spans: list[Span] = []
    for form in needles:
        at = data.find(form.needle)
        while at != -1:
            spans.append((at, at + len(form.needle), form, form.needle.decode("utf-8", "replace")))
            at = data.find(form.needle, at + 1)
    for kind, prefixes, pattern, need in KEY_SHAPES:
        for prefix in prefixes:
            at = data.find(prefix)
            while at != -1:
                # A key starts a word: `task-...` holds `sk-` and is no key.
                m = pattern.match(data, at) if at == 0 or data[at - 1] not in _WORD else None
                if m is not None and _classes(m.group()) >= need:
                    spans.append((m.start(), m.end(), None, f"{kind}\0{m.group().decode('utf-8', 'replace')}"))
                at = data.find(prefix, at + 1)
    return _untangle(spans)


def _untangle(spans: list[Span]) -> list[Span]:
    """Of overlapping spans keep the environment's variable over a shape, then the longer one.
    Overlaps are found by a sweep, so a file holding the key ten thousand times stays linear."""
    spans.sort(key=lambda s: s[0])
    kept: list[Span] = []
    cluster: list[Span] = []
    reach = -1
    for span in [*spans, (1 << 62, 1 << 62, None, "")]:  # a sentinel closes the last cluster
        if span[0] >= reach and cluster:
            chosen: list[Span] = []
            for c in sorted(cluster, key=lambda s: (s[2] is None, s[0] - s[1])):
                if not any(c[0] < k[1] and k[0] < c[1] for k in chosen):
                    chosen.append(c)
            kept += sorted(chosen, key=lambda s: s[0])
            cluster = []
        cluster.append(span)
        reach = max(reach, span[1])
    return kept


def _hit(where: str, line: int, form: Form | None, text: str) -> Hit:
    if form is None:
        kind, value = text.split("\0", 1)
        return Hit(where, line, None, f"looks like a key ({kind})", mask(value))
    return Hit(where, line, form.variable, form.encoding, mask(text))


def artefacts(home: Path) -> Iterator[Path]:
    """Every regular file under the colony home except inside agents' worktrees (a folder with a
    `.git`): what an agent's worktree held that matters reached main, and the scan reads that."""
    for folder, dirs, files in os.walk(home):
        here = Path(folder)
        if ".git" in dirs or ".git" in files:
            dirs[:] = []
            continue
        if here == home:
            dirs[:] = [d for d in dirs if d != "workspaces"]
        dirs.sort()
        for name in sorted(files):
            path = here / name
            if path.is_file() and not path.is_symlink():
                yield path


def scan_file(path: Path, where: str, needles: list[Form]) -> tuple[int, list[Hit]]:
    """Bytes read and hits in one file. mmap: a multi-gigabyte log is searched in place. (An mmap
    faults if its file is truncated under it; the colony's files are only appended to or replaced
    by rename, which leaves the mapped inode whole.)"""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0, []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            spans = _search(data, needles)
            hits, line, pos = [], 1, 0
            for start, _, form, text in spans:
                line += _newlines(data, pos, start)  # hits are rare: count lines only up to them
                pos = start
                hits.append(_hit(where, line, form, text))
    return size, hits


def _newlines(data: mmap.mmap, start: int, end: int, step: int = 1 << 24) -> int:
    """Newlines in data[start:end], copied 16 MiB at a time rather than all at once."""
    return sum(data[at:min(at + step, end)].count(b"\n") for at in range(start, end, step))


def landed(git: Git, branch: str) -> list[tuple[str, str]]:
    """(commit, task id) of every commit on the branch's first-parent line with a Task-Id trailer."""
    out = git.run("log", "--first-parent", "--format=%H%x09%(trailers:key=Task-Id,valueonly,separator=%x2C)",
                  f"refs/heads/{branch}")
    pairs = (line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return [(sha, task.strip()) for sha, task in pairs if task.strip()]


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _added_lines(commit_text: str) -> Iterator[tuple[str, int, str]]:
    """(path, line in the new file, text) of the message lines and of every added line."""
    message, _, diff = commit_text.partition("\x02")
    for n, text in enumerate(message.splitlines(), 1):
        yield "message", n, text
    path, line, in_header = "", 0, True
    for text in diff.split("\n"):
        if text.startswith("diff --git "):
            in_header = True
        elif in_header and text.startswith("+++ "):
            path = text[6:] if text.startswith("+++ b/") else text[4:]
        elif (m := _HUNK.match(text)) is not None:
            in_header, line = False, int(m.group(1))
        elif not in_header and text.startswith("+"):
            yield path, line, text[1:]
            line += 1
        elif not in_header and text.startswith(" "):
            line += 1  # a context line (there are none with -U0; kept for safety)


def scan_commits(git: Git, commits: list[tuple[str, str]], needles: list[Form]) -> tuple[int, list[Hit]]:
    """Bytes read and hits in the landed commits' messages and added lines: one git process."""
    if not commits:
        return 0, []
    out = git.run("-c", "core.quotePath=false", "log", "--no-walk=unsorted", "--stdin", "-p", "-U0",
                  "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--diff-merges=first-parent",
                  "--format=%x01%H%n%B%x02", input="".join(f"{sha}\n" for sha, _ in commits))
    tasks = dict(commits)
    hits: list[Hit] = []
    size = 0
    for chunk in out.split("\x01")[1:]:
        sha, _, rest = chunk.partition("\n")
        places: list[tuple[str, int]] = []
        starts: list[int] = []
        parts: list[bytes] = []
        offset = 0
        for path, line, text in _added_lines(rest):
            data = text.encode("utf-8", "surrogateescape")
            starts.append(offset)
            places.append((path, line))
            parts.append(data)
            offset += len(data) + 1
        blob = b"\n".join(parts)
        size += len(blob)
        for start, _, form, text in _search(blob, needles):
            path, line = places[bisect.bisect_right(starts, start) - 1]
            hits.append(_hit(f"commit {sha[:10]} ({tasks.get(sha, '?')}) {path}", line, form, text))
    return size, hits


def scan(colony: Colony, secrets: Mapping[str, str], branch: str | None = None) -> Scan:
    """Look for ``secrets`` (name -> value) and key shapes in everything the colony wrote down:
    its files and the commits landed on ``branch`` (default the landing branch; a host of a
    nest: the nest's, fetched into a local branch)."""
    began = time.monotonic()
    needles = forms(secrets)
    result = Scan(variables=sorted(secrets))
    for path in artefacts(colony.home):
        where = str(path.relative_to(colony.home))
        try:
            size, hits = scan_file(path, where, needles)
        except OSError as exc:  # unreadable (permissions) or gone since the walk: say so, go on
            result.unreadable.append(f"{where}: {exc.strerror or exc}")
            continue
        result.artefacts += 1
        result.bytes += size
        result.hits += hits
    git, branch = Git(colony.repo), branch or colony.config.branch
    if git.resolve(f"refs/heads/{branch}") is None:
        result.branch_missing = branch
    else:
        commits = landed(git, branch)
        size, hits = scan_commits(git, commits, needles)
        result.commits, result.bytes, result.hits = len(commits), result.bytes + size, result.hits + hits
    result.seconds = round(time.monotonic() - began, 3)
    return result


def render(s: dict[str, Any], width: int = 80) -> str:
    """The scan's paragraph of the report: one sentence when clean, every hit when not; wrapped
    to ``width`` columns, except that a place (a path, a commit) is never cut."""
    looked = (f"{', '.join(s['variables'])} and known key shapes" if s["variables"] else
              "known key shapes only (no variable named like KEY, TOKEN, SECRET or PASSWORD is set here)")
    checked = f"{s['artefacts']} artefacts, {s['commits']} commits checked"
    def wrap(text: str) -> list[str]:
        return textwrap.wrap(text, width, subsequent_indent="    ", break_on_hyphens=False, break_long_words=False)
    out = []
    if not s["hits"]:
        out += wrap(f"secrets scan: {checked}, no secret found (looked for {looked})")
    else:
        n = len(s["hits"])
        out += wrap(f"!!! SECRETS SCAN: {n} SECRET{'S' if n > 1 else ''} FOUND ({checked}; looked for {looked}) !!!")
        for h in s["hits"]:
            what = f"{h['variable']}, {h['encoding']}" if h["variable"] else h["encoding"]
            line = f"  {h['where']}:{h['line']}  {what}  {h['masked']}"
            out += [line] if len(line) <= width else [f"  {h['where']}:{h['line']}", f"      {what}  {h['masked']}"]
        out += wrap("!!! rotate these keys, and delete or scrub the files and commits named above !!!")
    if s["branch_missing"]:
        out.append(f"  (branch {s['branch_missing']!r} does not exist: no landed commit was checked)")
    for where in s["unreadable"]:
        out.append(f"  (not checked: {where})")
    return "\n".join(out)
