"""A scripted fake of the Anthropic and OpenAI HTTP APIs, for tests and offline demos.

Speaks ``POST /v1/messages`` (Anthropic Messages, JSON or SSE streaming),
``POST /v1/chat/completions`` (OpenAI chat completions, JSON or SSE streaming) and
``POST /v1/responses`` (OpenAI Responses, JSON or SSE streaming: what Codex speaks) on 127.0.0.1
only, so the real SDKs and agent CLIs can be exercised over real HTTP. Tool calls become each
API's own (``tool_use`` blocks, ``tool_calls``, ``function_call`` output items); for Codex, script
the tool its request offers (e.g. ``{tool: shell, input: {command: [bash, -c, "make"]}}``).

Script: a YAML/JSON list of conversations::

    - match: "fix the parser"          # regex, searched in the first user message's text
      replies:                         # reply k answers the request holding k assistant turns
        - {status: 429, retry_after: 0.2, times: 1}   # a fault: served `times` times, then skipped
        - {tool: bash, input: {command: "ls"}}        # one tool call
        - tools: [{name: bash, input: {command: "make"}}, {name: add_note, input: {text: hi}}]
        - {tool: bash, raw_input: "{not json"}       # tool arguments sent verbatim (bad JSON)
        - {text: "done", usage: {output_tokens: 7}}  # plain text; usage fields may be overridden
    - match: "slow"
      replies:
        - {delay: 1.5, then: {text: "late"}}         # answer after 1.5 s
        - {truncate: true}                           # a fault: half the next reply, then hang up
        - {text: "ok"}
    - match: "hang"
      replies:
        - {stream_forever: true}                     # a fault: never finishes (see below)
        - {text: "ok"}

Faults (entries with ``status``, ``truncate``, ``stream_forever`` or an explicit ``times``;
``times`` defaults to 1) do not count as a turn: each one is served ``times`` times per
(conversation, turn) and then the server moves on to the next element, so a client's retry
eventually gets the real reply. Fault options: ``retry_after`` (seconds, sent as ``retry-after``),
``retry_after_ms``, ``headers``, ``body`` (the error message), ``delay`` (seconds before the
fault). ``stream_forever: true`` answers 200 and never finishes: with ``stream: true`` in the
request it sends an event or chunk every ~0.2 s (Anthropic text deltas, OpenAI content chunks,
Responses keep-alive comments), without it the headers and then a space every ~0.2 s, so a
per-read timeout never trips; it stops when the client hangs up (or the server stops), and
``FakeServer.open_streams`` counts the ones still sending. The turn comes from the request's own
messages.

Prompt caching is modelled, so that what a client puts first can be measured: on Anthropic's API
the prefix up to each ``cache_control`` breakpoint is written to the server's cache, and a later
request starting with a written prefix reads it (``cache_read_input_tokens``; what it writes is
``cache_creation_input_tokens`` and ``input_tokens`` is the rest after its last breakpoint). On
OpenAI's APIs a request whose system messages (or instructions) and tools an earlier request sent
reports them as ``cached_tokens``. The cache lasts as long as the server; a prefix of any length is
cached (the real APIs cache only prompts above about a thousand tokens). For the Responses API, ``match`` is searched in all
the user messages before the first output item (Codex sends its instructions and environment as
user messages first), and the turn is the number of runs of output items (one per earlier
response).

Server-wide options (``FakeServer(...)`` keywords; ``--dialect``, ``--context-tokens`` of ``main``):

``context_tokens=N``
    A context window of N tokens, estimated like the usage counts (~4 characters a token, over
    messages, system and tools): a request above it gets a 400 in the API's own words: Anthropic
    ``prompt is too long: X tokens > N maximum`` (``invalid_request_error``), OpenAI ``This model's
    maximum context length is N tokens. However, your messages resulted in X tokens...`` with code
    ``context_length_exceeded`` (llama.cpp and vLLM: their own variant of that sentence, and like
    those servers they count the request's max_tokens against the window). A request shrunk below
    it passes.
``dialect="llama.cpp"``
    llama-cpp-python's server, on chat completions: an assistant message with ``"content": null``
    gets HTTP 500 ``{"error": {"message": "1 validation error for CreateChatCompletionRequest ...
    Input should be a valid string ...", "type": "internal_server_error", ...}}`` (its error handler
    answers any exception, request validation included, with 500); and tools are ignored unless
    the request sends ``tool_choice``: a scripted tool call is then answered in prose.
``dialect="vllm"``
    vLLM without ``--enable-auto-tool-choice``: ``tool_choice: "auto"`` gets 400 ``"auto" tool choice
    requires --enable-auto-tool-choice and --tool-call-parser to be set`` in vLLM's error shape
    (``{"object": "error", "message": ..., "type": "BadRequestError", "code": 400}``).

Every request is recorded (path, headers without credentials, JSON body, time) for tests to
assert on. A request without credentials gets 401; so does a wrong key when ``api_key`` is set.
With ``models`` set, a request for any other model gets 404 (``not_found_error``), as a real API
answers a misspelt model name. A conversation the script has no entry (or no more turns) for gets
400 (``invalid_request_error``): the request's fault, so a rehearsal releases that task with a note.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UsageError

_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization", "cookie"})
_FAULT_KEYS = ("status", "truncate", "stream_forever", "times")
_REPLY_KEYS = ("text", "tool", "tools", "delay")

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass
class _Slot:
    """One turn of a conversation: the faults served before it, then its reply (if any)."""

    faults: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] | None = None


@dataclass
class _Entry:
    index: int
    pattern: re.Pattern[str]
    slots: list[_Slot]


def _is_fault(item: dict[str, Any]) -> bool:
    return any(k in item for k in _FAULT_KEYS)


def load_script(script: list[Any] | str | Path) -> list[_Entry]:
    """Parse and validate a script (a list, or a path to a YAML/JSON file)."""
    where = "script"
    if isinstance(script, (str, Path)):
        where = str(script)
        try:
            data = yaml.safe_load(Path(script).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"fake-server script {where}: cannot read it: {exc}") from exc
    else:
        data = script
    if not isinstance(data, list):
        raise UsageError(f"fake-server script {where}: must be a list of {{match, replies}} entries")
    entries: list[_Entry] = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict) or not isinstance(raw.get("replies"), list) or not raw["replies"]:
            raise UsageError(f"fake-server script {where}: entry {i} needs a non-empty 'replies' list")
        try:
            pattern = re.compile(str(raw.get("match", "")))
        except re.error as exc:
            raise UsageError(f"fake-server script {where}: entry {i}: bad 'match' regex: {exc}") from exc
        slots: list[_Slot] = [_Slot()]
        for j, item in enumerate(raw["replies"]):
            if not isinstance(item, dict) or not any(k in item for k in _FAULT_KEYS + _REPLY_KEYS):
                raise UsageError(
                    f"fake-server script {where}: entry {i} reply {j} must have one of "
                    f"{', '.join(_REPLY_KEYS + _FAULT_KEYS)}"
                )
            if _is_fault(item):
                slots[-1].faults.append(item)
            else:
                slots[-1].reply = item
                slots.append(_Slot())
        if not slots[-1].faults:
            slots.pop()
        entries.append(_Entry(i, pattern, slots))
    return entries


# --------------------------------------------------------------------------- request helpers


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") in ("text", None)
        )
    return ""


def _first_user_text(messages: list[Any]) -> str:
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _tokens(value: Any) -> int:
    """A plausible token count: ~4 characters per token."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _tool_calls_of(reply: dict[str, Any]) -> list[dict[str, Any]]:
    if "tools" in reply:
        return list(reply["tools"])
    if "tool" in reply:
        call = {"name": reply["tool"], "input": reply.get("input", {})}
        if "raw_input" in reply:
            call["raw_input"] = reply["raw_input"]
        return [call]
    return []


