"""Every network provider over real HTTP, through its real SDK, against the shipped fake server.

The same scenarios run for anthropic (JSON and SSE streaming), openai and litellm; assertions
on the wire format read the requests the fake server recorded.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ModelAuthError, ModelBadRequest, ModelError, ModelNotFound, ModelRateLimited, ModelTransient
from harness.meter import FREE, Ledger, cost_usd
from harness.models.base import Model, Reply, Request, ToolSpec
from harness.models.fake_server import FakeServer
from harness.models.registry import load_model, price_of
from harness.models.retry import CoolDown, RetryPolicy

KEY = "sk-test-SECRET-0123456789abcdef"
KINDS = ["anthropic", "anthropic-stream", "openai", "litellm"]
FAST = RetryPolicy(attempts=4, base_wait=0.01, max_wait=2.0, default_cooldown=0.05)
TOOLS = [
    ToolSpec("bash", "Run a shell command", {"type": "object", "properties": {"command": {"type": "string"}}}),
    ToolSpec("add_note", "Leave a note", {"type": "object", "properties": {"text": {"type": "string"}}}),
]


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def make_model(
    kind: str,
    srv: FakeServer,
    *,
    cooldown: CoolDown | None = None,
    policy: RetryPolicy = FAST,
    model: str | None = None,
    key: str = KEY,
    **opts: Any,
) -> Model:
    if kind.startswith("anthropic"):
        return load_model(
            f"anthropic/{model or 'claude-sonnet-5'}",
            api_base=srv.base_url,
            api_key=key,
            stream=kind.endswith("-stream"),
            cooldown=cooldown,
            retry=policy,
            **opts,
        )
    prefix = "openai/" if kind == "openai" else "litellm/openai/"
    return load_model(
        prefix + (model or "gpt-4o"), api_base=srv.openai_base_url, api_key=key, cooldown=cooldown, retry=policy, **opts
    )


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def ask(model: Model, text: str, **kw: Any) -> Reply:
    return model.complete(Request(system="You are a careful engineer.", messages=[user(text)], tools=TOOLS, **kw))


def bodies(srv: FakeServer) -> list[dict[str, Any]]:
    return [r["body"] for r in srv.requests]


# --------------------------------------------------------------------------- the tool loop


CONVERSATION = [
    {
        "match": "list the files",
        "replies": [
            {"text": "Looking.", "tool": "bash", "input": {"command": "ls -la"}},
            {
                "tools": [
                    {"name": "bash", "input": {"command": "make test"}},
                    {"name": "add_note", "input": {"text": "hi"}},
                ]
            },
            {"text": "All done: 3 files."},
        ],
    }
]


@pytest.mark.parametrize("kind", KINDS)
def test_three_step_tool_conversation_round_trips(kind: str) -> None:
    with FakeServer(CONVERSATION, api_key=KEY) as srv:
        model = make_model(kind, srv)
        messages = [user("please list the files")]
        replies: list[Reply] = []
        outputs = {"ls -la": "a.py\nb.py", "make test": "FAILED", "hi": "noted"}
        for _ in range(3):
            reply = model.complete(Request(system="SYSTEM PROMPT", messages=list(messages), tools=TOOLS))
            replies.append(reply)
            if not reply.tool_calls:
                break
            blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
            blocks += [{"type": "tool_call", "id": c.id, "name": c.name, "input": c.input} for c in reply.tool_calls]
            messages.append({"role": "assistant", "content": blocks})
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "id": c.id,
                            "content": outputs[next(iter(c.input.values()))],
                            "is_error": c.input.get("command") == "make test",
                        }
                        for c in reply.tool_calls
                    ],
                }
            )
        sent = bodies(srv)

    first, second, third = replies
    assert first.text == "Looking."
    assert [(c.name, c.input, c.error) for c in first.tool_calls] == [("bash", {"command": "ls -la"}, None)]
    assert [(c.name, c.input) for c in second.tool_calls] == [
        ("bash", {"command": "make test"}),
        ("add_note", {"text": "hi"}),
    ]
    assert len({c.id for c in second.tool_calls}) == 2
    assert third.text == "All done: 3 files." and third.tool_calls == []
    assert [r.stop_reason for r in replies] == ["tool_use", "tool_use", "end_turn"]
    assert all(r.usage.input_tokens > 0 and r.usage.output_tokens > 0 for r in replies)
    assert len(sent) == 3
    call_ids = [c.id for c in first.tool_calls], [c.id for c in second.tool_calls]

    if kind.startswith("anthropic"):
        last = sent[2]
        assert last["system"] == [{"type": "text", "text": "SYSTEM PROMPT", "cache_control": {"type": "ephemeral"}}]
        assert "cache_control" not in last["tools"][0]
        assert last["tools"][-1]["cache_control"] == {"type": "ephemeral"}
        assert last["tools"][0]["input_schema"] == TOOLS[0].input_schema
        assert bool(last.get("stream")) is kind.endswith("-stream")
        msgs = last["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
        assert msgs[1]["content"] == [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": call_ids[0][0], "name": "bash", "input": {"command": "ls -la"}},
        ]
        assert msgs[2]["content"] == [
            {"type": "tool_result", "tool_use_id": call_ids[0][0], "content": "a.py\nb.py", "is_error": False}
        ]
        assert [b["tool_use_id"] for b in msgs[4]["content"]] == call_ids[1]
        assert [b["is_error"] for b in msgs[4]["content"]] == [True, False]
        # The fake reports the cached prefix as written on turn 1 and read afterwards.
        assert first.usage.cache_write_tokens > 0 and first.usage.cache_read_tokens == 0
        assert third.usage.cache_read_tokens > 0
    else:
        msgs = sent[2]["messages"]
        assert msgs[0] == {"role": "system", "content": "SYSTEM PROMPT"}
        assert sent[2]["tools"][0] == {
            "type": "function",
            "function": {"name": "bash", "description": "Run a shell command", "parameters": TOOLS[0].input_schema},
        }
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant", "tool", "tool"]
        calls = msgs[2]["tool_calls"]
        assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [(call_ids[0][0], "function", "bash")]
        assert json.loads(calls[0]["function"]["arguments"]) == {"command": "ls -la"}
        assert msgs[3]["tool_call_id"] == call_ids[0][0] and msgs[3]["content"] == "a.py\nb.py"
        assert [m["tool_call_id"] for m in msgs[5:]] == call_ids[1]
        assert msgs[5]["content"].startswith("ERROR: ") and "FAILED" in msgs[5]["content"]
        assert third.usage.cache_read_tokens > 0  # prompt_tokens_details.cached_tokens on later turns


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_tool_arguments_become_tool_call_errors(kind: str) -> None:
    script = [
        {
            "match": "go",
            "replies": [
                {
                    "tools": [
                        {"name": "bash", "raw_input": '{"command": "ls'},
                        {"name": "add_note", "raw_input": "[1, 2]"},
                    ]
                }
            ],
        }
    ]
    with FakeServer(script, api_key=KEY) as srv:
        reply = ask(make_model(kind, srv), "go")
    bad_json, not_object = reply.tool_calls
    assert bad_json.name == "bash" and bad_json.input == {} and "JSON" in (bad_json.error or "")
    assert not_object.name == "add_note" and not_object.input == {} and "object" in (not_object.error or "")


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize("kind", KINDS)
def test_429_waits_retry_after_and_cools_down_the_whole_colony(kind: str, tmp_path: Path) -> None:
    script = [
        {
            "match": "rate",
            "replies": [{"status": 429, "retry_after": 0.6, "body": "slow down"}, {"text": "after the wait"}],
        },
        {"match": "other", "replies": [{"text": "second agent"}]},
    ]
    cooldown_path = tmp_path / "cooldown.json"
    with FakeServer(script, api_key=KEY) as srv:
        first = make_model(kind, srv, cooldown=CoolDown(cooldown_path))
        result: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: result.update(reply=ask(first, "rate limited")))
        worker.start()
        deadline = time.time() + 10
        while not cooldown_path.exists() and time.time() < deadline:
            time.sleep(0.005)
        until = CoolDown(cooldown_path).until()
        # A different Model instance (another agent) sharing only the cool-down file.
        second = make_model(kind, srv, cooldown=CoolDown(cooldown_path))
        started = time.time()
        other = ask(second, "other agent")
        worker.join(timeout=10)
        requests = srv.requests

    assert result["reply"].text == "after the wait"
    assert other.text == "second agent"
    rate = [r for r in requests if "rate" in json.dumps(r["body"]["messages"])]
    assert len(rate) == 2
    assert rate[1]["ts"] - rate[0]["ts"] >= 0.6  # honoured retry-after
    assert rate[0]["ts"] + 0.5 < until <= rate[0]["ts"] + 0.6 + 0.5  # extended by ~retry_after
    (other_request,) = [r for r in requests if "other agent" in json.dumps(r["body"]["messages"])]
    assert other_request["ts"] >= until, "second agent sent before the colony cool-down ended"
    assert until - started > 0.2  # it really had to wait (the cool-down was live when it tried)


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_ms_is_honoured(kind: str) -> None:
    script = [{"match": "x", "replies": [{"status": 429, "retry_after_ms": 300}, {"text": "ok"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        assert ask(make_model(kind, srv), "x").text == "ok"
        first, second = srv.requests
    assert second["ts"] - first["ts"] >= 0.3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(kind: str, status: int) -> None:
    script = [{"match": "x", "replies": [{"status": status, "times": 2}, {"text": "third time lucky"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        assert ask(make_model(kind, srv), "x").text == "third time lucky"
        assert len(srv.requests) == 3


@pytest.mark.parametrize("kind", ["anthropic", "anthropic-stream"])
def test_anthropic_overloaded_529_is_retried(kind: str) -> None:
    script = [{"match": "x", "replies": [{"status": 529}, {"text": "ok"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        assert ask(make_model(kind, srv), "x").text == "ok"
        assert len(srv.requests) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_retries_are_bounded_and_end_in_model_transient(kind: str) -> None:
    script = [{"match": "x", "replies": [{"status": 502, "times": 99}, {"text": "never"}]}]
    policy = RetryPolicy(attempts=3, base_wait=0.01, max_wait=0.05)
    with FakeServer(script, api_key=KEY) as srv:
        with pytest.raises(ModelTransient) as info:
            ask(make_model(kind, srv, policy=policy), "x")
        assert len(srv.requests) == 3
    assert info.value.status == 502 and "502" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_torn_response_and_timeout_are_retried(kind: str) -> None:
    script = [
        {"match": "torn", "replies": [{"truncate": True}, {"text": "whole this time"}]},
        {"match": "slow", "replies": [{"delay": 1.5, "times": 1}, {"text": "fast this time"}]},
    ]
    with FakeServer(script, api_key=KEY) as srv:
        model = make_model(kind, srv, timeout=0.4)
        assert ask(model, "torn").text == "whole this time"
        assert ask(model, "slow").text == "fast this time"
        assert len(srv.requests) == 4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "error"), [(400, ModelBadRequest), (401, ModelAuthError),
                                               (403, ModelAuthError), (404, ModelNotFound)])
def test_auth_and_bad_request_errors_are_not_retried(kind: str, status: int, error: type[ModelError]) -> None:
    script = [{"match": "x", "replies": [{"status": status, "times": 99}, {"text": "never"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        with pytest.raises(error) as info:
            ask(make_model(kind, srv), "x")
        assert len(srv.requests) == 1
    assert str(status) in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_key_is_auth_error_that_never_shows_the_key(kind: str, tmp_path: Path) -> None:
    wrong = "sk-wrong-KEY-9876543210zyxw"
    with FakeServer(CONVERSATION, api_key="the-right-key-0000") as srv:
        model = make_model(kind, srv, key=wrong)
        with pytest.raises(ModelAuthError) as info:
            ask(model, "list the files")
        assert len(srv.requests) == 1
        recorded = json.dumps(srv.requests)
    shown = str(info.value) + repr(info.value) + "".join(traceback.format_exception(info.value))
    assert "401" in str(info.value)
    assert wrong not in shown and wrong not in recorded and wrong not in repr(model)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("kind", KINDS)
def test_api_key_appears_nowhere(kind: str, tmp_path: Path) -> None:
    script = [
        *CONVERSATION,
        # A server that echoes the key back in its error: our message must not repeat it.
        {"match": "echo", "replies": [{"status": 500, "times": 99, "body": f"invalid request from key {KEY}"}]},
    ]
    ledger = Ledger(tmp_path / "agent-1.jsonl")
    with FakeServer(script, api_key=KEY) as srv:
        model = make_model(kind, srv, policy=RetryPolicy(attempts=2, base_wait=0.01, max_wait=0.02))
        reply = ask(model, "list the files")
        ledger.record(agent="agent-1", task="t-1", model=model.name, usage=reply.usage, cost_usd=reply.cost_usd)
        with pytest.raises(ModelError) as info:
            ask(model, "echo")
        recorded = json.dumps(srv.requests)
        assert all(r["authorized"] for r in srv.requests)  # the key was sent, just never recorded
    assert "[REDACTED]" in str(info.value)
    for text in (recorded, (tmp_path / "agent-1.jsonl").read_text(), str(info.value), repr(model), repr(reply)):
        assert KEY not in text


# --------------------------------------------------------------------------- usage and cost


@pytest.mark.parametrize("kind", KINDS)
def test_usage_and_cost_with_cache_tokens(kind: str) -> None:
    usage: dict[str, Any]
    if kind.startswith("anthropic"):
        usage = {
            "input_tokens": 40,
            "output_tokens": 10,
            "cache_read_input_tokens": 60,
            "cache_creation_input_tokens": 20,
        }
    else:
        usage = {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "total_tokens": 110,
            "prompt_tokens_details": {"cached_tokens": 60},
        }
    script = [{"match": "x", "replies": [{"text": "ok", "usage": usage}]}]
    price = {"input": 1.0, "output": 10.0, "cache_read": 0.1, "cache_write": 2.0}
    with FakeServer(script, api_key=KEY) as srv:
        model = make_model(kind, srv, model="no-such-model", price=price)
        reply = ask(model, "x")
    write = 20 if kind.startswith("anthropic") else 0
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.cache_read_tokens) == (40, 10, 60)
    assert reply.usage.cache_write_tokens == write
    assert reply.cost_usd == 0.0  # a provider reports usage; the price is the meter's, once
    cost = cost_usd(reply.usage, price_of(model.name, {"price": price}))  # type: ignore[arg-type]
    assert cost == pytest.approx((40 * 1.0 + 10 * 10.0 + 60 * 0.1 + write * 2.0) / 1e6)


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_unknown_model_costs_nothing_but_counts_tokens(kind: str) -> None:
    script = [{"match": "x", "replies": [{"text": "ok"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        mystery, table = make_model(kind, srv, model="mystery-model-7b"), make_model(kind, srv)
        unknown = ask(mystery, "x")
        known = ask(table, "x")  # claude-sonnet-5 / gpt-4o are in the table
    assert price_of(mystery.name) is None and unknown.usage.input_tokens > 0 and unknown.usage.output_tokens > 0
    assert cost_usd(known.usage, price_of(table.name) or FREE) > 0


def test_anthropic_stream_accumulates_text_deltas() -> None:
    text = "A reply long enough to arrive in several text_delta events."
    script = [{"match": "x", "replies": [{"text": text, "tool": "bash", "input": {"command": "echo 'hi there'"}}]}]
    with FakeServer(script, api_key=KEY) as srv:
        reply = ask(make_model("anthropic-stream", srv), "x")
        assert srv.requests[0]["body"]["stream"] is True
    assert reply.text == text
    assert [(c.name, c.input) for c in reply.tool_calls] == [("bash", {"command": "echo 'hi there'"})]
    assert reply.usage.output_tokens > 1  # the final count from message_delta, not message_start's 1


def test_rate_limited_error_carries_retry_after_when_retries_run_out() -> None:
    script = [{"match": "x", "replies": [{"status": 429, "retry_after": 0.05, "times": 99}]}]
    with FakeServer(script, api_key=KEY) as srv:
        with pytest.raises(ModelRateLimited) as info:
            ask(make_model("openai", srv, policy=RetryPolicy(attempts=2, base_wait=0.01, max_wait=0.1)), "x")
    assert info.value.retry_after == pytest.approx(0.05)
