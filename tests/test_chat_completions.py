"""POST /v1/chat/completions through the official openai SDK, against a real mock upstream."""

from __future__ import annotations

import itertools
import socket
import time

import httpx
import openai
import orjson
import pytest

from gateway.api import views
from tests.conftest import make_deployment, make_provider
from tests.mock_upstream import Behaviour

HELLO = [{"role": "user", "content": "Say hello"}]

# Every test here is a conformance test: it runs through the passthrough and through LiteLLM.
pytestmark = pytest.mark.usefixtures("upstream_path")


def test_it_answers_a_chat_completion(client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="Hello there friend")
    result = client.chat.completions.create(model="test-model", messages=HELLO)
    assert result.choices[0].message.content == "Hello there friend"
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.usage.completion_tokens > 0


def test_it_sends_the_upstream_model_id_and_the_providers_key(client, upstream, deployment):
    client.chat.completions.create(model="test-model", messages=HELLO, temperature=0.5, max_tokens=20)
    sent = upstream.requests[-1]
    assert sent.path.endswith("/chat/completions")
    assert sent.json["model"] == "mock-1"
    assert sent.json["messages"] == HELLO
    assert sent.json["temperature"] == 0.5
    assert sent.json["max_tokens"] == 20
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret-value-123"


def test_it_is_also_served_without_the_v1_prefix(portal, master_key, upstream, deployment):
    response = httpx.post(
        f"{portal.url}/chat/completions",
        json={"model": "test-model", "messages": HELLO},
        headers={"Authorization": f"Bearer {master_key}"},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["role"] == "assistant"
    assert response.headers["x-request-id"]


def test_it_accepts_the_key_in_x_api_key(portal, master_key, upstream, deployment):
    response = httpx.post(
        f"{portal.url}/v1/chat/completions",
        json={"model": "test-model", "messages": HELLO},
        headers={"x-api-key": master_key},
    )
    assert response.status_code == 200


def test_it_streams_chunks_ending_with_done(portal, master_key, client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="one two three four")
    stream = client.chat.completions.create(model="test-model", messages=HELLO, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.split() == ["one", "two", "three", "four"]

    with httpx.stream(
        "POST",
        f"{portal.url}/v1/chat/completions",
        json={"model": "test-model", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {master_key}"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_a_stream_reports_usage_only_when_asked(client, upstream, deployment):
    chunks = list(client.chat.completions.create(model="test-model", messages=HELLO, stream=True))
    assert all(chunk.usage is None for chunk in chunks)

    chunks = list(
        client.chat.completions.create(
            model="test-model", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_a_stream_is_forwarded_chunk_by_chunk_not_buffered(client, upstream, deployment):
    upstream.behaviour = Behaviour(reply="a b c d e f", chunk_delay=0.3)
    started = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(model="test-model", messages=HELLO, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    # Six content chunks 0.3 s apart upstream: the first must arrive long before the last was produced.
    assert len(arrivals) == 6
    assert arrivals[0] < 1.0
    assert arrivals[-1] - arrivals[0] > 1.2


def test_a_client_disconnect_closes_the_upstream_stream(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply=" ".join(["word"] * 50), chunk_delay=0.2)
    request = (
        b'{"model": "test-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    )
    sock = socket.create_connection(("127.0.0.1", portal.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {master_key}\r\nContent-Length: {len(request)}\r\n\r\n".encode()
        + request
    )
    assert b"200" in sock.recv(4096)
    sock.close()
    # 50 chunks at 0.2 s would take 10 s; the upstream must see us leave within a few.
    assert upstream.disconnected.wait(timeout=5)
    assert upstream.disconnects == 1


def stream_lines(portal, master_key) -> list[str]:
    """A streamed completion's non-blank lines, read raw (the SDK drops the keepalive comments)."""
    body = {"model": "test-model", "stream": True, "messages": HELLO}
    headers = {"Authorization": f"Bearer {master_key}"}
    with httpx.stream("POST", f"{portal.url}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_a_silent_upstream_gets_keepalives_between_its_chunks(portal, master_key, upstream, deployment,
                                                              monkeypatch):
    monkeypatch.setattr(views, "KEEPALIVE_SECONDS", 0.2)  # not 15 s, for the test's sake
    upstream.behaviour = Behaviour(reply="a b", chunk_delay=0.7)
    lines = stream_lines(portal, master_key)

    assert lines[-1] == "data: [DONE]"
    data = [index for index, line in enumerate(lines) if line.startswith("data: ")]
    assert set(lines) - {lines[index] for index in data} == {": keepalive"}
    # role, "a", " b", finish: each after 0.7 s of silence, filled with keepalives (the usage the portal asked
    # for and [DONE] follow the finish chunk at once).
    gaps = [lines[start + 1 : end] for start, end in itertools.pairwise(data[:4])]
    assert all(len(gap) >= 2 for gap in gaps), gaps
    assert all(line.startswith("data: ") for line in lines[data[3] :])
    text = "".join(orjson.loads(lines[index][6:])["choices"][0]["delta"].get("content") or "" for index in data[:3])
    assert text == "a b"


def test_keepalives_do_not_put_off_the_stall(portal, master_key, upstream, deployment, settings, monkeypatch):
    monkeypatch.setattr(views, "KEEPALIVE_SECONDS", 0.3)
    settings.STREAM_IDLE_TIMEOUT = 1
    upstream.behaviour = Behaviour(reply="a b c", chunk_delay=10)
    started = time.monotonic()
    lines = stream_lines(portal, master_key)

    assert time.monotonic() - started < 5
    assert lines.count(": keepalive") >= 2
    assert orjson.loads(lines[-1][6:])["error"]["code"] == "upstream_stream_stalled"
    assert upstream.disconnected.wait(timeout=5)


def test_an_unknown_model_is_a_404_not_found_error(client, deployment):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert e.value.code == "model_not_found"
    assert "no-such-model" in e.value.message


def test_a_disabled_model_is_not_found(client, deployment):
    deployment.enabled = False
    deployment.save()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="test-model", messages=HELLO)


def test_a_missing_or_wrong_key_is_a_401(portal, deployment):
    wrong = openai.OpenAI(base_url=f"{portal.url}/v1", api_key="sk-wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model="test-model", messages=HELLO)
    assert e.value.code == "invalid_api_key"

    response = httpx.post(f"{portal.url}/v1/chat/completions", json={"model": "test-model", "messages": HELLO})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_upstream_429_is_a_rate_limit_error_with_retry_after(client, upstream, deployment):
    upstream.behaviour = Behaviour(status=429, headers={"Retry-After": "17"})
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert e.value.response.headers["retry-after"] == "17"
    # LiteLLM's own retries are off: one request reached the upstream, not three.
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("status, error", [(401, openai.AuthenticationError), (403, openai.PermissionDeniedError),
                                           (404, openai.NotFoundError)])
def test_upstream_client_errors_keep_their_status(client, upstream, deployment, status, error):
    upstream.behaviour = Behaviour(status=status)
    with pytest.raises(error) as e:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert "mock" in e.value.message  # names the provider
    assert "sk-upstream-secret-value-123" not in e.value.response.text


def test_upstream_5xx_is_a_502(client, upstream, deployment):
    upstream.behaviour = Behaviour(status=500)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert e.value.status_code == 502
    assert e.value.type == "api_error"


def test_an_unreachable_upstream_is_a_502(client, transactional_db, upstream):
    from gateway.models import Provider

    dead_port = socket.socket()
    dead_port.bind(("127.0.0.1", 0))
    port = dead_port.getsockname()[1]
    dead_port.close()
    provider = Provider(name="dead", kind="openai_compatible", api_base=f"http://127.0.0.1:{port}/v1")
    provider.save()
    make_deployment(provider)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert e.value.status_code == 502
    assert e.value.code == "upstream_connection_error"


def test_an_upstream_timeout_is_a_504(client, upstream, deployment, settings):
    settings.UPSTREAM_TIMEOUT = 0.5
    upstream.behaviour = Behaviour(latency=3)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert e.value.status_code == 504


def test_a_retryable_failure_falls_back_to_the_next_deployment(client, upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, upstream_model="primary", priority=0)
    make_deployment(provider, upstream_model="secondary", priority=1)
    upstream.set_behaviour("primary", Behaviour(status=503))
    upstream.set_behaviour("secondary", Behaviour(reply="from secondary"))
    result = client.chat.completions.create(model="test-model", messages=HELLO)
    assert result.choices[0].message.content == "from secondary"
    assert [r.json["model"] for r in upstream.requests] == ["primary", "secondary"]


def test_a_bad_request_upstream_is_not_retried_elsewhere(client, upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, upstream_model="primary", priority=0)
    make_deployment(provider, upstream_model="secondary", priority=1)
    upstream.set_behaviour("primary", Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert [r.json["model"] for r in upstream.requests] == ["primary"]
