"""The fake API server itself, spoken to over plain HTTP (and the OpenAI SDK for streaming)."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from harness.errors import UsageError
from harness.models.fake_server import FakeServer, load_script

KEY = "sk-fake-server-key-123456"


def post(
    url: str, body: dict[str, Any], *, key: str | None = KEY, header: str = "x-api-key"
) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers[header] = key if header == "x-api-key" else f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def anthropic_body(first: str, assistant_turns: int = 0, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    for i in range(assistant_turns):
        messages += [{"role": "assistant", "content": f"turn {i}"}, {"role": "user", "content": "go on"}]
    return {"model": "claude-test", "max_tokens": 100, "messages": messages, **extra}


def test_binds_loopback_and_needs_credentials() -> None:
    with FakeServer([{"match": "", "replies": [{"text": "hi"}]}]) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        status, _, raw = post(srv.base_url + "/v1/messages", anthropic_body("x"), key=None)
        assert status == 401 and json.loads(raw)["error"]["type"] == "authentication_error"
        status, _, raw = post(srv.base_url + "/v1/messages", anthropic_body("x"), header="authorization")
        assert status == 200 and json.loads(raw)["content"] == [{"type": "text", "text": "hi"}]
        first, second = srv.requests
    assert first["authorized"] is False and second["authorized"] is True
    assert second["path"] == "/v1/messages" and second["body"]["messages"][0]["content"] == "x"
    assert "authorization" not in second["headers"] and KEY not in json.dumps(srv.requests)


def test_wrong_key_is_refused_when_a_key_is_set() -> None:
    with FakeServer([{"match": "", "replies": [{"text": "hi"}]}], api_key=KEY) as srv:
        assert post(srv.base_url + "/v1/messages", anthropic_body("x"), key="another-key-000")[0] == 401
        assert post(srv.openai_base_url + "/chat/completions", anthropic_body("x"), key="another-key-000")[0] == 401
        assert post(srv.base_url + "/v1/messages", anthropic_body("x"))[0] == 200


def test_reply_index_is_the_number_of_assistant_turns() -> None:
    script = [
        {"match": "^alpha", "replies": [{"text": "a0"}, {"text": "a1"}, {"text": "a2"}]},
        {"match": "beta", "replies": [{"text": "b0"}]},
    ]
    with FakeServer(script) as srv:
        url = srv.base_url + "/v1/messages"

        def text(body: dict[str, Any]) -> str:
            status, _, raw = post(url, body)
            assert status == 200, raw
            return str(json.loads(raw)["content"][0]["text"])

        assert [text(anthropic_body("alpha task", n)) for n in (2, 0, 1, 2)] == ["a2", "a0", "a1", "a2"]
        assert text(anthropic_body("the beta task")) == "b0"
        status, _, raw = post(url, anthropic_body("alpha task", 3))
        assert status == 400 and "has 3 turns" in json.loads(raw)["error"]["message"]
        status, _, raw = post(url, anthropic_body("gamma"))
        assert status == 400 and "no script entry matches" in json.loads(raw)["error"]["message"]


def test_faults_are_consumed_per_conversation_and_turn() -> None:
    script = [
        {
            "match": "task",
            "replies": [
                {"status": 500, "times": 2},
                {"status": 429, "retry_after": 3, "retry_after_ms": 3000, "body": "easy"},
                {"text": "first"},
                {"status": 503},
                {"text": "second"},
            ],
        }
    ]
    with FakeServer(script) as srv:
        url = srv.base_url + "/v1/messages"
        statuses = [post(url, anthropic_body("task one"))[0] for _ in range(4)]
        assert statuses == [500, 500, 429, 200]
        # Another conversation matching the same entry has its own fault counters.
        assert post(url, anthropic_body("task two"))[0] == 500
        # Turn 2 of conversation one: its own fault, then its reply.
        assert [post(url, anthropic_body("task one", 1))[0] for _ in range(2)] == [503, 200]
        status, headers, raw = post(url, anthropic_body("task three"))
    lower = {k.lower(): v for k, v in headers.items()}
    assert status == 500 and "retry-after" not in lower
    conversation_one = [r for r in srv.requests if r["body"]["messages"][0]["content"] == "task one"]
    assert len(conversation_one) == 6


def test_error_bodies_and_retry_headers() -> None:
    script = [
        {
            "match": "",
            "replies": [{"status": 429, "retry_after": 2, "retry_after_ms": 1500, "body": "slow down", "times": 9}],
        }
    ]
    with FakeServer(script) as srv:
        status, headers, raw = post(srv.base_url + "/v1/messages", anthropic_body("x"))
        lower = {k.lower(): v for k, v in headers.items()}
        assert status == 429 and lower["retry-after"] == "2" and lower["retry-after-ms"] == "1500"
        assert json.loads(raw) == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        status, _, raw = post(
            srv.openai_base_url + "/chat/completions", {"messages": [{"role": "user", "content": "x"}]}
        )
        assert status == 429 and json.loads(raw)["error"]["message"] == "slow down"


def test_delay_and_truncate() -> None:
    script = [
        {"match": "", "replies": [{"delay": 0.3, "then": {"text": "late"}}, {"truncate": True}, {"text": "whole"}]}
    ]
    with FakeServer(script) as srv:
        url = srv.base_url + "/v1/messages"
        started = time.time()
        status, _, raw = post(url, anthropic_body("x"))
        assert status == 200 and json.loads(raw)["content"][0]["text"] == "late"
        assert time.time() - started >= 0.3
        with pytest.raises(http.client.IncompleteRead):
            post(url, anthropic_body("x", 1))
        assert json.loads(post(url, anthropic_body("x", 1))[2])["content"][0]["text"] == "whole"


def test_anthropic_sse_uses_the_real_event_sequence() -> None:
    script = [
        {"match": "", "replies": [{"text": "Hello there, world", "tool": "bash", "input": {"command": "ls -la /tmp"}}]}
    ]
    with FakeServer(script) as srv:
        status, headers, raw = post(srv.base_url + "/v1/messages", anthropic_body("x", stream=True))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = [(m.group(1), json.loads(m.group(2))) for m in re.finditer(r"event: (\w+)\ndata: (.*)\n\n", raw.decode())]
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    assert all(name == data["type"] for name, data in events)
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert "".join(d["text"] for d in deltas if d["type"] == "text_delta") == "Hello there, world"
    partial = "".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")
    assert (
        json.loads(partial) == {"command": "ls -la /tmp"}
        and len([d for d in deltas if d["type"] == "input_json_delta"]) > 1
    )
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "tool_use" and message_delta["usage"]["output_tokens"] > 0


def test_openai_streaming_through_the_sdk() -> None:
    script = [
        {"match": "", "replies": [{"text": "streamed text", "tools": [{"name": "bash", "input": {"command": "make"}}]}]}
    ]
    with FakeServer(script, api_key=KEY) as srv:
        client = openai.OpenAI(api_key=KEY, base_url=srv.openai_base_url, max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, args, names, finish, usage = "", "", [], None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or []:
                    if call.function and call.function.name:
                        names.append(call.function.name)
                    args += (call.function.arguments or "") if call.function else ""
                finish = choice.finish_reason or finish
    assert text == "streamed text" and names == ["bash"] and json.loads(args) == {"command": "make"}
    assert finish == "tool_calls" and usage is not None and usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        ({"match": "x"}, "must be a list"),
        ([{"match": "x"}], "non-empty 'replies'"),
        ([{"match": "(", "replies": [{"text": "a"}]}], "bad 'match' regex"),
        ([{"match": "x", "replies": [{"say": "a"}]}], "must have one of"),
    ],
)
def test_bad_scripts_are_usage_errors(script: Any, problem: str) -> None:
    with pytest.raises(UsageError, match=re.escape(problem)):
        load_script(script)


def test_serve_from_a_yaml_file_in_a_subprocess(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text('- match: "ping"\n  replies:\n    - text: "pong"\n')
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom harness.models.fake_server import main\nsys.exit(main(sys.argv[1:]))",
            "--port",
            "0",
            "--script",
            str(script),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
        assert url, "serve() did not announce its URL"
        status, _, raw = post(
            url.group(0) + "/v1/chat/completions", {"messages": [{"role": "user", "content": "ping"}]}
        )
        assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "pong"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_responses_api_streams_codex_shell_calls_turn_by_turn() -> None:
    """The Responses API (Codex's wire): the SDK's stream helper, which checks the event order and
    rebuilds the response, gets a function_call turn, then (after the tool output) a text turn."""
    shell = {"command": ["bash", "-c", "echo hi > f.txt"], "workdir": "/w"}
    script = [{"match": "write f", "replies": [{"text": "on it", "tool": "shell", "input": shell},
                                               {"text": "wrote f.txt", "usage": {"output_tokens": 7}}]}]
    with FakeServer(script, api_key=KEY) as srv:
        client = openai.OpenAI(api_key=KEY, base_url=srv.openai_base_url, max_retries=0)
        # Codex sends its instructions and environment as user messages before the prompt.
        inputs: list[Any] = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<env/>"}]},
                             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "write f"}]}]
        with client.responses.stream(model="gpt-test", input=inputs, instructions="be brief") as stream:
            kinds = [event.type for event in stream]
            first = stream.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert {"response.output_text.delta", "response.function_call_arguments.delta",
                "response.output_item.added", "response.output_item.done"} <= set(kinds)
        assert first.output_text == "on it"
        call = next(item for item in first.output if item.type == "function_call")
        assert call.name == "shell" and json.loads(call.arguments) == shell
        assert first.usage is not None and first.usage.input_tokens > 0
        inputs += [call.model_dump(exclude_none=True),
                   {"type": "function_call_output", "call_id": call.call_id, "output": "ok"}]
        second = client.responses.create(model="gpt-test", input=inputs)  # not streamed: one JSON object
        assert second.output_text == "wrote f.txt" and second.usage is not None and second.usage.output_tokens == 7
        inputs += [item.model_dump(exclude_none=True) for item in second.output]
        with pytest.raises(openai.BadRequestError, match="has 2 turns"):
            client.responses.create(model="gpt-test", input=inputs + [{"role": "user", "content": "more"}])
    assert [r["path"] for r in srv.requests] == ["/v1/responses"] * 3
    assert srv.requests[0]["body"]["stream"] is True


def test_the_prompt_cache_serves_a_prefix_an_earlier_request_wrote_up_to_its_breakpoint() -> None:
    """Anthropic: what is before a cache_control breakpoint is written once and read by any later
    request that starts with it, whatever follows; a change before the breakpoint misses. OpenAI:
    the system message and tools are cached without a breakpoint."""
    mark = {"type": "ephemeral"}
    system = [{"type": "text", "text": "RULES " * 200, "cache_control": mark}]
    tools = [{"name": "bash", "description": "run", "input_schema": {"type": "object"}, "cache_control": mark}]

    def usage(srv: FakeServer, body: dict[str, Any]) -> dict[str, int]:
        status, _, raw = post(srv.base_url + "/v1/messages", body)
        assert status == 200, raw
        assert srv.requests[-1]["usage"] == json.loads(raw)["usage"]  # the record carries what was sent
        u = json.loads(raw)["usage"]
        return {k: u[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}

    with FakeServer([{"match": "", "replies": [{"text": "ok"}] * 3}]) as srv:
        one = usage(srv, anthropic_body("task one", system=system, tools=tools))
        two = usage(srv, anthropic_body("a different task two", system=system, tools=tools))
        other_system = [{**system[0], "text": "OTHER " * 200}]
        three = usage(srv, anthropic_body("task one", system=other_system, tools=tools))
        plain = usage(srv, anthropic_body("task one", system="RULES " * 200))  # no breakpoint: no cache
        # A breakpoint on the last message: the next turn reads the whole conversation before it.
        turn0 = anthropic_body("long task " * 100, system=system, tools=tools)
        turn0["messages"][0]["content"] = [{"type": "text", "text": "long task " * 100, "cache_control": mark}]
        first_turn = usage(srv, turn0)
        turn1 = {**turn0, "messages": [{"role": "user", "content": [{"type": "text", "text": "long task " * 100}]},
                                       {"role": "assistant", "content": "ok"},
                                       {"role": "user", "content": [{"type": "text", "text": "go", "cache_control": mark}]}]}
        second_turn = usage(srv, turn1)

    prefix = one["cache_creation_input_tokens"]
    assert prefix > 300 and one["cache_read_input_tokens"] == 0 and 0 < one["input_tokens"] < prefix
    assert two == {"input_tokens": two["input_tokens"], "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": prefix}
    assert two["input_tokens"] > one["input_tokens"]  # a longer message after the breakpoint
    # The tools (before the system) are still cached; the changed system prompt is written anew.
    assert 0 < three["cache_read_input_tokens"] < prefix and three["cache_creation_input_tokens"] > 0
    assert plain["cache_read_input_tokens"] == plain["cache_creation_input_tokens"] == 0 and plain["input_tokens"] > 300
    assert first_turn["cache_read_input_tokens"] == prefix and first_turn["cache_creation_input_tokens"] > 250
    assert second_turn["cache_read_input_tokens"] == (first_turn["cache_read_input_tokens"]
                                                      + first_turn["cache_creation_input_tokens"])

    with FakeServer([{"match": "", "replies": [{"text": "ok"}]}]) as srv:
        client = openai.OpenAI(api_key=KEY, base_url=srv.openai_base_url, max_retries=0)
        cached = []
        for task in ("task one", "task two", "task one"):
            reply = client.chat.completions.create(model="gpt-test", messages=[
                {"role": "system", "content": "RULES " * 200}, {"role": "user", "content": task}])
            assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
            cached.append(reply.usage.prompt_tokens_details.cached_tokens)
    assert cached[0] == 0 and cached[1] == cached[2] > 250
