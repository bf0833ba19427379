"""What the model can do, confined to one worktree.

Tools (schemas in ``toolspec.TOOL_SPECS``, Anthropic style; the edit tool mirrors Anthropic's text editor):

    bash                        run ``command`` with ``bash -c`` in the worktree, in its own process
                                group, with a timeout that kills the whole group; stdout+stderr merged
                                and cut to ``output_limit`` chars (head, tail, and error-looking lines
                                from the middle are kept). Background jobs left running when the
                                command returns are killed too, so nothing outlives the call.
    str_replace_based_edit_tool view / create / str_replace / insert on paths inside the worktree
                                (relative, or absolute within it; symlinks resolved; ``.git`` refused)
    create_task                 file a new task in the colony (via the ``Environment`` sink)
    add_note                    leave a note on the current task for the next claimant
    finish                      end the attempt with a summary

``Toolbox.run`` never raises for anything the model did: malformed calls, unknown tools, bad
fields, missing files and refused paths all come back as ``ToolResult(is_error=True)`` so the
model can correct itself.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from harness.errors import HarnessError, ToolError
from harness.models.base import ToolCall, ToolSpec
from harness.sandbox import Sandbox
from harness.toolspec import ADD_NOTE, BASH, CREATE_TASK, EDIT, FINISH, TOOL_SPECS, schema_problem

DEFAULT_BASH_TIMEOUT = 300.0
DEFAULT_OUTPUT_LIMIT = 16_000


_SPEC_BY_NAME = {spec.name: spec for spec in TOOL_SPECS}


class Environment(Protocol):
    """The colony as the tools see it (implemented by the agent's environment backend)."""

    def create_task(self, fields: dict[str, Any]) -> str:
        """Validate and file a task; return its id (raise a HarnessError when fields are bad)."""
        ...

    def add_note(self, text: str) -> None: ...


@dataclass
class ToolResult:
    content: str
    is_error: bool = False
    # Set by the finish tool: the attempt's summary. The loop stops after this call.
    finished: str | None = None
    stuck: bool = False  # finish said it could not do the task (Outcome.stopped_by "stuck")


class Toolbox:
    def __init__(
        self,
        worktree: str | os.PathLike[str],
        env_vars: Mapping[str, str] | None,
        sink: Environment,
        bash_timeout: float = DEFAULT_BASH_TIMEOUT,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        sandbox: Sandbox | None = None,
        allowed: Sequence[str] | None = None,
        why: str = "",
    ) -> None:
        """``env_vars`` is the complete environment of bash commands (None: inherit ours);
        ``sandbox`` wraps each of them (None: run as they are). ``allowed``: the only tools offered
        (None: all; finish always), any other call a tool error that names them and says ``why``."""
        self.sandbox = sandbox
        self.allowed = tuple(t for t in _SPEC_BY_NAME if allowed is None or t in allowed or t == FINISH)
        self.why = why
        self.root = Path(worktree).resolve()
        self.env_vars = dict(env_vars) if env_vars is not None else None
        self.sink = sink
        self.bash_timeout = bash_timeout
        self.output_limit = output_limit
        # Resolved once from our PATH: the command's env may carry a PATH of its own, or none.
        self._shell = shutil.which("bash") or "/bin/sh"
        self._handlers: dict[str, Callable[[dict[str, Any]], ToolResult]] = {
            BASH: self._bash,
            EDIT: self._edit,
            CREATE_TASK: self._create_task,
            ADD_NOTE: self._add_note,
            FINISH: self._finish,
        }

    @property
    def specs(self) -> list[ToolSpec]:
        return [s for s in TOOL_SPECS if s.name in self.allowed]

    def run(self, call: ToolCall) -> ToolResult:
        if call.error:
            return ToolResult(f"Could not read your call to {call.name!r}: {call.error}", is_error=True)
        handler = self._handlers.get(call.name)
        known = ", ".join(self.allowed)
        if handler is None:
            return ToolResult(f"Unknown tool {call.name!r}; the tools are: {known}", is_error=True)
        if call.name not in self.allowed:
            return ToolResult(f"{call.name!r} is not one of your tools here{f' ({self.why})' if self.why else ''}; "
                              f"the tools are: {known}", is_error=True)
        problem = schema_problem(_SPEC_BY_NAME[call.name].input_schema, call.input)
        if problem:
            return ToolResult(f"{call.name}: {problem}", is_error=True)
        try:
            return handler(call.input)
        except HarnessError as exc:  # ToolError, or the sink refusing a task (InvalidTask, ...)
            return ToolResult(f"{call.name}: {exc}", is_error=True)
        except OSError as exc:
            return ToolResult(f"{call.name}: {exc.strerror or exc}", is_error=True)

    # -- bash -------------------------------------------------------------------------------

    def _bash(self, args: dict[str, Any]) -> ToolResult:
        text, timed_out = run_command(
            [self._shell, "-c", args["command"]], self.root, self.env_vars, self.bash_timeout, self.output_limit,
            self.sandbox,
        )
        return ToolResult(text, is_error=timed_out)

    # -- editing ----------------------------------------------------------------------------

    def _edit(self, args: dict[str, Any]) -> ToolResult:
        command = args["command"]
        path = self.resolve(args["path"])
        if command == "view":
            return ToolResult(self._view(path, args.get("view_range")))
        if command == "create":
            return ToolResult(self._create(path, _required(args, "file_text", command)))
        if command == "str_replace":
            return ToolResult(self._str_replace(path, _required(args, "old_str", command), args.get("new_str") or ""))
        # insert; older Anthropic editor versions call the text new_str, so accept that too.
        text = args.get("insert_text", args.get("new_str"))
        if text is None:
            raise ToolError("insert needs insert_text")
        return ToolResult(self._insert(path, _required(args, "insert_line", command), text))

    def resolve(self, raw: str) -> Path:
        """The real path for ``raw``, or ToolError when it leaves the worktree or enters .git."""
        if not raw.strip():
            raise ToolError("path is empty")
        given = Path(raw)
        # resolve() follows symlinks, so a link inside the worktree cannot point us outside it.
        real = (given if given.is_absolute() else self.root / given).resolve()
        try:
            inside = real.relative_to(self.root)
        except ValueError:
            raise ToolError(f"{raw}: outside the worktree {self.root}; use a path inside it") from None
        if any(part.lower() == ".git" for part in inside.parts):
            raise ToolError(f"{raw}: .git is off limits; use git commands through bash if needed")
        return real

    def _show(self, path: Path) -> str:
        return str(path.relative_to(self.root)) or "."

    def _view(self, path: Path, view_range: list[int] | None) -> str:
        if path.is_dir():
            return clip_lines(self._listing(path), self.output_limit)
        lines = _read_text(path, self._show(path)).splitlines()
        if not lines:
            return f"{self._show(path)} is empty"
        start, end = 1, len(lines)
        if view_range is not None:
            if len(view_range) != 2:
                raise ToolError("view_range must be [start, end]")
            start, end = view_range[0], (len(lines) if view_range[1] == -1 else view_range[1])
            if not (1 <= start <= end <= len(lines)):
                raise ToolError(f"view_range {view_range} is outside the file's lines 1..{len(lines)}")
        numbered = [f"{number:6}\t{line}\n" for number, line in enumerate(lines[start - 1 : end], start)]
        text = clip_lines(numbered, self.output_limit)
        if end - start + 1 < len(lines) or sum(map(len, numbered)) > self.output_limit:
            text += f"[{self._show(path)} has {len(lines)} lines; use view_range to see other parts]\n"
        return text

    def _listing(self, directory: Path) -> Iterable[str]:
        # Two levels, hidden entries skipped, like Anthropic's editor: enough to orient, not a dump.
        yield f"{self._show(directory)}/\n"
        for child in _visible(directory):
            yield f"  {self._show(child)}{'/' if child.is_dir() else ''}\n"
            if child.is_dir() and not child.is_symlink():
                for grandchild in _visible(child):
                    yield f"    {self._show(grandchild)}{'/' if grandchild.is_dir() else ''}\n"

    def _create(self, path: Path, file_text: str) -> str:
        if path.is_dir():
            raise ToolError(f"{self._show(path)} is a directory")
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file_text.encode("utf-8"))
        return f"{'Overwrote' if existed else 'Created'} {self._show(path)} ({len(file_text)} chars)"

    def _str_replace(self, path: Path, old: str, new: str) -> str:
        if not old:
            raise ToolError("old_str is empty; to write a whole file use create")
        text = _read_text(path, self._show(path))
        count = text.count(old)
        if count == 0:
            raise ToolError(
                f"old_str not found in {self._show(path)}; nothing changed. View the file and copy the "
                "exact text (whitespace and indentation must match)."
            )
        if count > 1:
            starts = [m.start() for m in re.finditer(re.escape(old), text)]
            where = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts[:20])
            raise ToolError(
                f"old_str occurs {count} times in {self._show(path)} (at lines {where}); it must occur "
                "exactly once: include more surrounding lines to make it unique. Nothing changed."
            )
        at = text.index(old)
        updated = text[:at] + new + text[at + len(old) :]
        path.write_bytes(updated.encode("utf-8"))
        first = text.count("\n", 0, at) + 1
        return f"Edited {self._show(path)}:\n" + _snippet(updated, first, first + new.count("\n"))

    def _insert(self, path: Path, after: int, insert: str) -> str:
        text = _read_text(path, self._show(path))
        lines = text.splitlines(keepends=True)
        if not 0 <= after <= len(lines):
            raise ToolError(f"insert_line {after} is outside 0..{len(lines)} (the file has {len(lines)} lines)")
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += "\n"
        if not insert.endswith("\n"):
            insert += "\n"
        lines.insert(after, insert)
        updated = "".join(lines)
        path.write_bytes(updated.encode("utf-8"))
        return f"Inserted into {self._show(path)}:\n" + _snippet(updated, after + 1, after + insert.count("\n"))

    # -- colony -----------------------------------------------------------------------------

    def _create_task(self, args: dict[str, Any]) -> ToolResult:
        fields = {k: v for k, v in args.items() if k in _SPEC_BY_NAME[CREATE_TASK].input_schema["properties"]}
        return ToolResult(f"Created task {self.sink.create_task(fields)}")

    def _add_note(self, args: dict[str, Any]) -> ToolResult:
        self.sink.add_note(args["text"])
        return ToolResult("Note added.")

    def _finish(self, args: dict[str, Any]) -> ToolResult:
        return ToolResult("Attempt finished.", finished=args["summary"], stuck=args.get("stuck") is True)