def _arguments(call: dict[str, Any]) -> str:
    return str(call["raw_input"]) if "raw_input" in call else json.dumps(call.get("input", {}))


def _chunks(text: str, n: int = 3) -> list[str]:
    if not text:
        return []
    size = max(1, math.ceil(len(text) / n))
    return [text[i : i + size] for i in range(0, len(text), size)]


# --------------------------------------------------------------------------- the prompt cache


@dataclass(frozen=True)
class _Cached:
    """What the prompt cache made of one request, in tokens: the uncached rest, read and written."""

    uncached: int
    read: int = 0
    written: int = 0


def _anthropic_blocks(body: dict[str, Any]) -> list[tuple[Any, bool]]:
    """The request's blocks in the order the API caches them (tools, system, messages), each
    without its cache_control, with whether it carries one (a breakpoint)."""
    def part(where: Any, block: Any) -> tuple[Any, bool]:
        marked = isinstance(block, dict) and "cache_control" in block
        bare = {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block
        return (where, bare), marked
    system = body.get("system")
    out = [part("tool", t) for t in body.get("tools") or []]
    out += [part("system", b) for b in ([{"type": "text", "text": system}] if isinstance(system, str) else system or [])]
    for i, m in enumerate(body.get("messages") or []):
        content = m.get("content") if isinstance(m, dict) else None
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        out += [part((i, m.get("role")), b) for b in blocks]
    return out


def _prefix_hashes(model: Any, blocks: list[Any]) -> list[tuple[str, int]]:
    """(hash of the prefix ending at block i, tokens up to and including it) for each block."""
    digest = hashlib.sha256(json.dumps(model).encode())
    out, tokens = [], 0
    for block in blocks:
        text = json.dumps(block, sort_keys=True)
        digest.update(text.encode())
        tokens += _tokens(text)
        out.append((digest.hexdigest(), tokens))
    return out


# --------------------------------------------------------------------------- Anthropic wire


def _anthropic_message(reply: dict[str, Any], body: dict[str, Any], turn: int, cache: _Cached) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.get("text"):
        content.append({"type": "text", "text": str(reply["text"])})
    calls = _tool_calls_of(reply)
    for i, call in enumerate(calls):
        # A raw_input that is not a JSON object is passed through as-is: the point is to show
        # the client something malformed.
        tool_input: Any = call.get("input", {})
        if "raw_input" in call:
            try:
                tool_input = json.loads(call["raw_input"])
            except ValueError:
                tool_input = call["raw_input"]
        content.append({"type": "tool_use", "id": f"toolu_fake_{turn}_{i}", "name": call["name"], "input": tool_input})
    usage = {
        "input_tokens": cache.uncached,  # the API's meaning: the tokens after the last breakpoint
        "output_tokens": _tokens(content),
        "cache_creation_input_tokens": cache.written,
        "cache_read_input_tokens": cache.read,
    }
    usage.update(reply.get("usage", {}))
    return {
        "id": f"msg_fake_{uuid.uuid4().hex[:16]}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "fake"),
        "content": content,
        "stop_reason": reply.get("stop_reason", "tool_use" if calls else "end_turn"),
        "stop_sequence": None,
        "usage": usage,
    }


def _anthropic_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The real Messages streaming event sequence for ``message``."""
    usage = dict(message["usage"])
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _chunks(block["text"]):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
                },
            )
            raw = block["input"] if isinstance(block["input"], str) else json.dumps(block["input"])
            for piece in _chunks(raw):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# --------------------------------------------------------------------------- OpenAI wire


def _openai_completion(reply: dict[str, Any], body: dict[str, Any], turn: int, cache: _Cached) -> dict[str, Any]:
    calls = _tool_calls_of(reply)
    message: dict[str, Any] = {"role": "assistant", "content": str(reply["text"]) if reply.get("text") else None}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_fake_{turn}_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": _arguments(c)},
            }
            for i, c in enumerate(calls)
        ]
    prompt = cache.uncached + cache.read  # OpenAI counts the cached tokens inside prompt_tokens
    completion = _tokens(message)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache.read},
    }
    usage.update(reply.get("usage", {}))
    return {
        "id": f"chatcmpl-fake{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.get("finish_reason", "tool_calls" if calls else "stop"),
            }
        ],
        "usage": usage,
    }


def _openai_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    for piece in _chunks(message.get("content") or ""):
        yield chunk({"content": piece})
    for i, call in enumerate(message.get("tool_calls", [])):
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": i,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        )
        for piece in _chunks(call["function"]["arguments"]):
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    yield chunk({}, choice["finish_reason"])
    if include_usage:
        yield {**base, "choices": [], "usage": completion["usage"]}


def _openai_error(status: int, message: str) -> dict[str, Any]:
    kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --------------------------------------------------------------------------- OpenAI Responses wire

# Items a response produced (as opposed to what the user or a tool sent): a run of them is one turn.
_OUTPUT_ITEMS = frozenset({"function_call", "reasoning", "local_shell_call", "custom_tool_call", "web_search_call"})


def _responses_conversation(body: dict[str, Any]) -> tuple[str, int] | None:
    """(the user text to match, the turn) of a Responses request; None for a malformed ``input``."""
    items = body.get("input")
    if isinstance(items, str):
        return items, 0
    if not isinstance(items, list):
        return None
    texts: list[str] = []
    turn, in_output = 0, False
    for item in items:
        if not isinstance(item, dict):
            continue
        output = item.get("type") in _OUTPUT_ITEMS or item.get("role") == "assistant"
        if output and not in_output:
            turn += 1
        in_output = output
        if turn == 0 and item.get("role") == "user":
            content = item.get("content")
            texts.append(content if isinstance(content, str) else "\n".join(
                str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and "text" in b))
    return "\n".join(texts), turn


def _responses_object(reply: dict[str, Any], body: dict[str, Any], turn: int, cache: _Cached) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if reply.get("text"):
        output.append({"id": f"msg_fake_{uuid.uuid4().hex[:16]}", "type": "message", "status": "completed",
                       "role": "assistant",
                       "content": [{"type": "output_text", "text": str(reply["text"]), "annotations": []}]})
    for i, call in enumerate(_tool_calls_of(reply)):
        output.append({"id": f"fc_fake_{uuid.uuid4().hex[:12]}", "type": "function_call", "status": "completed",
                       "call_id": f"call_fake_{turn}_{i}", "name": call["name"], "arguments": _arguments(call)})
    prompt = cache.uncached + cache.read
    completion = _tokens(output)
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cache.read},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    usage.update(reply.get("usage", {}))
    return {
        "id": f"resp_fake_{uuid.uuid4().hex[:16]}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": body.get("model", "fake"),
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "usage": usage,
    }


def _responses_events(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The real Responses streaming event sequence for ``response`` (without sequence numbers)."""
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    yield {"type": "response.created", "response": pending}
    yield {"type": "response.in_progress", "response": pending}
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield {"type": "response.output_item.added", "output_index": index,
                   "item": {**item, "status": "in_progress", "content": []}}
            yield {"type": "response.content_part.added", **where,
                   "part": {"type": "output_text", "text": "", "annotations": []}}
            for piece in _chunks(text):
                yield {"type": "response.output_text.delta", **where, "delta": piece}
            yield {"type": "response.output_text.done", **where, "text": text}
            yield {"type": "response.content_part.done", **where, "part": item["content"][0]}
        else:
            yield {"type": "response.output_item.added", "output_index": index,
                   "item": {**item, "status": "in_progress", "arguments": ""}}
            for piece in _chunks(item["arguments"]):
                yield {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                       "output_index": index, "delta": piece}
            yield {"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                   "arguments": item["arguments"]}
        yield {"type": "response.output_item.done", "output_index": index, "item": item}
    yield {"type": "response.completed", "response": response}


# --------------------------------------------------------------------------- dialects and context limit


def _prompt_tokens(api: str, body: dict[str, Any]) -> int:
    """The request's size in the same ~4 characters a token as the usage counts."""
    total = _tokens(body.get("messages", []))
    for key in ("system", "tools") if api == "anthropic" else ("tools",):
        if body.get(key):
            total += _tokens(body[key])
    return total


def _completion_cap(body: dict[str, Any]) -> int:
    return int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)


def _overflow(fake: FakeServer, api: str, body: dict[str, Any], used: int) -> dict[str, Any]:
    limit = fake.context_tokens
    if api == "anthropic":
        return _anthropic_error(400, f"prompt is too long: {used} tokens > {limit} maximum")
    completion = _completion_cap(body)
    asked = (f"This model's maximum context length is {limit} tokens. However, you requested {used + completion} "
             f"tokens ({used} in the messages, {completion} in the completion). Please reduce the length of the "
             "messages or completion.")
    if fake.dialect == "vllm":
        return {"object": "error", "message": asked, "type": "BadRequestError", "param": None, "code": 400}
    if fake.dialect == "llama.cpp":  # llama-cpp-python rewrites llama.cpp's ValueError in OpenAI's terms
        return {"error": {"message": asked, "type": "invalid_request_error", "param": "messages",
                          "code": "context_length_exceeded"}}
    return {"error": {"message": f"This model's maximum context length is {limit} tokens. However, your messages "
                                 f"resulted in {used} tokens. Please reduce the length of the messages.",
                      "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}


def _dialect_refusal(fake: FakeServer, api: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(status, body) when the server's dialect or context window refuses this request, else None."""
    if api == "openai" and fake.dialect == "llama.cpp":
        for i, m in enumerate(body.get("messages", [])):
            if isinstance(m, dict) and m.get("role") == "assistant" and "content" in m and m["content"] is None:
                message = (f"1 validation error for CreateChatCompletionRequest\nmessages.{i}.typed-dict.content\n"
                           "  Input should be a valid string [type=string_type, input_value=None, "
                           "input_type=NoneType]\n    For further information visit "
                           "https://errors.pydantic.dev/2.9/v/string_type")
                return 500, {"error": {"message": message, "type": "internal_server_error", "param": None,
                                       "code": None}}
    if api == "openai" and fake.dialect == "vllm" and body.get("tool_choice") == "auto":
        return 400, {"object": "error", "message": '"auto" tool choice requires --enable-auto-tool-choice and '
                                                    "--tool-call-parser to be set",
                     "type": "BadRequestError", "param": None, "code": 400}
    if fake.context_tokens is not None and api in ("anthropic", "openai"):
        used = _prompt_tokens(api, body)
        # llama-cpp-python and vLLM count the reply's max_tokens against the window too.
        counted = used + (_completion_cap(body) if fake.dialect in ("llama.cpp", "vllm") else 0)
        if counted > fake.context_tokens:
            return 400, _overflow(fake, api, body, used)
    return None


def _in_prose(reply: dict[str, Any]) -> dict[str, Any]:
    """What a model says when the server never showed it the tools: the call described, not made."""
    calls = _tool_calls_of(reply)
    if not calls:
        return reply
    said = " ".join(f"I would call {c['name']} with {_arguments(c)}." for c in calls)
    text = f"{reply['text']} {said}" if reply.get("text") else said
    return {k: v for k, v in reply.items() if k not in ("tool", "tools", "input", "raw_input")} | {"text": text}


# --------------------------------------------------------------------------- server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck in a scripted delay must not block stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up mid-reply is a scripted scenario, not a failure.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


DIALECTS = ("llama.cpp", "vllm")


class FakeServer:
    """The fake API on 127.0.0.1. ``start()`` returns the base URL (append ``/v1`` for OpenAI)."""

    def __init__(self, script: list[Any] | str | Path, *, api_key: str | None = None, port: int = 0,
                 models: list[str] | None = None, dialect: str | None = None,
                 context_tokens: int | None = None) -> None:
        if dialect is not None and dialect not in DIALECTS:
            raise UsageError(f"fake server: unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
        if context_tokens is not None and context_tokens < 1:
            raise UsageError(f"fake server: context_tokens must be a positive number, got {context_tokens!r}")
        self.dialect = dialect
        self.context_tokens = context_tokens
        # Set by stop(): a handler streaming forever ends instead of outliving the server.
        self.stopping = threading.Event()
        self._open_streams = 0
        self._entries = load_script(script)
        self._api_key = api_key  # when set, any other key gets 401
        self._models = models  # when set, any other model gets 404
        self._port = port
        self._lock = threading.Lock()
        self._hits: dict[tuple[int, str, int, int], int] = {}
        self._cache: set[str] = set()  # hashes of the prompt prefixes written to the prompt cache
        self._requests: list[dict[str, Any]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def __repr__(self) -> str:
        return f"FakeServer({self.base_url or 'stopped'})"

    # -- lifecycle

    def start(self) -> str:
        self.stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._httpd = _HTTPServer(("127.0.0.1", self._port), handler)
        port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}"
        # A short poll interval: stop() waits up to one interval for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-llm-server", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    # -- what tests look at

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request so far: ``{path, headers, body, ts, authorized}`` (no credentials), and
        ``usage``, the usage its reply reported (prompt cache reads and writes included)."""
        with self._lock:
            return list(self._requests)

    @property
    def open_streams(self) -> int:
        """How many ``stream_forever`` replies are still being sent (0 once their clients hung up)."""
        with self._lock:
            return self._open_streams

    def _streaming(self, delta: int) -> None:
        with self._lock:
            self._open_streams += delta

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- used by the handler

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    def _prompt_cache(self, api: str, body: dict[str, Any]) -> _Cached:
        """What the prompt cache makes of a request, and the prefixes it then holds.

        Anthropic: the prefix up to each ``cache_control`` breakpoint is written; a request reads
        the longest prefix, up to its last breakpoint, that an earlier request wrote (the API looks
        for earlier breakpoints within the blocks before each of its own: the same for prompts that
        differ only after the breakpoint). OpenAI caches on its own, without breakpoints: here the
        prefix is the system messages (chat) or instructions (Responses) and the tools, and a request
        whose prefix an earlier one sent reads it. No minimum length, no expiry."""
        if api == "anthropic":
            blocks = _anthropic_blocks(body)
            marks = [i for i, (_, marked) in enumerate(blocks) if marked]
            hashes = _prefix_hashes(body.get("model"), [b for b, _ in blocks])
        else:
            messages = body.get("messages") or []
            system = ([m for m in messages if isinstance(m, dict) and m.get("role") == "system"] if api == "openai"
                      else body.get("instructions"))
            rest = body.get("messages") if api == "openai" else body.get("input")
            hashes = _prefix_hashes(body.get("model"), [("prefix", system, body.get("tools")), ("rest", rest)])
            marks = [0]
        total = hashes[-1][1] if hashes else 0
        if not marks:
            return _Cached(total)
        with self._lock:
            read = max((tokens for h, tokens in hashes[:marks[-1] + 1] if h in self._cache), default=0)
            self._cache.update(hashes[i][0] for i in marks)
        end = hashes[marks[-1]][1]
        if api != "anthropic":  # no cache writes to report: the rest is plain input
            return _Cached(total - read, read)
        return _Cached(total - end, read, end - read)

    def _check_key(self, headers: dict[str, str]) -> bool:
        presented = headers.get("x-api-key") or headers.get("api-key")
        auth = headers.get("authorization", "")
        if not presented and auth.lower().startswith("bearer "):
            presented = auth[7:].strip()
        if not presented:
            return False
        return self._api_key is None or presented == self._api_key

    def _resolve(self, messages: list[Any]) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None, int, str]:
        """(kind, fault, reply, turn, error) for a conversation; kind is 'fault', 'reply' or 'error'."""
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        return self._resolve_turn(_first_user_text(messages), turn)

    def _resolve_turn(self, first: str, turn: int) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None,
                                                              int, str]:
        entry = next((e for e in self._entries if e.pattern.search(first)), None)
        if entry is None:
            return "error", None, None, turn, f"fake server: no script entry matches first user message {first[:200]!r}"
        if turn >= len(entry.slots):
            return (
                "error",
                None,
                None,
                turn,
                (
                    f"fake server: script entry {entry.index} has {len(entry.slots)} turns; "
                    f"this request is turn {turn + 1}"
                ),
            )
        slot = entry.slots[turn]
        with self._lock:
            for j, fault in enumerate(slot.faults):
                key = (entry.index, first, turn, j)
                if self._hits.get(key, 0) < int(fault.get("times", 1)):
                    self._hits[key] = self._hits.get(key, 0) + 1
                    return "fault", fault, slot.reply, turn, ""
        if slot.reply is None:
            return (
                "error",
                None,
                None,
                turn,
                f"fake server: script entry {entry.index} turn {turn + 1} has only faults left",
            )
        return "reply", None, slot.reply, turn, ""


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer
    server_version = "FakeLLM/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # tests assert on .requests; access logs would only be noise

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._json(404, {"error": {"message": f"no GET route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body: Any = json.loads(raw or b"{}")
        except ValueError:
            body = raw.decode("utf-8", "replace")
        authorized = self.fake._check_key(headers)
        self.record: dict[str, Any] = {
            "path": self.path,
            "headers": {k: v for k, v in headers.items() if k not in _CREDENTIAL_HEADERS},
            "body": body,
            "ts": time.time(),
            "authorized": authorized,
        }
        self.fake._record(self.record)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/messages"):
            api = "anthropic"
        elif path.endswith("/chat/completions"):
            api = "openai"
        elif path.endswith("/responses"):
            api = "responses"
        else:
            self._json(404, {"error": {"message": f"fake server: no route POST {self.path}"}})
            return
        if not authorized:
            self._error(api, 401, "fake server: missing or invalid API key")
            return
        field = "input" if api == "responses" else "messages"
        conversation = _responses_conversation(body) if api == "responses" and isinstance(body, dict) else None
        if not isinstance(body, dict) or (conversation is None and not isinstance(body.get(field), list)):
            self._error(api, 400, f"fake server: body must be a JSON object with a '{field}' list")
            return
        if self.fake._models is not None and body.get("model") not in self.fake._models:
            self._error(api, 404, f"model: {body.get('model')} (fake server: not one of {self.fake._models})")
            return
        refusal = _dialect_refusal(self.fake, api, body)
        if refusal is not None:
            self._json(*refusal)
            return
        if conversation is not None:
            kind, fault, reply, turn, error = self.fake._resolve_turn(*conversation)
        else:
            kind, fault, reply, turn, error = self.fake._resolve(body["messages"])
        if kind == "error":  # a gap in the script is the request's fault (400), not a missing model (404)
            self._error(api, 400, error)
        elif kind == "fault":
            assert fault is not None
            self._fault(api, fault, reply, body, turn)
        else:
            assert reply is not None
            self._reply(api, reply, body, turn)

    # -- responses

    def _fault(
        self, api: str, fault: dict[str, Any], reply: dict[str, Any] | None, body: dict[str, Any], turn: int
    ) -> None:
        if "delay" in fault:
            time.sleep(float(fault["delay"]))
        if "status" in fault:
            status = int(fault["status"])
            extra = {str(k): str(v) for k, v in (fault.get("headers") or {}).items()}
            if "retry_after" in fault:
                extra["retry-after"] = str(fault["retry_after"])
            if "retry_after_ms" in fault:
                extra["retry-after-ms"] = str(fault["retry_after_ms"])
            self._error(api, status, str(fault.get("body", f"fake server: scripted {status}")), extra)
        elif fault.get("stream_forever"):
            self._stream_forever(api, body)
        elif fault.get("truncate"):
            rendered = self._render(api, reply or {"text": "truncated"}, body, turn)
            payload = self._stream_bytes(api, rendered, body) if body.get("stream") else json.dumps(rendered).encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream" if body.get("stream") else "application/json")
            # The declared length is the whole body; we then hang up halfway, as a dropped
            # connection would, so the client sees a torn response.
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._reply(api, fault.get("then") or reply or {"text": ""}, body, turn)

    def _stream_forever(self, api: str, body: dict[str, Any]) -> None:
        stream = bool(body.get("stream"))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream" if stream else "application/json")
        self.end_headers()  # no content-length: the body runs until we close, which is never
        self.close_connection = True
        if not stream:
            pieces: Iterator[bytes] = iter(lambda: b" ", None)  # JSON allows leading whitespace
        elif api == "anthropic":
            start = self._render(api, {"text": ""}, body, 0) | {"content": [], "stop_reason": None}
            head = [("message_start", {"type": "message_start", "message": start}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})]
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "."}}
            pieces = itertools.chain((f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in head),
                                     iter(lambda: f"event: content_block_delta\ndata: {json.dumps(delta)}\n\n"
                                          .encode(), None))
        elif api == "openai":
            base = self._render(api, {"text": ""}, body, 0)
            chunk = {k: base[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
            data = json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": None}]})
            pieces = iter(lambda: f"data: {data}\n\n".encode(), None)
        else:
            pieces = iter(lambda: b": keep-alive\n\n", None)
        self.fake._streaming(+1)
        try:
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                if self.fake.stopping.wait(0.2):
                    return
        except OSError:
            return  # the client hung up: what ends a call that would never finish
        finally:
            self.fake._streaming(-1)

    def _reply(self, api: str, reply: dict[str, Any], body: dict[str, Any], turn: int) -> None:
        if "delay" in reply:
            time.sleep(float(reply["delay"]))
            reply = reply.get("then") or {"text": ""}
        if self.fake.dialect == "llama.cpp" and api == "openai" and body.get("tools") and "tool_choice" not in body:
            reply = _in_prose(reply)
        rendered = self._render(api, reply, body, turn)
        if not body.get("stream"):
            self._json(200, rendered)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        # One event per write, flushed, so the client really receives a stream.
        for event in self._events(api, rendered, body):
            self.wfile.write(event)
            self.wfile.flush()
        self.close_connection = True

    @staticmethod
    def _events(api: str, rendered: dict[str, Any], body: dict[str, Any]) -> Iterator[bytes]:
        if api == "anthropic":
            for name, data in _anthropic_events(rendered):
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        elif api == "responses":
            for number, data in enumerate(_responses_events(rendered)):
                data = {**data, "sequence_number": number}
                yield f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()
        else:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            for data in _openai_chunks(rendered, include_usage):
                yield f"data: {json.dumps(data)}\n\n".encode()
            yield b"data: [DONE]\n\n"

    def _stream_bytes(self, api: str, rendered: dict[str, Any], body: dict[str, Any]) -> bytes:
        return b"".join(self._events(api, rendered, body))

    def _render(self, api: str, reply: dict[str, Any], body: dict[str, Any], turn: int) -> dict[str, Any]:
        """The API's response to ``reply``; its usage also goes into the request's record."""
        cache = self.fake._prompt_cache(api, body)
        if api == "responses":
            rendered = _responses_object(reply, body, turn, cache)
        elif api == "anthropic":
            rendered = _anthropic_message(reply, body, turn, cache)
        else:
            rendered = _openai_completion(reply, body, turn, cache)
        self.record["usage"] = rendered["usage"]
        return rendered

    def _error(self, api: str, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        payload = _anthropic_error(status, message) if api == "anthropic" else _openai_error(status, message)
        self._json(status, payload, headers)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def serve(port: int, script_path: str | Path, *, api_key: str | None = None, dialect: str | None = None,
          context_tokens: int | None = None) -> None:
    """Run the fake server in the foreground until interrupted (``python -m harness fake-server``)."""
    server = FakeServer(script_path, api_key=api_key, port=port, dialect=dialect, context_tokens=context_tokens)
    url = server.start()
    try:
        # Inside the try: a Ctrl-C (or a test's SIGINT) may land while the line is still printing.
        print(f"fake LLM server on {url}  (Anthropic: {url}, OpenAI: {url}/v1)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake-server", description="Scripted fake Anthropic/OpenAI API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--script", required=True, help="YAML/JSON script of conversations")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--dialect", default=None, choices=DIALECTS, help="behave like this local server")
    parser.add_argument("--context-tokens", type=int, default=None, help="refuse prompts above this many tokens")
    args = parser.parse_args(argv)
    try:
        serve(args.port, args.script, api_key=args.api_key, dialect=args.dialect, context_tokens=args.context_tokens)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
