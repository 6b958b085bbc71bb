"""POST /v1/messages through the official anthropic SDK, translated to OpenAI chat for the mock upstream.

The SDK is the client Claude Code is built on: if it parses our answers, streams and errors into its own
types and exception classes, so will the agents.
"""

from __future__ import annotations

import base64
import socket
import time
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import make_deployment, make_provider
from tests.helpers import named_events, wait_for_records
from tests.mock_upstream import Behaviour
from tests.personas import issue
from tracking import recorder
from tracking.models import UsageRecord

HELLO = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# The smallest valid PNG (1x1), as an agent would attach a screenshot.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201ff2dd2e0e00000000049454e44ae426082"
)).decode()


@pytest.fixture
def claude(portal: Any, master_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=portal.url, api_key=master_key, max_retries=0, timeout=30)


def sent(upstream: Any) -> dict[str, Any]:
    """The chat body the upstream received last."""
    return upstream.requests_for("/chat/completions")[-1].json


def sse_events(portal: Any, key: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return named_events(f"{portal.url}/v1/messages", {"x-api-key": key}, body)


# --- answers ---------------------------------------------------------------------------------------------


def test_it_answers_a_plain_message(claude, upstream, deployment):
    upstream.behaviour = Behaviour(reply="Hello there friend")
    message = claude.messages.create(model="test-model", max_tokens=100, messages=HELLO)
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello there friend"
    assert message.role == "assistant" and message.model == "test-model"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 3  # the mock counts one token per word
    assert message.usage.input_tokens >= 1
    body = sent(upstream)
    assert body["model"] == "mock-1"
    assert body["messages"] == HELLO
    assert body["max_tokens"] == 100


def test_it_sends_the_system_prompt_as_a_system_message(claude, upstream, deployment):
    claude.messages.create(model="test-model", max_tokens=50, system="You are terse.", messages=HELLO)
    assert sent(upstream)["messages"] == [{"role": "system", "content": "You are terse."}, *HELLO]

    blocks = [{"type": "text", "text": "You are terse."},
              {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}]
    claude.messages.create(model="test-model", max_tokens=50, system=blocks, messages=HELLO)
    assert sent(upstream)["messages"][0] == {"role": "system", "content": "You are terse.\n\nAnswer in French."}


def test_it_carries_a_multi_turn_conversation_and_the_sampling_settings(claude, upstream, deployment):
    turns = [
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": [{"type": "text", "text": "Nice to meet you, Alice."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    # Newer SDKs dropped the sampling arguments; older clients (and agents) still send them.
    claude.messages.create(model="test-model", max_tokens=64, messages=turns, metadata={"user_id": "alice-42"},
                           extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5})
    body = sent(upstream)
    assert body["messages"] == [
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": "Nice to meet you, Alice."},
        {"role": "user", "content": "What is my name?"},
    ]
    assert body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["user"] == "alice-42"
    assert "top_k" not in body  # OpenAI has no top_k: an OpenAI upstream would refuse it


def test_structured_output_becomes_a_json_schema_response_format(claude, upstream, deployment):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    claude.messages.create(model="test-model", max_tokens=50, messages=HELLO,
                           extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert sent(upstream)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


def test_it_passes_images_as_image_urls(claude, upstream, deployment):
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What are these?"},
    ]
    claude.messages.create(model="test-model", max_tokens=50, messages=[{"role": "user", "content": content}])
    assert sent(upstream)["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What are these?"},
    ]}]


def test_it_refuses_an_image_on_an_internal_address_naming_the_block(claude, upstream, deployment):
    content = [{"type": "image", "source": {"type": "url", "url": "http://169.254.169.254/latest/meta-data"}}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="test-model", max_tokens=50, messages=[{"role": "user", "content": content}])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0].source" in caught.value.body["error"]["message"]
    assert upstream.requests_for("/chat/completions") == []


def test_a_tool_use_round_trip(claude, upstream, deployment, upstream_path):
    upstream.behaviour = Behaviour(reply="Let me look.", tool_calls=[{"name": "get_weather",
                                                                      "arguments": {"city": "Paris"}}])
    ask = {"role": "user", "content": "Weather in Paris?"}
    first = claude.messages.create(model="test-model", max_tokens=200, tools=[WEATHER_TOOL], messages=[ask])
    assert first.stop_reason == "tool_use"
    text, call = first.content
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert sent(upstream)["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER_TOOL["input_schema"]}}]

    upstream.behaviour = Behaviour(reply="It is sunny in Paris.")
    result = {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "sunny, 24C"}]}
    answer = claude.messages.create(
        model="test-model", max_tokens=200, tools=[WEATHER_TOOL],
        messages=[ask, {"role": "assistant", "content": [c.model_dump() for c in first.content]},
                  {"role": "user", "content": [result, {"type": "text", "text": "Thanks!"}]}],
    )
    assert answer.content[0].text == "It is sunny in Paris."
    assert answer.stop_reason == "end_turn"
    assert sent(upstream)["messages"][1:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24C"},
        {"role": "user", "content": "Thanks!"},
    ]


