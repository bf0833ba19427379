"""Every error the harness raises on purpose, drawn in one place.

    HarnessError                 base; ``exit_code`` is what the CLI exits with
    ├── UsageError               bad input or usage (exit 2): the message names the problem and the fix
    │   ├── NotARepository       --repo is not a git repository (or a bare one), or has no .stigmergy/
    │   ├── NoLandingBranch      the landing branch is missing, or the repository has none to offer
    │   │                        (no commit yet, a detached HEAD at init)
    │   ├── InvalidTask          a task file or field failed validation (names file and field)
    │   │   └── FilingRefused    a task an agent files (create_task, an agent CLI's `task add`)
    │   │                        is junk (a prose role, a sentence for a path) or comes after the
    │   │                        stop began: refused to the model with what is accepted, noted once
    │   ├── InvalidId            an id that is not a safe file name
    │   ├── UnknownTask          no task with that id
    │   ├── NotOwner             release/done/fail by an agent that does not hold the claim
    │   └── AlreadyRunning       a live process already holds this agent id, or this colony's
    │                            launcher: the message names it (pid, host, since when)
    ├── NothingToClaim           no ready task (exit 3)
    ├── FilingCapped             an agent filed as many tasks as config allows (per attempt, per
    │                            hour): refused to the model's tool or the CLI's `task add` (exit 4)
    ├── ColonyFault              a configuration fault no task can fix (exit 2): the first agent to
    │   │                        see one writes .stigmergy/FAULT and the whole colony stops
    │   ├── VerifyNotRunnable    the repo-wide verify command exits 126/127 on unmodified main
    │   ├── AgentCrashing        an agent crashed (a bug, a broken folder) on 3 different tasks in
    │   │                        a row: the colony stops rather than count it against every task
    │   └── ModelConfigError     the endpoint refuses us whatever we send (also a ModelError)
    │       ├── ModelAuthError   401/403: the API key is wrong or may not use this model
    │       ├── ModelNotFound    404: unknown model name or wrong endpoint URL
    │       └── AgentCliNotRunnable  the agent CLI (--agent-cmd) cannot run: exit 126/127, a usage
    │                            error (exit 2, nothing changed), or it is not logged in / its key
    │                            is refused; the message holds the CLI's own last lines
    ├── GitError                 a git command failed (stderr kept, secrets redacted)
    ├── NestUnreachable          the nest (a git remote, nest.py) did not answer or refused us for
    │                            another reason than a lost race: its URL (credentials dropped)
    │                            and git's words; not the task's fault, retried by the caller
    ├── ToolError                a tool call the model made cannot be carried out; answered to
    │                            the model as a tool error, never escapes the tool loop
    └── ModelError               the model endpoint failed for good (after retries)
        ├── ModelConfigError     (above) 401/403/404: stops the colony, counts against no task
        ├── ModelBadRequest      400/422, or a 500 whose body is a request-validation error: this
        │   │                    request's fault; the attempt ends with a short note (counted)
        │   └── ModelContextOverflow  the conversation is longer than the model's context window:
        │                        the tool loop drops old tool output and retries once
        ├── ModelTimeout         the call did not finish in the time left for the attempt
        │                        (``Request.timeout``): not retried, not an outage; the attempt
        │                        stops by its time limit
        ├── ModelTransient       408/409/5xx/529, connection error, timeout, torn body: retried,
        │   │                    raised only once the retries are spent; then an outage: the
        │   │                    task is released uncounted and the colony cools down
        │   ├── ModelRateLimited 429: carries ``retry_after``; extends the colony cool-down
        │   └── ModelCoolingDown not sent: the colony cools down after an outage (not retried)
        ├── BudgetExceeded       the colony's or the attempt's cost cap was reached
        └── NoScriptMatch        the scripted model has no entry for this task: release it with a note

    Interrupted (a BaseException, outside the tree) aborts an in-flight model call from a signal
    handler (SIGTERM, STOP now, the attempt's deadline): like KeyboardInterrupt, it passes through
    the SDKs' ``except Exception`` and closes the connection on its way out.

Third-party errors (SDK, HTTP, YAML, OS) are mapped to these once, at the boundary
where they arise; nothing above the boundary catches a library's exception type.
"""

from __future__ import annotations


class HarnessError(Exception):
    exit_code = 1


class UsageError(HarnessError):
    exit_code = 2


class NotARepository(UsageError):
    pass


class NoLandingBranch(UsageError):
    pass


class InvalidTask(UsageError):
    pass


class FilingRefused(InvalidTask):
    """A task an agent tried to file, refused; ``reason`` (the field at fault, or "stopping") keys
    the one note per attempt and reason left on the task it was working on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidId(UsageError):
    pass


class UnknownTask(UsageError):
    pass


class NotOwner(UsageError):
    pass


class AlreadyRunning(UsageError):
    pass


class NothingToClaim(HarnessError):
    exit_code = 3


class FilingCapped(HarnessError):
    """An agent reached max_new_tasks_per_attempt or max_new_tasks_per_hour: a follow-up-filing
    loop must not flood the pool (one agent once filed ~290 tasks in five minutes)."""

    exit_code = 4


class GitError(HarnessError):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        self.git_args = args
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"git {' '.join(args[:3])} failed ({returncode}): {stderr.strip()[:2000]}")


class NestUnreachable(HarnessError):
    exit_code = 2  # the URL, the access or the network: the user's to fix


class ToolError(HarnessError):
    pass


class ColonyFault(HarnessError):
    """Not the task's fault and not fixable by retrying: the message names the fix."""

    exit_code = 2
    kind = "config"


class VerifyNotRunnable(ColonyFault):
    kind = "verify_not_runnable"


class AgentCrashing(ColonyFault):
    kind = "crash"


class ModelError(HarnessError):
    pass


class ModelConfigError(ModelError, ColonyFault):
    exit_code = 2
    kind = "model_config"


class ModelAuthError(ModelConfigError):
    kind = "model_auth"


class ModelNotFound(ModelConfigError):
    kind = "model_not_found"


class AgentCliNotRunnable(ModelConfigError):
    """The command backend's CLI is missing, refuses its arguments or is not logged in: no task can
    fix that, and retrying it only fails every task in turn."""

    kind = "agent_cli"


class ModelBadRequest(ModelError):
    pass


class ModelContextOverflow(ModelBadRequest):
    """400 (or 413) saying the prompt exceeds the model's context window: shrinking the
    conversation may help where resending it as it is never will. ``window`` and
    ``prompt_tokens`` where the server says them: a server that counts the reply's max_tokens
    against the window (llama-cpp-python, vLLM) may refuse a prompt that fits."""

    def __init__(self, message: str, *, window: int | None = None, prompt_tokens: int | None = None) -> None:
        super().__init__(message)
        self.window = window
        self.prompt_tokens = prompt_tokens


class ModelTimeout(ModelError):
    """The call (retries included) did not finish within ``Request.timeout``."""


class ModelTransient(ModelError):
    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        # Seconds the server asked us to wait (Retry-After / retry-after-ms), if it said.
        self.retry_after = retry_after


class ModelRateLimited(ModelTransient):
    pass


class ModelCoolingDown(ModelTransient):
    """Not sent: the colony is cooling down after an outage another agent met."""


class BudgetExceeded(ModelError):
    pass


class NoScriptMatch(ModelError):
    pass


class Interrupted(BaseException):
    """Raised inside an in-flight model call to abort it; ``reason`` is "time" or "stop".

    A BaseException so the SDKs' own ``except Exception`` handlers (which would wrap it as a
    connection error and retry) let it through, as they do KeyboardInterrupt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
