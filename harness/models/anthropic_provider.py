"""``anthropic/<model>``: the Messages API through the official SDK, one attempt per call.

Retries live in ``RetryingModel``; here the SDK's own retries are off (``max_retries=0``) so
there is exactly one retry policy. The stable prefix (tool definitions, then the system prompt,
which holds nothing task-specific) is marked for prompt caching with a ``cache_control`` breakpoint
on the last tool and on the system block, as the Messages API documents it: every turn after the
first, and the first turn of the agent's next task, read it from the cache.
"""

from __future__ import annotations

import json
import os
from typing import Any

import anthropic
import httpx2

from harness.errors import ModelError, ModelTimeout, ModelTransient, UsageError
from harness.models.base import Reply, Request, ToolCall, ToolSpec, Usage
from harness.models.dialect import (ANTHROPIC_REQUEST_OPTIONS, Deadline, call_timeout, deadline_http_client,
                                    request_options)
from harness.models.retry import error_for_status
from harness.redact import redact

_EPHEMERAL = {"type": "ephemeral"}
# Sampling options the API still takes but this SDK's messages.create() no longer names as
# arguments: they travel in the body through extra_body.
_BODY_ONLY = frozenset({"temperature", "top_p", "top_k"})


def to_anthropic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral messages to Messages API params (tool_call -> tool_use, tool_result keeps its id)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        blocks: list[dict[str, Any]] = []
        for b in m.get("content", []):
            kind = b.get("type")
            if kind == "text":
                blocks.append({"type": "text", "text": b["text"]})
            elif kind == "tool_call":
                blocks.append({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b.get("input") or {}})
            elif kind == "tool_result":
                blocks.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": b["id"],
                        "content": b.get("content", ""),
                        "is_error": bool(b.get("is_error", False)),
                    }
                )
            else:
                raise UsageError(f"unknown message block type {kind!r} (expected text, tool_call, tool_result)")
        out.append({"role": m["role"], "content": blocks})
    return out


def to_anthropic_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in tools
    ]
    if out:
        # A cache breakpoint on the last tool caches the whole tool list (tools precede system).
        out[-1]["cache_control"] = dict(_EPHEMERAL)
    return out


def _tool_call(block_id: str, name: str, raw: Any) -> ToolCall:
    if isinstance(raw, dict):
        return ToolCall(id=block_id, name=name, input=raw)
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            return ToolCall(
                id=block_id, name=name, input={}, error=f"tool input is not valid JSON ({exc}): {raw[:200]}"
            )
        if isinstance(parsed, dict):
            return ToolCall(id=block_id, name=name, input=parsed)
    return ToolCall(id=block_id, name=name, input={}, error=f"tool input must be a JSON object, got {str(raw)[:200]}")


def _usage(u: Any) -> Usage:
    return Usage(
        input_tokens=int(getattr(u, "input_tokens", 0) or 0),
        output_tokens=int(getattr(u, "output_tokens", 0) or 0),
        cache_read_tokens=int(getattr(u, "cache_read_input_tokens", 0) or 0),
        cache_write_tokens=int(getattr(u, "cache_creation_input_tokens", 0) or 0),
    )


