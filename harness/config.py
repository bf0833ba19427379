"""Colony configuration: `.stigmergy/config.yaml`, every key optional, unknown keys refused."""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UsageError
from harness.sandbox import check_mode

LIST_SETTINGS = ("sandbox_read", "sandbox_write", "sandbox_cli_env")  # lists of strings

DEFAULT_CONFIG = """\
# stigmergy-harness colony configuration. Every key is optional; these are the defaults.
# This file may be committed; the rest of .stigmergy/ is runtime state and stays out of git.

# The branch agents land work on: init writes the branch checked out at the time (or
# `init --branch NAME`); --branch on the launcher and on `agent run` overrides it. Absent means main.
branch: main

# Model for agents that are not given --model: anthropic/<model>, openai/<model>,
# litellm/<provider>/<model> or scripted:<path>.
model: null

# Endpoint for anthropic/ and openai/ models (an OpenAI-compatible server: vLLM, Ollama, llama.cpp,
# OpenRouter); null = the provider's default or ANTHROPIC_BASE_URL / OPENAI_BASE_URL. API keys are
# read from the environment only, never from this file.
api_base: null

# Options for the model's provider, e.g. {stream: true, timeout: 300,
# price: {input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75}} (USD per million tokens;
# needed for spend and budget with a model that is not in harness/meter.py's price table).
model_options: {}

# Shell command every task must pass before it lands (run in the agent's worktree),
# in addition to the task's own `verify`. Empty means no repo-wide check.
verify: ""
verify_timeout: 1800      # seconds
verify_rounds: 3          # feed a failing verify back to the model this many times, then release
max_attempts: 5           # a task released this many times is marked failed (with its notes)
red_main_attempts: 1      # while main itself fails verify, attempts at its fix before the colony waits
# A task that just failed an attempt is not claimed again for retry_backoff * 2^(skips-1) seconds
# (30, 60, 120 ... capped at retry_backoff_max): a repeatable error does not spend max_attempts in
# a second, and other ready tasks go first meanwhile. 0 = retry at once.
retry_backoff: 30
retry_backoff_max: 900
# Characters of earlier attempts' notes one prompt carries, the newest first (each note keeps its
# cause and the end of its log; the whole text of a long one is in runs/<task>/<attempt>/release.log).
prompt_notes_chars: 3000
# What else a prompt shows, read from git at the tip of the landing branch: the task's inputs, together
# in at most prompt_inputs_chars characters (small files whole, larger ones share the rest, each cut
# at a line end, saying so), and a map of the repository's files by directory in the system prompt,
# folded to prompt_map_chars characters (deep folders become counts). 0 = none.
prompt_inputs_chars: 12000
prompt_map_chars: 4000

# Tasks one agent may file (create_task, or `stigmergy task add` from an agent CLI): per attempt at
# a task and per hour; beyond that the filing is refused with a note on the task. 0 = none at all.
max_new_tasks_per_attempt: 10
max_new_tasks_per_hour: 30

# Idle sweeps: an agent whose role has `when_idle:` (e.g. critic, tester) and finds nothing ready
# inspects the repository and files what it finds (at most sweep_max_tasks tasks, none that repeat an
# open or recently done task). One sweep of a role at a time in the colony, at most one per role every
# sweep_interval seconds, never on a red main; 0 for either disables sweeps.
sweep_interval: 1800
sweep_max_tasks: 5

# An agent CLI (--backend command) that prints nothing and changes nothing in its worktree for
# this many seconds is stopped (it waits on a prompt, or hangs); 0 = only its time limit stops it.
cli_stall_seconds: 600

# An agent's log (.stigmergy/agents/<id>/agent.log) larger than this is rotated when the launcher
# (re)starts the agent: agent.log -> agent.log.1 (3 kept). 0 = never rotate.
log_max_bytes: 10485760
# Agents claim nothing while the file system of the colony (.stigmergy/) or of their worktree has
# less than this many MB free (a night's runs, worktrees and git objects add up), saying so in the
# log and in `status`, and claim again once there is room. 0 = never hold.
min_free_mb: 200

# Leases: a claim is stale once its owner's heartbeat is older than lease_ttl seconds
# (or its pid is dead on this host). Agents beat every heartbeat_interval seconds.
lease_ttl: 120
heartbeat_interval: 5

# Colony-wide limits, summed over every agent's ledger (null = none). Once one is reached, nothing
# more is claimed and an attempt in flight stops before its next model call; --budget-usd and
# --budget-tokens override them. budget_usd needs a model whose spend can be counted: one in
# harness/meter.py's price table (or litellm's), a scripted one, or model_options.price (zeros for a
# free local server: `price: {input: 0, output: 0}`); the launcher refuses it otherwise. budget_tokens
# counts input + output + cache read + cache write tokens of the harness's own model calls, priced or
# not (an agent CLI, --backend command, reports none to the harness).
budget_usd: null
budget_tokens: null

# Effective priority = priority + min(skip_count * skip_step, skip_cap)
#                     + aging_per_hour * hours waiting + role_bonus (task suits the agent's role)
#                     - overlap_penalty (its outputs overlap an active task's outputs).
skip_step: 5
skip_cap: 25
aging_per_hour: 2
role_bonus: 15
overlap_penalty: 20

# The model's commands (the bash tool), verify and an agent CLI run in a sandbox: auto (bubblewrap
# when it works on this machine, else none with a warning), bwrap (refuse to start without it) or
# none. --sandbox on the launcher and `agent run` overrides it. In bwrap mode only the agent's
# worktree, a private /tmp and sandbox_write folders are writable; home is hidden but for
# sandbox_read folders; git's data is read-only (the harness commits the work itself).
sandbox: auto
sandbox_read: []          # e.g. [~/.local/share/virtualenvs]: visible, read-only
sandbox_write: []         # caches a build needs, e.g. [~/.cache/pip]: made if missing, writable
sandbox_network: true     # false: commands get no network (--unshare-net)
sandbox_cli_env: []       # extra environment variables an agent CLI may see (its presets' keys are known)
"""


