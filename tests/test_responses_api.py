"""POST /v1/responses through the official openai SDK's responses client, over the chat path to the mock."""

from __future__ import annotations

import base64
import time
from typing import Any

import openai
import orjson
import pytest

from accounts.principal import KeyLimits
from tests.conftest import make_deployment, make_provider
from tests.helpers import named_events, wait_for_records
from tests.mock_upstream import Behaviour
from tests.personas import issue
from tracking import recorder
from tracking.models import UsageRecord

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201ff2dd2e0e00000000049454e44ae426082"
)).decode()


def sent(upstream: Any) -> dict[str, Any]:
    return upstream.requests_for("/chat/completions")[-1].json


def without_nulls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LiteLLM leaves out a null content; an upstream reads both the same."""
    return [{k: v for k, v in message.items() if v is not None} for message in messages]


def sdk(portal: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=key, max_retries=0, timeout=30)


def sse_events(portal: Any, key: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return named_events(f"{portal.url}/v1/responses", {"Authorization": f"Bearer {key}"}, {**body, "stream": True})


# --- answers ---------------------------------------------------------------------------------------------


def test_it_answers_a_string_input(client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="Hello there friend")
    response = client.responses.create(model="test-model", input="Say hello")
    assert response.output_text == "Hello there friend"
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "test-model"
    [item] = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert response.usage.output_tokens == 3
    assert response.usage.total_tokens == response.usage.input_tokens + 3
    body = sent(upstream)
    assert body["model"] == "mock-1"
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]


def test_instructions_and_settings_are_passed_on(client, upstream, deployment):
    response = client.responses.create(model="test-model", input="Say hello", instructions="Be terse.",
                                       max_output_tokens=40, temperature=0.3, top_p=0.8, user="alice-42")
    body = sent(upstream)
    assert body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hello"}]
    assert body["max_tokens"] == 40 and body["temperature"] == 0.3 and body["top_p"] == 0.8
    assert body["user"] == "alice-42"
    assert response.instructions == "Be terse." and response.max_output_tokens == 40


def test_input_items_carry_a_multi_turn_conversation(client, upstream, deployment):
    client.responses.create(model="test-model", input=[
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "My name is Alice."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Bonjour Alice."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
    ])
    assert sent(upstream)["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": "Bonjour Alice."},
        {"role": "user", "content": "What is my name?"},
    ]


def test_it_passes_images_as_image_urls(client, upstream, deployment):
    client.responses.create(model="test-model", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What are these?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
    ]}])
    assert sent(upstream)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    ]}]


def test_structured_output_becomes_a_response_format(client, upstream, deployment):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    client.responses.create(model="test-model", input="hi", text={"format": {
        "type": "json_schema", "name": "reply", "schema": schema, "strict": True}})
    assert sent(upstream)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}


def test_running_out_of_output_tokens_is_an_incomplete_response(client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="one two three four five")
    response = client.responses.create(model="test-model", input="count", max_output_tokens=2)
    assert response.output_text == "one two"
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


# --- tools -----------------------------------------------------------------------------------------------


def test_a_function_call_round_trip_with_previous_response_id(client, upstream, deployment, upstream_path):
    upstream.behaviour = Behaviour(reply="", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    first = client.responses.create(model="test-model", input="Weather in Paris?", tools=[WEATHER_TOOL],
                                    tool_choice="required")
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"city": "Paris"}
    assert sent(upstream)["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER_TOOL["parameters"], "description": "The weather in a city."}}]
    assert sent(upstream)["tool_choice"] == "required"

    upstream.behaviour = Behaviour(reply="It is sunny in Paris.")
    answer = client.responses.create(
        model="test-model", previous_response_id=first.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24C"}],
    )
    assert answer.output_text == "It is sunny in Paris."
    assert answer.previous_response_id == first.id
    assert without_nulls(sent(upstream)["messages"]) == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": call.call_id, "type": "function", "function": {
            "name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 24C"},
    ]


def test_a_function_call_round_trip_without_stored_state(client, upstream, deployment):
    """Stateless clients (store=false) send the whole conversation as items each turn."""
    client.responses.create(model="test-model", store=False, tools=[WEATHER_TOOL], input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ])
    assert sent(upstream)["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"),
    ("none", "none"),
    ({"type": "function", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_is_translated(client, upstream, deployment, choice, expected):
    client.responses.create(model="test-model", input="hi", tools=[WEATHER_TOOL], tool_choice=choice)
    assert sent(upstream)["tool_choice"] == expected


# --- previous_response_id --------------------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation_without_old_instructions(client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="Nice to meet you.")
    first = client.responses.create(model="test-model", input="My name is Alice.", instructions="Be kind.")
    upstream.behaviour = Behaviour(reply="Your name is Alice.")
    second = client.responses.create(model="test-model", input="What is my name?", previous_response_id=first.id,
                                     instructions="Be brief.")
    assert second.output_text == "Your name is Alice."
    assert sent(upstream)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": "Nice to meet you."},
        {"role": "user", "content": "What is my name?"},
    ]
    client.responses.create(model="test-model", input="And again?", previous_response_id=second.id)
    assert [m["content"] for m in sent(upstream)["messages"]] == [
        "My name is Alice.", "Nice to meet you.", "What is my name?", "Your name is Alice.", "And again?"]


def test_another_keys_response_is_not_found(portal, upstream, deployment, personas):
    alice, bob = sdk(portal, issue(personas.alice)[1]), sdk(portal, issue(personas.bob)[1])
    first = alice.responses.create(model="test-model", input="My secret is 42.")
    with pytest.raises(openai.NotFoundError) as caught:
        bob.responses.create(model="test-model", input="What is the secret?", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(first.id)
    assert alice.responses.retrieve(first.id).output_text == first.output_text
    assert len(upstream.requests_for("/chat/completions")) == 1


def test_a_stored_response_expires_after_the_ttl(client, upstream, deployment, settings):
    settings.RESPONSES_TTL_SECONDS = 1
    first = client.responses.create(model="test-model", input="hi")
    client.responses.retrieve(first.id)
    time.sleep(1.2)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="test-model", input="again", previous_response_id=first.id)


def test_a_response_with_store_false_is_not_kept(client, upstream, deployment):
    first = client.responses.create(model="test-model", input="hi", store=False)
    assert first.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="test-model", input="again", previous_response_id=first.id)


def test_a_response_can_be_retrieved_and_deleted(client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="Keep me")
    first = client.responses.create(model="test-model", input="hi")
    again = client.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == "Keep me" and again.usage == first.usage
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_does-not/exist")


# --- streams ---------------------------------------------------------------------------------------------


def test_it_streams_the_responses_event_sequence(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply="one two three")
    events = sse_events(portal, master_key, {"model": "test-model", "input": "count"})
    names = [name for name, _ in events]
    assert names == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[0][1]["response"]["status"] == "in_progress"
    assert events[7][1]["text"] == "one two three"
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == "one two three"
    assert completed["output"][0]["id"] == events[2][1]["item"]["id"] == events[4][1]["item_id"]
    assert completed["usage"]["output_tokens"] == 3 and completed["usage"]["input_tokens"] >= 1


def test_the_sdk_assembles_a_streamed_response_and_it_can_be_continued(client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="Hello from the stream")
    with client.responses.stream(model="test-model", input="Say hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Hello from the stream"
    assert final.output_text == "Hello from the stream" and final.usage.output_tokens == 4

    events = list(client.responses.create(model="test-model", input="More?", previous_response_id=final.id,
                                          stream=True))
    assert events[-1].type == "response.completed"
    assert sent(upstream)["messages"][:2] == [{"role": "user", "content": "Say hello"},
                                              {"role": "assistant", "content": "Hello from the stream"}]


def test_it_streams_function_calls_as_argument_deltas(portal, master_key, client, upstream, deployment, upstream_path):
    upstream.behaviour = Behaviour(reply="Checking.", tool_calls=[
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
    ])
    events = sse_events(portal, master_key, {"model": "test-model", "input": "Weather?", "tools": [WEATHER_TOOL]})
    added = [data["item"] for name, data in events if name == "response.output_item.added"]
    assert [item["type"] for item in added] == ["message", "function_call", "function_call"]
    pieces = [data["delta"] for name, data in events
              if name == "response.function_call_arguments.delta" and data["output_index"] == 1]
    assert len(pieces) > 1 and orjson.loads("".join(pieces)) == {"city": "Paris"}
    done = [data for name, data in events if name == "response.function_call_arguments.done"]
    assert [orjson.loads(d["arguments"]) for d in done] == [{"city": "Paris"}, {"city": "Oslo"}]

    with client.responses.stream(model="test-model", input="Weather?", tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert final.output_text == "Checking."
    assert final.output[2].name == "get_weather" and orjson.loads(final.output[2].arguments) == {"city": "Oslo"}


def test_an_upstream_failure_mid_stream_ends_with_response_failed(portal, master_key, upstream, deployment,
                                                                   upstream_path):
    upstream.behaviour = Behaviour(reply="one two three four five six", disconnect_after_chunks=3)
    events = sse_events(portal, master_key, {"model": "test-model", "input": "count"})
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed" and data["response"]["error"]["message"]


# --- errors ----------------------------------------------------------------------------------------------


def test_a_wrong_key_raises_the_sdks_authentication_error(portal, upstream, deployment):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(portal, "sk-wrong").responses.create(model="test-model", input="hi")
    assert caught.value.code == "invalid_api_key"


def test_an_unknown_model_raises_the_sdks_not_found_error(client, upstream, deployment):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.code == "model_not_found"


def test_a_provider_429_raises_the_sdks_rate_limit_error_with_retry_after(client, upstream, deployment):
    upstream.behaviour = Behaviour(status=429, headers={"Retry-After": "7"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="test-model", input="hi")
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "test-model"}, "input"),
    ({"model": "test-model", "input": []}, "input"),
    ({"model": "test-model", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "test-model", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "test-model", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "test-model", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "test-model", "input": [{"role": "user", "content": [{"type": "input_image", "image_url":
                                                                     "http://127.0.0.1/x.png"}]}]},
     "input[0].content[0].image_url"),
])
def test_an_invalid_request_is_a_400_naming_the_field(client, upstream, deployment, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**body)
    assert caught.value.param == param
    assert upstream.requests_for("/chat/completions") == []


# --- the same keys, quotas and records as chat -----------------------------------------------------------


def test_responses_and_chat_calls_share_one_rpm_limit(client, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=2)
    raw = client.responses.with_raw_response.create(model="test-model", input="hi")
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="test-model", input="hi")
    # A minute, counted in whole seconds and never early: up to 61 s.
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 61
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="test-model", input="hi", stream=True)
    assert len(upstream.requests_for("/chat/completions")) == 2


def test_a_key_quota_counts_responses_calls(portal, upstream, deployment, personas):
    _, token = issue(personas.alice, limits=KeyLimits(rpm=1))
    alice = sdk(portal, token)
    alice.responses.create(model="test-model", input="hi")
    with pytest.raises(openai.RateLimitError):
        alice.responses.create(model="test-model", input="hi")


def test_each_call_leaves_a_usage_record_like_a_chat_call(client, upstream, deployment):
    recorder.flush()
    UsageRecord.objects.all().delete()
    upstream.behaviour = Behaviour(reply="four words right here")
    raw = client.responses.with_raw_response.create(model="test-model", input="Say hello")
    response = raw.parse()
    list(client.responses.create(model="test-model", input="Say hello", stream=True))
    first, second = wait_for_records(2, endpoint="responses")
    assert first.request_id == raw.headers["x-request-id"] == response.id.removeprefix("resp_")
    assert first.model == "test-model" and first.upstream_model == "mock-1"
    assert first.status == 200 and first.ok and not first.streamed
    assert first.completion_tokens == response.usage.output_tokens == 4
    assert first.prompt_tokens == response.usage.input_tokens
    assert second.streamed and second.ok and second.completion_tokens == 4