class AnthropicModel:
    """One Messages API call per ``complete``; wrap in ``RetryingModel`` for retries."""

    SETTINGS = ("api_key", "api_base", "stream", "timeout")

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        stream: bool = False,
        timeout: float = 600.0,
        **options: Any,
    ) -> None:
        # Sent with every request (temperature, tool_choice, extra_body, ...); typos refused by name.
        # No tool_choice by default: the Messages API uses the tools it is given.
        self._options = request_options(f"anthropic/{model}", options, ANTHROPIC_REQUEST_OPTIONS, self.SETTINGS)
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise UsageError(f"anthropic/{model}: no API key; set ANTHROPIC_API_KEY or pass api_key")
        self.model = model
        self.name = f"anthropic/{model}"
        self.stream = stream
        self.base_url = api_base or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        self._secrets = (key,)
        self._timeout = timeout
        self._client = anthropic.Anthropic(api_key=key, base_url=self.base_url, max_retries=0, timeout=timeout,
                                           http_client=deadline_http_client(timeout))

    def __repr__(self) -> str:
        return f"AnthropicModel({self.model!r}, base_url={self.base_url!r}, stream={self.stream})"

    def complete(self, request: Request) -> Reply:
        params: dict[str, Any] = {
            **{k: v for k, v in self._options.items() if v is not None and k not in _BODY_ONLY},
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": to_anthropic_messages(request.messages),
        }
        if request.system:
            params["system"] = [{"type": "text", "text": request.system, "cache_control": dict(_EPHEMERAL)}]
        if request.tools:
            params["tools"] = to_anthropic_tools(request.tools)
        sampling = {k: v for k, v in self._options.items() if v is not None and k in _BODY_ONLY}
        if sampling:
            params["extra_body"] = {**sampling, **params.get("extra_body", {})}
        timeout, deadline_bound = call_timeout(self._timeout, request)
        try:
            with Deadline(timeout if deadline_bound else None):
                if self.stream:
                    reply = self._from_stream(self._client.messages.create(stream=True, timeout=timeout, **params))
                else:
                    reply = self._from_message(self._client.messages.create(timeout=timeout, **params))
        except anthropic.APIStatusError as exc:
            detail = exc.api_message or str(exc.body)[:500]
            raise self._error(exc.status_code, detail, dict(exc.response.headers), exc.body) from None
        except (anthropic.APITimeoutError, httpx2.TimeoutException) as exc:
            if deadline_bound:
                raise ModelTimeout(self._say(f"no reply within the {timeout:.1f}s left for this call; "
                                             "the attempt stops by its time limit")) from None
            raise ModelTransient(self._say(f"connection failed: {type(exc).__name__}: {exc}")) from None
        except anthropic.APIConnectionError as exc:
            raise ModelTransient(self._say(f"connection failed: {type(exc).__name__}: {exc}")) from None
        except httpx2.HTTPError as exc:
            # A stream torn mid-body surfaces as the transport's own error, unwrapped by the SDK.
            raise ModelTransient(self._say(f"connection failed mid-response: {type(exc).__name__}: {exc}")) from None
        except anthropic.AnthropicError as exc:
            # e.g. a torn or unparseable body: the network's fault more often than the API's.
            raise ModelTransient(self._say(f"bad response: {type(exc).__name__}: {exc}")) from None
        return reply

    def _say(self, message: str) -> str:
        return redact(f"{self.name} at {self.base_url}: {message}", self._secrets)

    def _error(self, status: int, detail: str, headers: dict[str, str], body: object = None) -> ModelError:
        return error_for_status(status, self._say(f"HTTP {status}: {detail}"), headers, body=body)

    def _from_message(self, msg: Any) -> Reply:
        reply = Reply(usage=_usage(msg.usage), stop_reason=msg.stop_reason or "end_turn")
        texts: list[str] = []
        for block in msg.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                reply.tool_calls.append(_tool_call(block.id, block.name, block.input))
        reply.text = "".join(texts)
        return reply

    def _from_stream(self, events: Any) -> Reply:
        """Accumulate SSE events ourselves: bad tool JSON becomes ToolCall.error, not an exception."""
        usage = Usage()
        stop_reason = "end_turn"
        blocks: dict[int, dict[str, Any]] = {}
        finished = False
        with events:
            for ev in events:
                if ev.type == "message_start":
                    usage = _usage(ev.message.usage)
                elif ev.type == "content_block_start":
                    cb = ev.content_block
                    if cb.type == "tool_use":
                        blocks[ev.index] = {"type": "tool_use", "id": cb.id, "name": cb.name, "json": []}
                    else:
                        blocks[ev.index] = {"type": cb.type, "text": [getattr(cb, "text", "") or ""]}
                elif ev.type == "content_block_delta":
                    block = blocks.get(ev.index)
                    if block is None:
                        continue
                    if ev.delta.type == "text_delta":
                        block["text"].append(ev.delta.text)
                    elif ev.delta.type == "input_json_delta":
                        block["json"].append(ev.delta.partial_json)
                elif ev.type == "message_delta":
                    stop_reason = ev.delta.stop_reason or stop_reason
                    # message_delta carries the final (cumulative) output count.
                    usage.output_tokens = int(getattr(ev.usage, "output_tokens", 0) or usage.output_tokens)
                elif ev.type == "message_stop":
                    finished = True
        if not finished:
            raise ModelTransient(self._say("stream ended before message_stop"))
        reply = Reply(usage=usage, stop_reason=stop_reason)
        for _, block in sorted(blocks.items()):
            if block["type"] == "text":
                reply.text += "".join(block["text"])
            elif block["type"] == "tool_use":
                reply.tool_calls.append(_tool_call(block["id"], block["name"], "".join(block["json"])))
        return reply