@dataclass
class Config:
    """Every setting, typed; the values of a colony come from ``load`` (DEFAULT_CONFIG's, then the
    file's), so the commented default file is the one place a default is written."""

    branch: str
    model: str | None
    api_base: str | None
    model_options: dict[str, Any]
    verify: str
    verify_timeout: float
    verify_rounds: int
    max_attempts: int
    retry_backoff: float
    retry_backoff_max: float
    prompt_notes_chars: int
    prompt_inputs_chars: int
    prompt_map_chars: int
    red_main_attempts: int
    max_new_tasks_per_attempt: int
    max_new_tasks_per_hour: int
    sweep_interval: float
    sweep_max_tasks: int
    cli_stall_seconds: float
    log_max_bytes: int
    min_free_mb: float
    lease_ttl: float
    heartbeat_interval: float
    budget_usd: float | None
    budget_tokens: int | None
    skip_step: int
    skip_cap: int
    aging_per_hour: float
    role_bonus: int
    overlap_penalty: int
    sandbox: str
    sandbox_read: list[str]
    sandbox_write: list[str]
    sandbox_network: bool
    sandbox_cli_env: list[str]

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            text = path.read_text() if path.exists() else ""
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix or delete it") from None
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: Path | str) -> Config:
        """The settings ``text`` says (``path`` names where it came from in every message)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix or delete it") from None
        data = data or {}
        if not isinstance(data, dict):
            raise UsageError(f"{path}: must be a YAML mapping of settings")
        known = {f.name for f in fields(cls)}
        defaults = _defaults()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"{path}: unknown setting(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
        for key, value in data.items():
            default = defaults.get(key)
            if key == "model_options":
                ok = isinstance(value, dict)
            elif key in LIST_SETTINGS:
                ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
            elif key == "sandbox_network":
                ok = isinstance(value, bool)
            elif isinstance(default, str) or key in ("model", "api_base"):
                ok = isinstance(value, str) or (value is None and key in ("model", "api_base"))
            elif key == "budget_tokens":  # a whole number of tokens, or null
                ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
            else:  # numbers; budget_usd may be null
                ok = (value is None and key == "budget_usd") or (
                    isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
                )
            if not ok:
                raise UsageError(f"{path}: setting '{key}' has a bad value {value!r}; see the comments in the default config")
        if not data.get("branch", "main").strip():
            raise UsageError(f"{path}: setting 'branch' is empty; name the branch agents land on, e.g. `branch: main`")
        if "sandbox" in data:
            try:
                check_mode(data["sandbox"])
            except UsageError as e:
                raise UsageError(f"{path}: {e}") from None
        return cls(**(copy.deepcopy(defaults) | data))  # a copy: a list default is no shared object


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return dict(yaml.safe_load(DEFAULT_CONFIG))


def with_branch(text: str, branch: str) -> str:
    """config.yaml's text with its `branch:` line set to `branch` (added when it has none), the
    rest and its comments kept: `init --branch` rewrites one setting, not the user's file."""
    line = yaml.safe_dump({"branch": branch}, default_flow_style=False).strip()  # quoted when it must be
    new, n = re.subn(r"^branch:.*$", lambda _: line, text, count=1, flags=re.M)
    return new if n else text.rstrip("\n") + f"\n{line}\n"
