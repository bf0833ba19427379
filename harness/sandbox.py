"""The model's commands in a sandbox: bubblewrap around every command the model runs and verify.

    sandbox: auto | bwrap | none       (config.yaml, or --sandbox on the launcher and `agent run`)

``auto`` (the default) probes once whether bwrap works on this machine and falls back to ``none``
with a warning naming how to install it; ``bwrap`` asked for explicitly but not working is a
usage error (exit 2). In bwrap mode a command sees:

- its own pid namespace and a fresh /proc: no colony process (agent, launcher, other agents'
  commands) is visible, so nothing to read the environment of (/proc/<pid>/environ) or signal;
  ``--die-with-parent`` and a new session, so a timeout that kills bwrap ends everything inside;
- the root filesystem read-only; a private /tmp (a tmpfs); the user's home, the colony's
  ``.stigmergy/`` and the folder of every agent's worktree hidden under empty tmpfs;
- then, bound back: its own worktree (writable, but its ``.git`` pointer file read-only), the
  repository's git folder read-only (status, diff, log work; add and commit do not: the harness
  commits the work itself), the interpreter and package this harness runs from (read-only, so a
  venv under home still works), ``sandbox_read`` folders read-only and ``sandbox_write`` folders
  (caches a build needs, e.g. ``~/.cache/pip``) writable;
- the network, unless ``sandbox_network: false`` (``--unshare-net``).

:class:`Sandbox` is the one seam: ``wrap(argv, cwd)`` returns the command line to run (bwrap's, or
``argv`` itself for ``none``); it is built once per agent and used by the one helper that runs a
command with a timeout (``tools.execute``), so the bash tool, verify and main's check all go
through it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError

MODES = ("auto", "bwrap", "none")
INSTALL = "apt-get install bubblewrap"

# What each agent-CLI preset needs from the user's home and environment (see command.PRESETS):
# its own config folder, writable (sessions, credentials it refreshes), and its API keys.
PRESET_NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "claude": (("~/.claude", "~/.claude.json"),
               ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL")),
    "codex": (("$CODEX_HOME", "~/.codex"), ("OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL")),
    "aider": (("~/.aider",), ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_BASE")),
    "gemini": (("~/.gemini",), ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
}


def _probe_argv(exe: str) -> list[str]:
    # Exactly the features every sandboxed command uses, so "it works" means "commands will run".
    return [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-pid", "--die-with-parent", "--new-session", "true"]


@functools.lru_cache(maxsize=None)
def probe(path_env: str | None = None) -> tuple[str | None, str]:
    """(bwrap's path, "") when bwrap works here, else (None, why not). Once per process and PATH."""
    exe = shutil.which("bwrap", path=path_env)
    if exe is None:
        return None, "bwrap (bubblewrap) is not installed or not on PATH"
    try:
        done = subprocess.run(_probe_argv(exe), capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{exe} could not be run: {e}"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return None, (f"{exe} does not work on this machine ({why}); unprivileged user namespaces may be "
                      "disabled (sysctl kernel.unprivileged_userns_clone=1, or "
                      "kernel.apparmor_restrict_unprivileged_userns=0)")
    return exe, ""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"sandbox {mode!r} is not one of {', '.join(MODES)}: use --sandbox auto|bwrap|none "
                         "(or `sandbox:` in .stigmergy/config.yaml)")
    return mode


def resolve(mode: str, warn: Callable[[str], None]) -> str | None:
    """bwrap's path when commands are to be sandboxed, None for none. ``bwrap`` that does not work
    raises UsageError naming the fix; ``auto`` that cannot have it warns and returns None."""
    if check_mode(mode) == "none":
        return None
    exe, why = probe(os.environ.get("PATH"))
    if exe is not None:
        return exe
    if mode == "bwrap":
        raise UsageError(f"--sandbox bwrap: {why}. Install it (`sudo {INSTALL}`), or run with --sandbox none "
                         "to let the model's commands run unsandboxed")
    warn(f"warning: {why}, so the model's commands run UNSANDBOXED (they can read this machine's files and "
         f"signal its processes): install bubblewrap (`sudo {INSTALL}`), or pass --sandbox none to silence this")
    return None


