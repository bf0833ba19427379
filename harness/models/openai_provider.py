"""``openai/<model>``: chat completions with function calling, against any OpenAI-compatible URL.

The message translation here is shared with ``litellm/...``, which speaks the same format.
One attempt per call (SDK retries off); ``RetryingModel`` does the retrying.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import openai

from harness.errors import ModelBadRequest, ModelTimeout, ModelTransient, UsageError
from harness.models.base import Reply, Request, ToolCall, ToolSpec, Usage
from harness.models.dialect import (OPENAI_REQUEST_OPTIONS, Deadline, after, call_timeout, deadline_http_client,
                                    request_options)
from harness.models.retry import error_for_status, mentions_tool_choice, tell
from harness.redact import redact

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"

# OpenAI finish_reason -> the neutral (Anthropic-style) stop_reason the tool loop understands.
_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens"}


def to_openai_messages(system: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral messages to chat-completions messages.

    A neutral user message holding tool results becomes one ``role: tool`` message per result
    (they must directly follow the assistant message that made the calls), then a user message
    for any text. OpenAI has no ``is_error`` flag, so failed results say so in their content.
    """
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        blocks = m.get("content", [])
        texts = [b["text"] for b in blocks if b.get("type") == "text"]
        if m["role"] == "assistant":
            # "" rather than None beside tool calls: llama-cpp-python's server refuses a null
            # content (HTTP 500, a pydantic validation error) and every other server takes "".
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
            calls = [b for b in blocks if b.get("type") == "tool_call"]
            if calls:
                msg["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c.get("input") or {})},
                    }
                    for c in calls
                ]
            out.append(msg)
            continue
        for b in blocks:
            if b.get("type") == "tool_result":
                content = str(b.get("content", ""))
                if b.get("is_error"):
                    content = f"ERROR: {content}"
                out.append({"role": "tool", "tool_call_id": b["id"], "content": content})
            elif b.get("type") not in ("text", "tool_result"):
                raise UsageError(f"unknown message block type {b.get('type')!r} (expected text, tool_result)")
        if texts:
            out.append({"role": "user", "content": "\n".join(texts)})
    return out


def to_openai_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
        for t in tools
    ]


def parse_arguments(call_id: str, name: str, arguments: Any) -> ToolCall:
    """Tool arguments arrive as a JSON string; anything unparseable becomes ``ToolCall.error``."""
    if isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, input=arguments)
    text = "" if arguments is None else str(arguments)
    try:
        parsed = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        return ToolCall(
            id=call_id, name=name, input={}, error=f"tool arguments are not valid JSON ({exc}): {text[:200]}"
        )
    if not isinstance(parsed, dict):
        return ToolCall(
            id=call_id, name=name, input={}, error=f"tool arguments must be a JSON object, got {text[:200]}"
        )
    return ToolCall(id=call_id, name=name, input=parsed)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or key: the SDK gives objects, litellm objects or dicts depending on version."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def reply_from_completion(completion: Any) -> Reply:
    """A chat completion (OpenAI SDK or litellm object) to a neutral Reply, cost not yet set.

    ``Usage.input_tokens`` is the uncached part of the prompt; OpenAI counts cached tokens
    inside ``prompt_tokens``, so they are moved to ``cache_read_tokens``.
    """
    choices = _get(completion, "choices") or []
    if not choices:
        raise ModelTransient("completion has no choices")
    choice = choices[0]
    message = _get(choice, "message")
    reply = Reply(text=_get(message, "content") or "")
    for i, call in enumerate(_get(message, "tool_calls") or []):
        fn = _get(call, "function")
        reply.tool_calls.append(
            parse_arguments(_get(call, "id") or f"call_{i}", _get(fn, "name") or "", _get(fn, "arguments"))
        )
    finish = _get(choice, "finish_reason") or "stop"
    reply.stop_reason = _STOP_REASONS.get(finish, finish)
    usage = _get(completion, "usage")
    prompt = int(_get(usage, "prompt_tokens", 0) or 0)
    cached = int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens", 0) or 0)
    reply.usage = Usage(
        input_tokens=max(0, prompt - cached),
        output_tokens=int(_get(usage, "completion_tokens", 0) or 0),
        cache_read_tokens=cached,
    )
    return reply