# -- running commands -------------------------------------------------------------------------


def run_command(
    argv: list[str], cwd: Path, env: Mapping[str, str] | None, timeout: float, limit: int,
    sandbox: Sandbox | None = None, stall: Stall | None = None,
) -> tuple[str, bool]:
    """Run ``argv`` in a new session (in ``sandbox``); return (clipped output + exit code line, timed_out)."""
    # Output goes to a file, not a pipe: a background job holding the pipe open would
    # otherwise make us wait for it, and a file never blocks a chatty command.
    with tempfile.TemporaryFile() as out:
        code, leftovers = execute(argv, cwd, env, timeout, out, sandbox, stall)
        out.seek(0)
        text = clip_lines(io.TextIOWrapper(out, encoding="utf-8", errors="replace", newline=""), limit)
    if text and not text.endswith("\n"):
        text += "\n"
    if code is None and stall is not None and stall.stalled:
        text += (f"[{STALLED} {stall.seconds:g}s: no output and no change in the worktree; the command "
                 "and every process it started were killed]\n")
    elif code is None:
        text += f"[timed out after {timeout:g}s: the command and every process it started were killed]\n"
    elif leftovers:
        text += "[background processes still running when the command returned were killed]\n"
    return f"{text}[exit code {code}]", code is None


STALLED = "stalled for"