def test_a_failed_tool_and_an_image_from_a_tool_reach_the_model(claude, upstream, deployment):
    messages = [
        {"role": "user", "content": "Take a screenshot."},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should use both tools.", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}},
            {"type": "tool_use", "id": "toolu_2", "name": "ls", "input": {"path": "/"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "permission denied", "is_error": True},
        ]},
    ]
    claude.messages.create(model="test-model", max_tokens=50, messages=messages)
    chat = sent(upstream)["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant", "tool", "tool", "user"]
    assert chat[1]["content"] is None and [c["id"] for c in chat[1]["tool_calls"]] == ["toolu_1", "toolu_2"]
    assert chat[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: permission denied"}
    assert chat[4]["content"] == [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_is_translated(claude, upstream, deployment, choice, expected):
    claude.messages.create(model="test-model", max_tokens=50, messages=HELLO, tools=[WEATHER_TOOL],
                           tool_choice=choice)
    assert sent(upstream)["tool_choice"] == expected


def test_disabling_parallel_tool_use_is_passed_on(claude, upstream, deployment):
    claude.messages.create(model="test-model", max_tokens=50, messages=HELLO, tools=[WEATHER_TOOL],
                           tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert sent(upstream)["parallel_tool_calls"] is False


def test_running_out_of_max_tokens_is_reported_as_max_tokens(claude, upstream, deployment):
    upstream.behaviour = Behaviour(reply="one two three four five")
    message = claude.messages.create(model="test-model", max_tokens=2, messages=HELLO)
    assert message.content[0].text == "one two"
    assert message.stop_reason == "max_tokens"


def test_a_stop_sequence_is_reported_when_the_upstream_names_it(claude, upstream, deployment, upstream_path):
    upstream.behaviour = Behaviour(reply="one two three four")
    message = claude.messages.create(model="test-model", max_tokens=50, messages=HELLO, stop_sequences=[" three"])
    assert sent(upstream)["stop"] == [" three"]
    assert message.content[0].text == "one two"
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == " three"

    with claude.messages.stream(model="test-model", max_tokens=50, messages=HELLO,
                                stop_sequences=[" four"]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == " four"


# --- streams ---------------------------------------------------------------------------------------------


def test_it_streams_anthropics_event_sequence_with_the_final_usage(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply="one two three")
    events = sse_events(portal, master_key, {"model": "test-model", "max_tokens": 50, "messages": HELLO,
                                             "stream": True})
    names = [name for name, _ in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["model"] == "test-model"
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta") == "one two three"
    delta = events[7][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    upstream_usage = {"output_tokens": 3, "input_tokens": 2}  # the mock: a token per word, prompt chars // 4
    assert {k: delta["usage"][k] for k in upstream_usage} == upstream_usage


def test_the_sdk_assembles_a_streamed_answer(claude, upstream, deployment):
    upstream.behaviour = Behaviour(reply="Hello from the stream")
    with claude.messages.stream(model="test-model", max_tokens=50, messages=HELLO) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Hello from the stream"
    assert final.content[0].text == "Hello from the stream"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4 and final.usage.input_tokens == 2


def test_it_streams_tool_calls_as_input_json_deltas(portal, master_key, claude, upstream, deployment, upstream_path):
    upstream.behaviour = Behaviour(reply="Checking.", tool_calls=[
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
    ])
    body = {"model": "test-model", "max_tokens": 50, "messages": HELLO, "tools": [WEATHER_TOOL], "stream": True}
    events = sse_events(portal, master_key, body)
    starts = [data for name, data in events if name == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[1]["content_block"]["name"] == "get_weather" and starts[1]["content_block"]["input"] == {}
    json_pieces = [data["delta"]["partial_json"] for name, data in events
                   if name == "content_block_delta" and data["index"] == 1]
    assert len(json_pieces) > 1 and orjson.loads("".join(json_pieces)) == {"city": "Paris"}
    assert [data["index"] for name, data in events if name == "content_block_stop"] == [0, 1, 2]

    with claude.messages.stream(model="test-model", max_tokens=50, messages=HELLO, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert [block.input for block in final.content[1:]] == [{"city": "Paris"}, {"city": "Oslo"}]


def test_an_upstream_failure_mid_stream_ends_with_an_error_event(claude, upstream, deployment, upstream_path):
    upstream.behaviour = Behaviour(reply="one two three four five six", disconnect_after_chunks=3)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude.messages.stream(model="test-model", max_tokens=50, messages=HELLO) as stream:
            for _ in stream:
                pass
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "api_error"


def test_a_client_disconnect_closes_the_upstream_stream_and_is_recorded(portal, master_key, upstream, deployment):
    recorder.flush()
    UsageRecord.objects.all().delete()
    upstream.behaviour = Behaviour(reply=" ".join(["word"] * 50), chunk_delay=0.2)
    body = orjson.dumps({"model": "test-model", "max_tokens": 100, "stream": True, "messages": HELLO})
    sock = socket.create_connection(("127.0.0.1", portal.port))
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"x-api-key: {master_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert b"200" in sock.recv(4096)
    sock.close()
    # 50 chunks at 0.2 s would take 10 s; the upstream must see us leave within a few.
    assert upstream.disconnected.wait(timeout=5)
    [record] = wait_for_records(1, endpoint="messages")
    assert record.streamed and record.client_disconnected and record.error_code == "client_disconnected"


def test_a_client_that_leaves_before_a_whole_answer_is_recorded_and_the_upstream_call_dropped(
        portal, master_key, upstream, deployment):
    recorder.flush()
    UsageRecord.objects.all().delete()
    upstream.behaviour = Behaviour(latency=10)
    body = orjson.dumps({"model": "test-model", "max_tokens": 100, "messages": HELLO})
    sock = socket.create_connection(("127.0.0.1", portal.port))
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"x-api-key: {master_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 5
    while not upstream.requests_for("/chat/completions"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sock.close()
    # The answer would take 10 s; the upstream must see the portal leave within a few.
    assert upstream.disconnected.wait(timeout=5)
    [record] = wait_for_records(1, endpoint="messages")
    assert (record.status, record.error_code, record.client_disconnected) == (499, "client_disconnected", True)
    assert not record.streamed


# --- errors ----------------------------------------------------------------------------------------------


def test_a_wrong_key_raises_the_sdks_authentication_error(portal, upstream, deployment):
    client = anthropic.Anthropic(base_url=portal.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="test-model", max_tokens=50, messages=HELLO)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert caught.value.request_id == caught.value.response.headers["x-request-id"]


def test_the_key_is_also_accepted_as_a_bearer_token(portal, master_key, upstream, deployment):
    response = httpx.post(f"{portal.url}/v1/messages", headers={"Authorization": f"Bearer {master_key}"},
                          json={"model": "test-model", "max_tokens": 20, "messages": HELLO})
    assert response.status_code == 200
    assert response.json()["type"] == "message"


def test_an_unknown_model_raises_the_sdks_not_found_error(claude, upstream, deployment):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=50, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in caught.value.body["error"]["message"]


def test_a_key_limited_to_other_models_gets_a_permission_error(portal, upstream, deployment, personas):
    _, token = issue(personas.alice, allowed_models=["other-model"])
    client = anthropic.Anthropic(base_url=portal.url, api_key=token, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        client.messages.create(model="test-model", max_tokens=50, messages=HELLO)
    assert caught.value.body["error"]["type"] == "permission_error"


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "test-model", "messages": HELLO}, "max_tokens"),
    ({"model": "test-model", "max_tokens": 10, "messages": []}, "messages"),
    ({"model": "test-model", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"model": "test-model", "max_tokens": 10, "messages": HELLO, "temperature": 1.5}, "temperature"),
    ({"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
     "messages[0].content[0].type"),
    ({"model": "test-model", "max_tokens": 10, "messages": HELLO, "tools": [{"name": "x"}]},
     "tools[0].input_schema"),
    ({"model": "test-model", "max_tokens": 10, "messages": HELLO,
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"model": "test-model", "max_tokens": 10, "messages": HELLO, "tool_choice": {"type": "sometimes"}},
     "tool_choice.type"),
])
def test_an_invalid_request_is_a_400_naming_the_field(portal, master_key, upstream, deployment, body, field):
    response = httpx.post(f"{portal.url}/v1/messages", headers={"x-api-key": master_key}, json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert f"'{field}'" in error["error"]["message"]
    assert upstream.requests_for("/chat/completions") == []


def test_a_wrong_method_is_an_anthropic_error(portal, master_key):
    response = httpx.get(f"{portal.url}/v1/messages", headers={"x-api-key": master_key})
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_provider_429_raises_the_sdks_rate_limit_error_with_retry_after(claude, upstream, deployment):
    upstream.behaviour = Behaviour(status=429, headers={"Retry-After": "7"})
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model="test-model", max_tokens=50, messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"


# --- the same keys, quotas and records as chat -----------------------------------------------------------


def test_messages_and_chat_calls_share_one_rpm_limit(portal, master_key, claude, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=2)
    chat = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=master_key, max_retries=0)
    claude.messages.create(model="test-model", max_tokens=50, messages=HELLO)
    raw = chat.chat.completions.with_raw_response.create(model="test-model", messages=HELLO)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model="test-model", max_tokens=50, messages=HELLO)
    # A minute, counted in whole seconds and never early: up to 61 s.
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 61
    assert "2 requests per minute" in caught.value.body["error"]["message"]
    assert len(upstream.requests_for("/chat/completions")) == 2


def test_a_successful_answer_carries_the_rate_limit_headers(claude, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=5)
    raw = claude.messages.with_raw_response.create(model="test-model", max_tokens=50, messages=HELLO)
    assert raw.headers["x-ratelimit-limit-requests"] == "5"
    assert raw.headers["x-ratelimit-remaining-requests"] == "4"


def test_a_key_quota_counts_messages_calls(portal, upstream, deployment, personas):
    from accounts.principal import KeyLimits

    _, token = issue(personas.alice, limits=KeyLimits(rpm=1))
    client = anthropic.Anthropic(base_url=portal.url, api_key=token, max_retries=0)
    client.messages.create(model="test-model", max_tokens=50, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="test-model", max_tokens=50, messages=HELLO)


def test_calls_fall_back_to_the_next_deployment(claude, upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, upstream_model="primary", priority=1)
    make_deployment(provider, upstream_model="backup", priority=2)
    upstream.set_behaviour("primary", Behaviour(status=503))
    upstream.set_behaviour("backup", Behaviour(reply="from backup"))
    message = claude.messages.create(model="test-model", max_tokens=50, messages=HELLO)
    assert message.content[0].text == "from backup"
    with claude.messages.stream(model="test-model", max_tokens=50, messages=HELLO) as stream:
        assert stream.get_final_message().content[0].text == "from backup"


def test_each_call_leaves_a_usage_record_like_a_chat_call(claude, upstream, deployment):
    recorder.flush()
    UsageRecord.objects.all().delete()
    upstream.behaviour = Behaviour(reply="four words right here")
    raw = claude.messages.with_raw_response.create(model="test-model", max_tokens=50, messages=HELLO)
    message = raw.parse()
    with claude.messages.stream(model="test-model", max_tokens=50, messages=HELLO) as stream:
        stream.get_final_message()
    first, second = wait_for_records(2, endpoint="messages")
    assert first.request_id == raw.headers["x-request-id"] == message.id.removeprefix("msg_")
    assert first.model == "test-model" and first.upstream_model == "mock-1"
    assert first.status == 200 and first.ok and not first.streamed
    assert first.completion_tokens == message.usage.output_tokens == 4
    assert first.prompt_tokens == message.usage.input_tokens
    assert second.streamed and second.ok and second.completion_tokens == 4 and second.ttft_ms is not None


def test_a_refused_call_is_recorded_with_its_error(claude, upstream, deployment):
    recorder.flush()
    UsageRecord.objects.all().delete()
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=50, messages=HELLO)
    [record] = wait_for_records(1, endpoint="messages")
    assert record.status == 404 and not record.ok and record.error_code == "model_not_found"


# --- count_tokens ----------------------------------------------------------------------------------------


def test_count_tokens_estimates_the_prompt_without_calling_the_model(claude, upstream, deployment):
    short = claude.messages.count_tokens(model="test-model", messages=HELLO)
    longer = claude.messages.count_tokens(model="test-model", system="You are a careful assistant.",
                                          messages=HELLO * 20, tools=[WEATHER_TOOL])
    assert 1 <= short.input_tokens < longer.input_tokens
    assert upstream.requests_for("/chat/completions") == []


def test_count_tokens_knows_only_the_catalogs_models(claude, upstream, deployment):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=HELLO)
