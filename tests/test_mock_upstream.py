"""Self-tests for tests/mock_upstream.py, driven through the official openai SDK and raw httpx.

Run: .venv/bin/python -m pytest tests/test_mock_upstream.py
(``-p no:django`` also works with DJANGO_SETTINGS_MODULE=portal.settings set: tests/conftest.py reads settings.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.mock_upstream import Behaviour, MockUpstream, prompt_tokens, split_reply

REPO_ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "sixteen chars!!!"}]  # 16 chars -> 4 prompt tokens


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    """Shadows tests/conftest.py's autouse Django-cache reset: these tests never touch Django, and that fixture
    would fail under ``-p no:django`` (Django settings are not configured then)."""


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[MockUpstream]:
    with MockUpstream() as server:
        yield server


@pytest.fixture
def server(module_upstream: MockUpstream) -> MockUpstream:
    module_upstream.reset()
    return module_upstream


@pytest.fixture
def sdk(server: MockUpstream) -> Iterator[openai.OpenAI]:
    # max_retries=0: status-knob tests must see the first error, not the SDK's retry.
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=5)
    yield sdk
    sdk.close()


def _sse_payloads(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def _wait_until(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# -- plain completions ---------------------------------------------------------------------------------------------


def test_non_streaming_completion(server: MockUpstream, sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.id.startswith("chatcmpl-mock-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello from mock"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        4,
        3,
        7,
    )

    [recorded] = server.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["Authorization"] == "Bearer x"  # case-insensitive lookup
    assert recorded.json["messages"] == MESSAGES
    assert recorded.model == "gpt-4o-mini"
    assert orjson.loads(recorded.body) == recorded.json


def test_paths_with_and_without_v1_prefix(server: MockUpstream) -> None:
    body = {"model": "m", "messages": MESSAGES}
    for url in (server.url + "/chat/completions", server.base_url + "/chat/completions"):
        assert httpx.post(url, json=body).json()["choices"][0]["message"]["content"] == "Hello from mock"
    for url in (server.url + "/models", server.base_url + "/models"):
        ids = [model["id"] for model in httpx.get(url).json()["data"]]
        assert "gpt-4o-mini" in ids


def test_configurable_reply_and_max_tokens(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.behaviour = Behaviour(reply="one two three four five")
    truncated = sdk.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    assert truncated.choices[0].message.content == "one two"
    assert truncated.choices[0].finish_reason == "length"
    assert truncated.usage is not None and truncated.usage.completion_tokens == 2


def test_keep_alive_reuses_one_connection(server: MockUpstream) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        for _ in range(5):
            assert http.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).status_code == 200
    assert server.connections == 1
    assert len(server.requests) == 5


def test_unknown_route_is_openai_style_404(server: MockUpstream) -> None:
    response = httpx.get(server.url + "/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_embeddings(server: MockUpstream, sdk: openai.OpenAI) -> None:
    result = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b", "a"])  # SDK asks for base64
    vectors = [item.embedding for item in result.data]
    assert len(vectors) == 3 and all(len(vector) == 8 for vector in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    raw = httpx.post(server.base_url + "/embeddings", json={"model": "e", "input": "a"}).json()
    assert raw["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-6)


# -- streaming -----------------------------------------------------------------------------------------------------


def test_streaming_without_usage(server: MockUpstream, sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [chunk.choices[0].delta.content for chunk in chunks[1:-1]] == ["Hello", " from", " mock"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None and chunk.model == "gpt-4o" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1


def test_streaming_with_usage_and_raw_framing(server: MockUpstream) -> None:
    server.behaviour = Behaviour(chunks=5)
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        payloads = _sse_payloads(response)

    assert payloads[-1] == "[DONE]"
    events = [orjson.loads(payload) for payload in payloads[:-1]]
    assert len(events) == 1 + 5 + 1 + 1  # role, content x5, finish, usage
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-2]["choices"][0]["delta"] == {}
    assert events[-1]["choices"] == []
    assert events[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    content = "".join(event["choices"][0]["delta"]["content"] for event in events[1:6])
    assert content == "Hello from mock Hello from"


def test_include_usage_always(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.behaviour = Behaviour(include_usage_always=True)
    chunks = list(sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_chunk_delay_spaces_chunks(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.behaviour = Behaviour(chunk_delay=0.05, chunks=4)  # 6 paced events -> 5 gaps of 50 ms, then [DONE]
    arrivals = [time.perf_counter() for _ in sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)]
    assert len(arrivals) == 6  # role + 4 content + finish ([DONE] is consumed by the SDK)
    assert arrivals[-1] - arrivals[0] >= 0.2  # each event was flushed on its own, not buffered until the end
    assert server.active_streams == 0


def test_usage_and_done_follow_the_finish_chunk_without_the_delay(server: MockUpstream) -> None:
    # As OpenAI sends them: a client asking for usage (the portal always does) must not wait a delay more.
    server.behaviour = Behaviour(chunk_delay=0.3, chunks=2)
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    arrivals = []
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.perf_counter() - started, line.removeprefix("data: ")))
    ended = time.perf_counter() - started

    assert [payload for _, payload in arrivals][-1] == "[DONE]"
    assert len(arrivals) == 1 + 2 + 1 + 1 + 1  # role, content x2, finish, usage, [DONE]
    (finish_at, finish), (usage_at, usage), (done_at, _) = arrivals[-3:]
    assert orjson.loads(finish)["choices"][0]["finish_reason"] == "stop" and orjson.loads(usage)["usage"]
    assert finish_at - arrivals[-4][0] >= 0.25  # the finish chunk is still paced...
    assert usage_at - finish_at < 0.15 and done_at - finish_at < 0.15 and ended - finish_at < 0.15  # ...the rest not


def test_client_disconnect_mid_stream_is_detected_between_chunks(server: MockUpstream) -> None:
    server.behaviour = Behaviour(chunk_delay=1.0, chunks=10)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with httpx.Client() as http, http.stream("POST", server.base_url + "/chat/completions", json=body) as response:
        lines = response.iter_lines()  # keep a reference: a discarded iterator closes the connection at once
        assert next(lines).startswith("data: ")  # the role chunk arrives immediately
        assert server.active_streams == 1
    closed_at = time.monotonic()  # leaving both blocks closes the socket mid-stream

    assert server.disconnected.wait(2)
    # Noticed while the 1 s inter-chunk sleep was still pending, not on the next write.
    assert time.monotonic() - closed_at < 0.5
    assert server.disconnects == 1
    assert _wait_until(lambda: server.active_streams == 0)


def test_client_timeout_during_latency_counts_as_disconnect(server: MockUpstream) -> None:
    server.behaviour = Behaviour(latency=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=0.1)
    assert server.disconnected.wait(0.5)
    assert server.disconnects == 1


def test_disconnect_after_chunks_cuts_the_stream(server: MockUpstream) -> None:
    server.behaviour = Behaviour(disconnect_after_chunks=2)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            received.append(line)
    assert len([line for line in received if line.startswith("data: ")]) == 2
    assert server.disconnects == 0  # the server hung up, not the client


# -- failure knobs -------------------------------------------------------------------------------------------------


def test_status_knob_raises_rate_limit_error_with_retry_after(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.behaviour = Behaviour(status=429, headers={"Retry-After": "7", "x-ratelimit-remaining-requests": "0"})
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


def test_custom_error_body(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.behaviour = Behaviour(status=400, error_body={"error": {"message": "context too long", "code": "ctx"}})
    with pytest.raises(openai.BadRequestError, match="context too long"):
        sdk.chat.completions.create(model="m", messages=MESSAGES)


def test_per_model_behaviour_overrides_default(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.set_behaviour("primary", Behaviour(status=500))
    server.set_behaviour("backup", Behaviour(reply="from backup"))

    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="primary", messages=MESSAGES)
    backup = sdk.chat.completions.create(model="backup", messages=MESSAGES)
    other = sdk.chat.completions.create(model="anything-else", messages=MESSAGES)

    assert backup.choices[0].message.content == "from backup"
    assert other.choices[0].message.content == "Hello from mock"
    assert [request.model for request in server.requests] == ["primary", "backup", "anything-else"]
    assert {"primary", "backup"} <= {model.id for model in sdk.models.list()}


def test_fail_times_then_succeeds(server: MockUpstream) -> None:
    # retry-after-ms keeps the SDK's backoff to 1 ms so the test stays fast.
    server.behaviour = Behaviour(status=503, fail_times=2, headers={"retry-after-ms": "1"})
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=2) as retrying:
        completion = retrying.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from mock"
    assert len(server.requests) == 3
    assert server.behaviour.failures_served == 2


def test_malformed_responses_break_the_client(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.behaviour = Behaviour(malformed=True)
    with pytest.raises(ValueError):  # json.JSONDecodeError from the SDK's body parsing
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(ValueError):
        list(sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True))


def test_reset_clears_state(server: MockUpstream, sdk: openai.OpenAI) -> None:
    server.behaviour = Behaviour(status=500)
    server.set_behaviour("x", Behaviour(status=500))
    httpx.get(server.url + "/models")
    server.reset()
    assert server.requests == [] and server.disconnects == 0 and not server.disconnected.is_set()
    assert sdk.chat.completions.create(model="x", messages=MESSAGES).choices[0].message.content == "Hello from mock"


# -- helpers and CLI -----------------------------------------------------------------------------------------------


def test_split_reply_and_prompt_tokens() -> None:
    assert split_reply("Hello from mock", None) == ("Hello", " from", " mock")
    assert "".join(split_reply("Hello from mock", 7)) == "Hello from mock Hello from mock Hello"
    assert prompt_tokens([{"content": "abcdefgh"}, {"content": [{"type": "text", "text": "abcd"}]}]) == 3
    assert prompt_tokens([]) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_until_sigterm() -> None:
    port = _free_port()
    command = [sys.executable, "-m", "tests.mock_upstream", "--port", str(port), "--chunks", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"listening on http://127.0.0.1:{port}"
        body = {"model": "m", "messages": MESSAGES}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body).json()
        assert reply["usage"]["completion_tokens"] == 4
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