class ToolChoice:
    """Whether to send ``tool_choice`` with tools, shared by the openai and litellm providers.

    Sent as ``"auto"`` by default: llama-cpp-python's function-calling chat format ignores the
    tools unless it is sent. A user's value is sent as given; ``tool_choice: null`` sends none.
    When our default is refused (vLLM without --enable-auto-tool-choice answers 400), it is
    dropped for this model instance and the request tried once more without it.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.defaulted = "tool_choice" not in options
        self.value: Any = options.pop("tool_choice", "auto")

    def send(self, params: dict[str, Any], request: Request, name: str,
             call: Callable[[dict[str, Any], Request], Reply]) -> Reply:
        """``call(params, request)`` with tool_choice set; once more without it (in the time left)
        when the server refused our default."""
        if params.get("tools") and self.value is not None:
            params["tool_choice"] = self.value
        started = time.monotonic()
        try:
            return call(params, request)
        except ModelBadRequest as exc:
            if not (self.defaulted and "tool_choice" in params and mentions_tool_choice(exc)):
                raise
            self.value = None  # off from now on for this model
            del params["tool_choice"]
            tell(request, {"kind": "dialect", "model": name, "option": "tool_choice", "action": "dropped",
                           "reason": str(exc)[:500]})
        return call(params, after(request, time.monotonic() - started))


class OpenAIModel:
    """One chat-completions call per ``complete``; wrap in ``RetryingModel`` for retries."""

    SETTINGS = ("api_key", "api_base", "timeout", "max_tokens_param")

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        timeout: float = 600.0,
        max_tokens_param: str = "max_tokens",
        **options: Any,
    ) -> None:
        self.model = model
        self.name = f"openai/{model}"
        # Sent with every request (temperature, seed, extra_body, ...); typos refused by name.
        self._options = request_options(self.name, options, OPENAI_REQUEST_OPTIONS, self.SETTINGS)
        self._tool_choice = ToolChoice(self._options)
        self.base_url = api_base or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if self.base_url.rstrip("/") == OPENAI_DEFAULT_BASE:
                raise UsageError(f"openai/{model}: no API key; set OPENAI_API_KEY or pass api_key")
            # Local OpenAI-compatible servers (vLLM, Ollama, llama.cpp) often want no key, but
            # the SDK insists on one.
            key = "no-key"
        # OpenAI's newer models want max_completion_tokens; most compatible servers max_tokens.
        self.max_tokens_param = max_tokens_param
        self._timeout = timeout
        self._secrets = (key,)
        self._client = openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=timeout,
                                     http_client=deadline_http_client(timeout))

    def __repr__(self) -> str:
        return f"OpenAIModel({self.model!r}, base_url={self.base_url!r})"

    def complete(self, request: Request) -> Reply:
        params: dict[str, Any] = {
            **self._options,
            "model": self.model,
            "messages": to_openai_messages(request.system, request.messages),
            self.max_tokens_param: request.max_tokens,
        }
        if request.tools:
            params["tools"] = to_openai_tools(request.tools)
        return self._tool_choice.send(params, request, self.name, self._call)

    def _call(self, params: dict[str, Any], request: Request) -> Reply:
        timeout, deadline_bound = call_timeout(self._timeout, request)
        try:
            with Deadline(timeout if deadline_bound else None):
                completion = self._client.chat.completions.create(**params, timeout=timeout)
            reply = reply_from_completion(completion)
        except openai.APIStatusError as exc:
            # The SDK hands over either the whole body or just its "error" object.
            body = exc.body
            detail = _get(body, "message") or _get(_get(body, "error"), "message") or str(body)[:500]
            raise error_for_status(
                exc.status_code, self._say(f"HTTP {exc.status_code}: {detail}"), dict(exc.response.headers),
                body=body,
            ) from None
        except openai.APITimeoutError as exc:
            if deadline_bound:
                raise ModelTimeout(self._say(f"no reply within the {timeout:.1f}s left for this call; "
                                             "the attempt stops by its time limit")) from None
            raise ModelTransient(self._say(f"connection failed: {type(exc).__name__}: {exc}")) from None
        except openai.APIConnectionError as exc:
            raise ModelTransient(self._say(f"connection failed: {type(exc).__name__}: {exc}")) from None
        except ModelTransient as exc:
            raise ModelTransient(self._say(str(exc))) from None
        except openai.OpenAIError as exc:
            raise ModelTransient(self._say(f"bad response: {type(exc).__name__}: {exc}")) from None
        return reply

    def _say(self, message: str) -> str:
        return redact(f"{self.name} at {self.base_url}: {message}", self._secrets)