def expand(raw: str) -> Path | None:
    """``~`` and ``$VARS`` expanded; None for an entry naming an unset variable (``$CODEX_HOME``)."""
    text = os.path.expandvars(os.path.expanduser(raw))
    if "$" in text or not text.strip():
        return None
    return Path(text).absolute()


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


@dataclass(frozen=True)
class Sandbox:
    """``bwrap`` None: the no-op (``--sandbox none``); else the mounts for one agent's commands."""

    bwrap: str | None = None
    hide: tuple[Path, ...] = ()
    read: tuple[Path, ...] = ()
    write: tuple[Path, ...] = ()
    locked: tuple[Path, ...] = ()  # bound read-only over themselves, last (the worktree's .git file)
    network: bool = True

    @property
    def mode(self) -> str:
        return "bwrap" if self.bwrap else "none"

    @classmethod
    def for_agent(cls, bwrap: str | None, *, worktree: Path, workspaces: Path, colony_home: Path, git_dir: Path,
                  read: Sequence[str] = (), write: Sequence[str] = (), network: bool = True,
                  colony_writable: bool = False) -> Sandbox:
        """The sandbox of one agent's commands. ``colony_writable``: an agent CLI, which must reach
        ``.stigmergy/`` for ``stigmergy task`` and ``agent heartbeat``."""
        if bwrap is None:
            return cls()
        workspaces.mkdir(parents=True, exist_ok=True)  # hidden from the first command on, before worktrees appear
        home = Path(os.path.expanduser("~")).absolute()
        hide = [p for p in (Path("/tmp"), home, colony_home, workspaces) if p != Path("/") and p.exists()]
        # What our own interpreter and package need, in case they live under a hidden folder
        # (a venv in the user's home): the task CLI and `python -m pytest` must still start. Its
        # import path too: a .pth file may add folders outside the venv. Never the colony's own.
        ours = [Path(sys.prefix), Path(sys.base_prefix), Path(__file__).resolve().parent.parent,
                *(Path(p).resolve() for p in sys.path if p and os.path.isdir(p))]
        private = [colony_home, workspaces, colony_home.resolve(), workspaces.resolve()]
        ro = [git_dir.resolve(), *(p for p in ours if _under(p, hide) and not _under(p, private))]
        ro += [p for p in map(expand, read) if p is not None and p.exists()]
        rw = [worktree.resolve()] + ([colony_home.resolve()] if colony_writable else [])
        for p in map(expand, write):
            if p is None:
                continue
            if not p.exists() and not p.suffix:  # a cache folder a build needs: make it, then bind it
                p.mkdir(parents=True, exist_ok=True)
            if p.exists():
                rw.append(p)
        return cls(bwrap, tuple(hide), tuple(dict.fromkeys(ro)), tuple(dict.fromkeys(rw)),
                   (worktree.resolve() / ".git",), network)

    def wrap(self, argv: Sequence[str], cwd: Path) -> list[str]:
        """The command line that runs ``argv`` in ``cwd`` inside this sandbox (``argv`` for none)."""
        if self.bwrap is None:
            return list(argv)
        out = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--unshare-pid", "--die-with-parent", "--new-session"]
        if not self.network:
            out.append("--unshare-net")
        # Shallow before deep, and at one depth a tmpfs before a bind: a bind shows what is under it
        # (the worktree inside the hidden worktrees folder), and a hidden folder inside a bound one
        # (the worktrees inside a writable .stigmergy/, the colony inside a sandbox_read home) stays hidden.
        ops = [(len(p.parts), 0, "--tmpfs", p) for p in self.hide]
        ops += [(len(p.parts), 1, "--ro-bind", p) for p in self.read]
        ops += [(len(p.parts), 1, "--bind", p) for p in self.write]
        for _, _, how, path in sorted(ops, key=lambda op: op[:2]):
            out += [how, str(path)] if how == "--tmpfs" else [how, str(path), str(path)]
        for path in self.locked:
            out += ["--ro-bind-try", str(path), str(path)]
        return [*out, "--chdir", str(cwd), "--", *argv]
