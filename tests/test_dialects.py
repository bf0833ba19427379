"""Local OpenAI-compatible servers and their dialects (issue 14), over real HTTP with the real SDKs.

llama-cpp-python (tools ignored without tool_choice, a 500 for ``"content": null``), vLLM (400 to
``tool_choice: "auto"``), context-window refusals in each API's words, the error classes, and
``Request.timeout`` against a slow and a never-ending reply, all against the shipped FakeServer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import (ModelAuthError, ModelBadRequest, ModelContextOverflow, ModelError, ModelTimeout,
                            ModelTransient, UsageError)
from harness.models.base import Model, Request, ToolSpec
from harness.models.fake_server import FakeServer
from harness.models.registry import load_model
from harness.models.retry import CoolDown, RetryPolicy, error_for_status

KEY = "sk-test-SECRET-0123456789abcdef"
FAST = RetryPolicy(attempts=4, base_wait=0.01, max_wait=0.5, default_cooldown=0.05)
ALL = ["anthropic", "anthropic-stream", "openai", "litellm"]
OPENAI_WIRE = ["openai", "litellm"]
TOOLS = [ToolSpec("bash", "Run a shell command", {"type": "object", "properties": {"command": {"type": "string"}}})]


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def make_model(kind: str, srv: FakeServer, *, policy: RetryPolicy = FAST, cooldown: CoolDown | None = None,
               **opts: Any) -> Model:
    if kind.startswith("anthropic"):
        return load_model("anthropic/claude-sonnet-5", api_base=srv.base_url, api_key=KEY,
                          stream=kind.endswith("-stream"), retry=policy, cooldown=cooldown, **opts)
    if kind == "litellm-anthropic":
        return load_model("litellm/anthropic/claude-sonnet-5", api_base=srv.base_url, api_key=KEY, retry=policy,
                          cooldown=cooldown, **opts)
    prefix = "openai/" if kind == "openai" else "litellm/openai/"
    return load_model(prefix + "gpt-4o", api_base=srv.openai_base_url, api_key=KEY, retry=policy,
                      cooldown=cooldown, **opts)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def request(text: str, **kw: Any) -> Request:
    return Request(system="You are a careful engineer.", messages=[user(text)], tools=TOOLS, **kw)


def bodies(srv: FakeServer) -> list[dict[str, Any]]:
    return [r["body"] for r in srv.requests]


ONE_CALL = [{"match": "list", "replies": [{"tool": "bash", "input": {"command": "ls"}}, {"text": "two files"}]}]


# --------------------------------------------------------------------------- request options


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_tool_choice_auto_is_sent_with_tools_by_default(kind: str) -> None:
    with FakeServer(ONE_CALL, api_key=KEY) as srv:
        model = make_model(kind, srv)
        model.complete(request("list the files"))
        model.complete(Request(system="s", messages=[user("list the files")], tools=[]))
        with_tools, without = bodies(srv)
    assert with_tools["tool_choice"] == "auto"
    assert "tool_choice" not in without  # no tools, nothing to choose


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_tool_choice_null_in_model_options_sends_none(kind: str) -> None:
    with FakeServer(ONE_CALL, api_key=KEY) as srv:
        make_model(kind, srv, tool_choice=None).complete(request("list the files"))
        (body,) = bodies(srv)
    assert "tool_choice" not in body and body["tools"]


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_openai_request_options_reach_the_request_body(kind: str) -> None:
    opts = {"temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["</done>"], "parallel_tool_calls": False,
            "tool_choice": "required", "extra_body": {"min_p": 0.05}, "extra_headers": {"x-dialect-test": "yes"}}
    with FakeServer(ONE_CALL, api_key=KEY) as srv:
        make_model(kind, srv, **opts).complete(request("list the files"))
        (sent,) = srv.requests
    body = sent["body"]
    assert (body["temperature"], body["top_p"], body["seed"], body["stop"]) == (0.2, 0.9, 7, ["</done>"])
    assert body["parallel_tool_calls"] is False and body["tool_choice"] == "required"
    assert body["min_p"] == 0.05 and sent["headers"]["x-dialect-test"] == "yes"


@pytest.mark.parametrize("kind", ["anthropic", "anthropic-stream"])
def test_anthropic_request_options_reach_the_request_body(kind: str) -> None:
    opts = {"temperature": 0.3, "top_k": 40, "stop_sequences": ["</done>"], "tool_choice": {"type": "any"},
            "extra_body": {"metadata": {"user_id": "agent-1"}}, "extra_headers": {"x-dialect-test": "yes"}}
    with FakeServer(ONE_CALL, api_key=KEY) as srv:
        make_model(kind, srv, **opts).complete(request("list the files"))
        (sent,) = srv.requests
    body = sent["body"]
    assert (body["temperature"], body["top_k"], body["stop_sequences"]) == (0.3, 40, ["</done>"])
    assert body["tool_choice"] == {"type": "any"} and body["metadata"] == {"user_id": "agent-1"}
    assert sent["headers"]["x-dialect-test"] == "yes"


def test_anthropic_sends_no_tool_choice_by_default() -> None:
    with FakeServer(ONE_CALL, api_key=KEY) as srv:
        make_model("anthropic", srv).complete(request("list the files"))
        (body,) = bodies(srv)
    assert "tool_choice" not in body


@pytest.mark.parametrize("kind", ["anthropic", "openai", "litellm"])
def test_a_misspelt_model_option_is_refused_listing_what_is_accepted(kind: str) -> None:
    with FakeServer(ONE_CALL, api_key=KEY) as srv:
        with pytest.raises(UsageError) as info:
            make_model(kind, srv, temprature=0.2)
        assert srv.requests == []
    message = str(info.value)
    assert "temprature" in message and "temperature" in message and "timeout" in message
    assert ("top_k" in message) == kind.startswith("anthropic")  # each provider lists its own


# --------------------------------------------------------------------------- llama.cpp


def _round_trip(model: Model) -> tuple[Any, Any]:
    first = model.complete(request("list the files"))
    (call,) = first.tool_calls
    messages = [
        user("list the files"),
        {"role": "assistant", "content": [{"type": "tool_call", "id": call.id, "name": call.name,
                                            "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "id": call.id, "content": "a.py\nb.py",
                                       "is_error": False}]},
    ]
    second = model.complete(Request(system="s", messages=messages, tools=TOOLS))
    return first, second


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_llama_cpp_tool_round_trip_is_accepted(kind: str) -> None:
    with FakeServer(ONE_CALL, api_key=KEY, dialect="llama.cpp") as srv:
        first, second = _round_trip(make_model(kind, srv))
        sent = bodies(srv)
    assert first.tool_calls[0].input == {"command": "ls"} and second.text == "two files"
    assert len(sent) == 2 and all(b["tool_choice"] == "auto" for b in sent)
    assistant = [m for m in sent[1]["messages"] if m["role"] == "assistant"]
    assert assistant and all(m["content"] == "" and m["tool_calls"] for m in assistant)


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_llama_cpp_without_tool_choice_answers_in_prose(kind: str) -> None:
    # What issue 14 saw: the server silently dropped the tools, so the model only talked.
    with FakeServer(ONE_CALL, api_key=KEY, dialect="llama.cpp") as srv:
        reply = make_model(kind, srv, tool_choice=None).complete(request("list the files"))
    assert reply.tool_calls == [] and "bash" in reply.text


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_llama_cpp_null_content_is_a_bad_request_and_not_retried(kind: str) -> None:
    # extra_body overrides the messages we would send, to put back the null content we no longer send.
    legacy = [{"role": "user", "content": "list the files"},
              {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "a.py"}]
    with FakeServer(ONE_CALL, api_key=KEY, dialect="llama.cpp") as srv:
        model = make_model(kind, srv, extra_body={"messages": legacy})
        with pytest.raises(ModelBadRequest) as info:
            model.complete(request("list the files"))
        assert len(srv.requests) == 1  # the request's fault: resending it cannot help
    assert not isinstance(info.value, (ModelContextOverflow, ModelTransient))
    assert "500" in str(info.value) and "Input should be a valid string" in str(info.value)
    assert "not retried" in str(info.value) and KEY not in str(info.value)


# --------------------------------------------------------------------------- vLLM


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_vllm_refusing_auto_tool_choice_drops_it_once_for_the_model(kind: str) -> None:
    events: list[dict[str, Any]] = []
    with FakeServer(ONE_CALL, api_key=KEY, dialect="vllm") as srv:
        model = make_model(kind, srv)
        first = model.complete(request("list the files", on_event=events.append))
        model.complete(request("list the files"))
        sent = bodies(srv)
    assert first.tool_calls and first.tool_calls[0].name == "bash"
    assert [b.get("tool_choice") for b in sent] == ["auto", None, None]  # refused, retried bare, then never sent
    (event,) = events
    assert event["kind"] == "dialect" and event["option"] == "tool_choice" and event["action"] == "dropped"
    assert "enable-auto-tool-choice" in event["reason"]


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_a_tool_choice_the_user_set_is_never_dropped(kind: str) -> None:
    with FakeServer(ONE_CALL, api_key=KEY, dialect="vllm") as srv:
        with pytest.raises(ModelBadRequest, match="tool choice"):
            make_model(kind, srv, tool_choice="auto").complete(request("list the files"))
        assert len(srv.requests) == 1


# --------------------------------------------------------------------------- context overflow


@pytest.mark.parametrize(("kind", "dialect"), [(k, None) for k in ALL] + [("openai", "llama.cpp"),
                                                                         ("openai", "vllm"),
                                                                         ("litellm", "vllm")])
def test_a_prompt_over_the_context_window_is_a_context_overflow(kind: str, dialect: str | None) -> None:
    with FakeServer(ONE_CALL, api_key=KEY, context_tokens=300, dialect=dialect) as srv:
        model = make_model(kind, srv, tool_choice=None) if dialect == "vllm" else make_model(kind, srv)
        with pytest.raises(ModelContextOverflow) as info:
            model.complete(request("list the files " + "x" * 2000))
        assert len(srv.requests) == 1  # not retried as it is
        assert model.complete(request("list the files")).tool_calls  # shrunk, it passes
    message = str(info.value)
    assert "400" in message and "context window of 300 tokens" in message and "old tool output" in message


@pytest.mark.parametrize(("kind", "dialect"), [("openai", "llama.cpp"), ("openai", "vllm"), ("litellm", "vllm")])
def test_a_reply_cap_over_the_room_left_is_lowered_once_and_the_call_goes_through(kind: str, dialect: str) -> None:
    # These servers count max_tokens (4096 unless configured) against a 1000-token window: a short
    # prompt that fits must not be taken for an overflow.
    events: list[dict[str, Any]] = []
    with FakeServer(ONE_CALL, api_key=KEY, context_tokens=1000, dialect=dialect) as srv:
        model = make_model(kind, srv, tool_choice=None) if dialect == "vllm" else make_model(kind, srv)
        assert model.complete(request("list the files", on_event=events.append)).tool_calls
        sent = [b["max_tokens"] for b in bodies(srv)]
        lowered = [e for e in events if e["kind"] == "max_tokens_lowered"]
        assert sent[0] == 4096 and len(sent) == 2 and 64 <= sent[1] < 1000, sent
        assert lowered and lowered[0]["to"] == sent[1] and lowered[0]["window"] == 1000
        assert sent[1] + lowered[0]["prompt_tokens"] <= 1000
        # Configured to fit, the first request goes through as it is.
        capped = make_model(kind, srv, max_tokens=500, **({"tool_choice": None} if dialect == "vllm" else {}))
        assert capped.complete(request("list the files")).tool_calls
        assert [b["max_tokens"] for b in bodies(srv)][2:] == [500]


def test_a_prompt_that_leaves_no_room_for_a_reply_is_still_an_overflow() -> None:
    with FakeServer(ONE_CALL, api_key=KEY, context_tokens=600, dialect="llama.cpp") as srv:
        with pytest.raises(ModelContextOverflow):
            make_model("openai", srv).complete(request("list the files " + "x" * 2000))
        assert len(srv.requests) == 1  # nothing to gain from a lower cap: not sent again


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (400, "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."),
        (400, '{"code": "context_length_exceeded"}'),
        (400, "prompt is too long: 210000 tokens > 200000 maximum"),
        (400, "Requested tokens (5000) exceed context window of 4096"),
        (500, "Requested tokens (5000) exceed context window of 4096"),  # llama-cpp-python unformatted
        (400, "request (4476 tokens) exceeds the available context size (4096 tokens)"),  # llama-server
        (400, "the input length exceeds the context length"),  # Ollama
        (413, "prompt is too long: 300000 tokens > 200000 maximum"),
    ],
)
def test_every_server_s_overflow_wording_is_recognised(status: int, detail: str) -> None:
    assert type(error_for_status(status, detail)) is ModelContextOverflow


@pytest.mark.parametrize(
    ("status", "detail", "kind"),
    [
        (500, "1 validation error for CreateChatCompletionRequest\nmessages.1.content\n  Input should be a valid "
              "string", ModelBadRequest),
        (422, "body -> messages -> 0 -> role: field required", ModelBadRequest),
        (500, '{"error": {"type": "invalid_request_error", "message": "bad"}}', ModelBadRequest),
        (500, "CUDA error: out of memory", ModelTransient),  # a real 500 stays an outage
        (500, "the validation service is down", ModelTransient),  # not greedy about "validation"
        (503, "Field required", ModelTransient),  # only 500/422 bodies are read that way
        (401, "This model's maximum context length is 10", ModelAuthError),  # the status decides first
        (413, "request entity too large", ModelBadRequest),
    ],
)
def test_validation_bodies_are_bad_requests_and_nothing_looser(status: int, detail: str,
                                                               kind: type[ModelError]) -> None:
    assert type(error_for_status(status, detail)) is kind


# --------------------------------------------------------------------------- error classes per provider


@pytest.mark.parametrize("kind", ALL + ["litellm-anthropic"])
@pytest.mark.parametrize(("status", "body", "error"), [
    (401, "invalid x-api-key", ModelAuthError),
    (400, "messages.0.content: Invalid API Key field in tool schema", ModelBadRequest),
    (400, "fake server: scripted 400", ModelBadRequest),
])
def test_auth_is_401_and_a_400_is_a_bad_request_whatever_it_says(kind: str, status: int, body: str,
                                                                  error: type[ModelError]) -> None:
    # litellm re-files an Anthropic 400 mentioning "Invalid API Key" as a 401 AuthenticationError:
    # that would stop the whole colony for one malformed request.
    script = [{"match": "x", "replies": [{"status": status, "body": body, "times": 9}, {"text": "never"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        with pytest.raises(error) as info:
            make_model(kind, srv).complete(request("x"))
        assert len(srv.requests) == 1
    assert type(info.value) is error and f"HTTP {status}" in str(info.value)
    assert ("fix: check the API key" in str(info.value)) == (status == 401)


# --------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("fault", [{"delay": 8, "then": {"text": "late"}}, {"stream_forever": True}])
def test_request_timeout_holds_against_slow_and_endless_replies(kind: str, fault: dict[str, Any],
                                                                tmp_path: Path) -> None:
    script = [{"match": "hang", "replies": [fault, {"text": "ok"}]}]
    cooldown = CoolDown(tmp_path / "cooldown.json")
    events: list[dict[str, Any]] = []
    with FakeServer(script, api_key=KEY) as srv:
        model = make_model(kind, srv, cooldown=cooldown)
        started = time.monotonic()
        with pytest.raises(ModelTimeout) as info:
            model.complete(request("hang on", timeout=1.0, on_event=events.append))
        took = time.monotonic() - started
        assert len(srv.requests) == 1  # a timeout is not retried
    assert 0.9 <= took < 1.0 + 1.5
    assert "time" in str(info.value) and KEY not in str(info.value)
    assert not (tmp_path / "cooldown.json").exists()  # not an outage: the colony does not cool down
    assert [e["kind"] for e in events] == ["timeout"]


@pytest.mark.parametrize("kind", ALL)
def test_a_timed_out_call_hangs_up_and_the_next_call_works(kind: str) -> None:
    script = [{"match": "hang", "replies": [{"stream_forever": True}, {"text": "ok"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        model = make_model(kind, srv)
        with pytest.raises(ModelTimeout):
            model.complete(request("hang on", timeout=0.5))
        # We hung up, so the server stopped sending: nothing is left streaming into the void.
        until = time.monotonic() + 2.0
        while srv.open_streams and time.monotonic() < until:
            time.sleep(0.05)
        assert srv.open_streams == 0
        assert model.complete(request("hang on", timeout=5)).text == "ok"


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_no_retry_wait_runs_past_the_deadline(kind: str, tmp_path: Path) -> None:
    script = [{"match": "x", "replies": [{"status": 503, "retry_after": 5, "times": 9}, {"text": "never"}]}]
    events: list[dict[str, Any]] = []
    with FakeServer(script, api_key=KEY) as srv:
        model = make_model(kind, srv, policy=RetryPolicy(attempts=5, base_wait=0.01, max_wait=30),
                           cooldown=CoolDown(tmp_path / "cooldown.json"))
        started = time.monotonic()
        with pytest.raises(ModelTimeout, match="no time left to retry"):
            model.complete(request("x", timeout=1.0, on_event=events.append))
        assert time.monotonic() - started < 1.0  # gave up at once rather than sleep 5 s
        assert len(srv.requests) == 1
    assert [e["kind"] for e in events] == ["timeout"]
    assert not (tmp_path / "cooldown.json").exists()


@pytest.mark.parametrize("kind", ALL)
def test_each_retry_is_reported(kind: str) -> None:
    script = [{"match": "x", "replies": [{"status": 503, "times": 2}, {"text": "third time lucky"}]}]
    events: list[dict[str, Any]] = []
    with FakeServer(script, api_key=KEY) as srv:
        reply = make_model(kind, srv).complete(request("x", timeout=30, on_event=events.append))
        assert len(srv.requests) == 3
    assert reply.text == "third time lucky"
    assert [(e["kind"], e["error"], e["status"], e["attempt"]) for e in events] == [
        ("retry", "ModelTransient", 503, 1), ("retry", "ModelTransient", 503, 2)]
    assert all(0 <= e["wait"] <= FAST.max_wait for e in events)


def test_each_attempt_gets_only_the_time_left() -> None:
    # The second attempt must not get the whole timeout again: 0.6 s spent, ~0.4 s left of 1 s.
    script = [{"match": "x", "replies": [{"delay": 0.6, "status": 503}, {"delay": 8, "then": {"text": "late"}}]}]
    with FakeServer(script, api_key=KEY) as srv:
        started = time.monotonic()
        with pytest.raises(ModelTimeout):
            make_model("openai", srv).complete(request("x", timeout=1.0))
        took = time.monotonic() - started
        assert len(srv.requests) == 2
    assert took < 1.0 + 1.0


def test_recorded_bodies_never_carry_null_content() -> None:
    with FakeServer(ONE_CALL, api_key=KEY) as srv:
        _round_trip(make_model("openai", srv))
        sent = json.dumps(bodies(srv))
    assert '"content": null' not in sent
