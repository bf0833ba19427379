"""Make a conversation fit a smaller context window, once the endpoint said it is too long.

    messages = shrink(messages)   # a new list; the old one is left as it was

First old tool output goes: every tool_result before the latest user message keeps its first
STUB_HEAD characters and a note of how much was dropped, and long assistant texts before the
latest assistant message are clipped the same way. Old output is by far the bulk of a long
conversation, and the model has already acted on it. If that saves little, middle turns go too:
the first user message (the task) and the last two turns stay, with a note where the rest was.
The result stays well formed: every tool_call keeps its tool_result, roles still alternate.
"""

from __future__ import annotations

import json
from typing import Any

STUB_HEAD = 200  # characters of an old tool result (or assistant text) the model still sees
KEEP_TURNS = 2  # assistant + user pairs kept at the end when middle turns are dropped
ENOUGH = 0.75  # stubbing that leaves more than this fraction of the size drops middle turns too


def size(messages: list[dict[str, Any]]) -> int:
    """Characters as sent (near enough): what the context window is spent on."""
    return len(json.dumps(messages, ensure_ascii=False, default=str))


def stub(text: str, what: str = "tool output") -> str:
    if len(text) <= STUB_HEAD * 2:  # a stub of a short text would not be shorter
        return text
    dropped = len(text) - STUB_HEAD
    return f"{text[:STUB_HEAD]}\n[... {dropped} characters of old {what} dropped to fit the model's context window]"


def shrink(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    out = []
    for i, message in enumerate(messages):
        if i == 0 or i in (last_user, last_assistant):  # the task and the latest turn stay whole
            out.append(message)
            continue
        out.append({**message, "content": [_stubbed(block) for block in message["content"]]})
    if size(out) > ENOUGH * size(messages):
        out = _drop_middle(out)
    return out


def _stubbed(block: dict[str, Any]) -> dict[str, Any]:
    if block["type"] == "tool_result":
        return {**block, "content": stub(str(block["content"]))}
    if block["type"] == "text":
        return {**block, "text": stub(block["text"], "text")}
    return block


def _drop_middle(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[task, a1, u1, ..., aN, uN] -> [task + note, a(N-1), u(N-1), aN, uN]: each kept assistant
    message's tool results are in the user message right after it, so none is orphaned."""
    tail = 2 * KEEP_TURNS
    if len(messages) <= 1 + tail or messages[0]["role"] != "user" or messages[-tail]["role"] != "assistant":
        return messages
    dropped = len(messages) - 1 - tail
    note = {"type": "text", "text": f"[... {dropped // 2} earlier turns ({dropped} messages) dropped to fit the "
                                    "model's context window]"}
    first = {**messages[0], "content": [*messages[0]["content"], note]}
    return [first, *messages[-tail:]]