@dataclass
class Stall:
    """Abort a command that makes no progress for ``seconds``: no new output and no change in what
    ``probe`` returns (e.g. the worktree's status). An agent CLI waiting on a prompt nobody answers
    would otherwise hold its claim until the full timeout."""

    seconds: float
    probe: Callable[[], object] = lambda: None
    stalled: bool = False


def execute(argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None, timeout: float, out: IO[bytes],
            sandbox: Sandbox | None = None, stall: Stall | None = None) -> tuple[int | None, bool]:
    """The one way the harness runs a command it does not trust (the model's bash calls, verify,
    an agent CLI): in ``sandbox``, in a session of its own, stdout and stderr to ``out``; on a
    timeout (or a ``stall``) the whole process group is killed (bwrap's --die-with-parent then ends
    its pid namespace). Returns (exit code, or None on a timeout; whether leftovers had to be killed)."""
    wrapped = sandbox.wrap(argv, cwd) if sandbox is not None else list(argv)
    proc = subprocess.Popen(wrapped, cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    code: int | None = None
    try:
        if stall is None:
            code = proc.wait(timeout=timeout)
        else:
            code = _wait_watched(proc, out, timeout, stall)
    except subprocess.TimeoutExpired:
        pass
    if code is None:
        _kill_group(proc.pid)
        proc.wait()
    return code, _kill_group(proc.pid) and code is not None


def _wait_watched(proc: subprocess.Popen[bytes], out: IO[bytes], timeout: float, stall: Stall) -> int | None:
    """Wait for ``proc`` like ``wait(timeout)``, but give up (None) once it stalls."""
    end = time.monotonic() + timeout
    step = max(0.05, min(2.0, stall.seconds / 4))
    last, since = None, time.monotonic()
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(step, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now >= end:
            return None
        seen = (os.fstat(out.fileno()).st_size, stall.probe())
        if seen != last:
            last, since = seen, now
        elif now - since >= stall.seconds:
            stall.stalled = True
            return None


def _kill_group(pgid: int) -> bool:
    """SIGKILL a process group; True when something was still there to kill."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- shortening output ------------------------------------------------------------------------

# A line worth showing first from a long output (a shortened bash result, a verify excerpt).
ERRORISH = re.compile(r"(?i:error|exception)|Traceback|FAILED|FAIL:|assert|panicked")


def clip_lines(lines: Iterable[str], limit: int) -> str:
    """Join ``lines`` (with their newlines), keeping at most about ``limit`` chars.

    Over the limit: ~40% head, ~40% tail, and the rest for lines from the cut middle that look
    like errors, since that is what a model most needs from a long test or build log. One pass
    and bounded memory, so a command printing gigabytes cannot exhaust us.
    """
    head_budget = tail_budget = limit * 2 // 5
    error_budget = limit - head_budget - tail_budget
    longest = max(200, limit // 4)
    verbatim: list[str] | None = []  # the whole text, until it proves too long
    verbatim_size = 0
    head: list[str] = []
    head_size = 0
    tail: deque[str] = deque()
    tail_size = 0
    errors: list[str] = []
    error_size = 0
    cut_lines = cut_chars = 0
    for line in lines:
        if verbatim is not None:
            verbatim.append(line)
            verbatim_size += len(line)
            if verbatim_size > limit:
                verbatim = None
        if len(line) > longest:
            line = f"{line[:longest]} [... {len(line) - longest} chars of this line cut]\n"
        if tail_size == 0 and head_size + len(line) <= head_budget:
            head.append(line)
            head_size += len(line)
            continue
        tail.append(line)
        tail_size += len(line)
        while tail_size > tail_budget and len(tail) > 1:
            middle = tail.popleft()
            tail_size -= len(middle)
            if ERRORISH.search(middle) and error_size + len(middle) <= error_budget:
                errors.append(middle)
                error_size += len(middle)
            else:
                cut_lines += 1
                cut_chars += len(middle)
    if verbatim is not None:
        return "".join(verbatim)
    if cut_lines == 0:  # only long lines were shortened; each says so itself
        return "".join(head) + "".join(errors) + "".join(tail)
    kept = f"; {len(errors)} error-looking lines from it follow" if errors else ""
    marker = f"[... output truncated: {cut_lines} lines ({cut_chars} chars) cut from the middle{kept} ...]\n"
    after = "[... end of error-looking lines; the output's last lines follow ...]\n" if errors else ""
    return "".join(head) + marker + "".join(errors) + after + "".join(tail)


# -- small helpers ----------------------------------------------------------------------------


def _required(args: dict[str, Any], name: str, command: str) -> Any:
    if args.get(name) is None:
        raise ToolError(f"{command} needs {name}")
    return args[name]


def _read_text(path: Path, shown: str) -> str:
    if path.is_dir():
        raise ToolError(f"{shown} is a directory; view it, or give a file path")
    if not path.exists():
        raise ToolError(f"{shown} does not exist (create makes new files)")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{shown} is not a UTF-8 text file") from None


def _visible(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _snippet(text: str, first: int, last: int, context: int = 3) -> str:
    lines = text.splitlines()
    start, end = max(1, first - context), min(len(lines), last + context)
    return "".join(f"{n:6}\t{lines[n - 1]}\n" for n in range(start, end + 1))
