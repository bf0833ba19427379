"""The one seam between the agent loop and any model: neutral messages in, a Reply out.

Messages are plain dicts so transcripts are plain JSON:

    {"role": "user" | "assistant", "content": [block, ...]}

with blocks

    {"type": "text", "text": str}
    {"type": "tool_call", "id": str, "name": str, "input": dict}          (assistant)
    {"type": "tool_result", "id": str, "content": str, "is_error": bool}  (user)

Providers translate these to and from their wire format and nothing else; the tool loop
(harness.toolloop) is the same for every provider. ``Request.system`` is the stable prefix
(rules, role prompt, repository map: the same for every task of a role) that providers may cache;
the task goes in the first user message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass
class ToolCall:
    id: str
    name: str
    input: dict[str, Any]
    # Set when the model sent something we could not parse (bad JSON arguments): the loop
    # answers it as a tool error instead of crashing.
    error: str | None = None


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    stop_reason: str = "end_turn"


@dataclass
class Request:
    system: str
    messages: list[dict[str, Any]]
    tools: list[ToolSpec]
    max_tokens: int = 4096
    # Not sent to real providers: lets the scripted model choose its script deterministically.
    task_id: str = ""
    task_title: str = ""
    # Seconds this call may take, its retries included: what is left of the attempt's time
    # (None: no limit but the provider's own timeout). Past it the call raises ModelTimeout.
    timeout: float | None = None
    # Told of what happens inside the call that the caller cannot see: each retry and its wait,
    # a timeout, a dialect fallback ({"kind": "retry", "error": ..., "wait": s, "attempt": n}),
    # so the tool loop can put them in the transcript and the agent's log.
    on_event: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)


class Model(Protocol):
    name: str

    def complete(self, request: Request) -> Reply: ...
