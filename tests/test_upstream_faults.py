"""Upstream faults end with the right status or an SSE error event, never a hang or a silent success.

Every fault runs through both upstream paths (the passthrough and LiteLLM, see the `upstream_path` fixture)
against the real mock upstream, and each case checks three things: what the client got, the usage record
the call left (with its error), and that the portal still answers afterwards (no crashed server).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, make_deployment, make_provider
from tests.mock_upstream import Behaviour
from tracking import recorder
from tracking.models import UsageRecord

HELLO = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.usefixtures("upstream_path")


def post(portal: Any, key: str, model: str = "test-model", *, stream: bool = False, timeout: float = 30,
         **body: Any) -> httpx.Response:
    """One chat completion; a stream is read to its end (its lines are in response.text)."""
    return httpx.post(
        f"{portal.url}/v1/chat/completions",
        json={"model": model, "messages": HELLO, **({"stream": True} if stream else {}), **body},
        headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
    )


def events(response: httpx.Response) -> list[str]:
    return [line for line in response.text.splitlines() if line]


def record_of(response: httpx.Response, timeout: float = 10.0) -> UsageRecord:
    """The usage record of this call (written by a background thread, and by a stream only once it ended)."""
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + timeout
    while True:
        recorder.flush()
        found = UsageRecord.objects.filter(request_id=request_id).first()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"no usage record for {request_id}"
        time.sleep(0.05)


def assert_error_record(response: httpx.Response, status: int, code: str) -> UsageRecord:
    record = record_of(response)
    assert record.status == status
    assert record.ok is False
    assert record.error_code == code
    assert record.error_message
    return record


def assert_still_serving(portal: Any, key: str, upstream: Any) -> None:
    """The server thread is alive and a normal request to the healthy mock succeeds."""
    upstream.behaviour = Behaviour()
    assert portal.thread.is_alive()
    response = post(portal, key)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"] == "Hello from mock"


def assert_error_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text
    assert "sk-upstream-secret-value-123" not in response.text
    return dict(error)


def assert_stream_error(response: httpx.Response, code: str) -> dict[str, Any]:
    """A stream that started (200) and ended with an error event, never with [DONE]."""
    assert response.status_code == 200, response.text[:500]
    lines = events(response)
    assert "data: [DONE]" not in lines
    assert lines[-1].startswith("data: ") and '"error"' in lines[-1], [line[:300] for line in lines[-3:]]
    error = httpx.Response(200, content=lines[-1][6:]).json()["error"]
    assert error["code"] == code
    return dict(error)


@pytest.fixture
def broken(upstream: Any, deployment: Any) -> Any:
    """A model whose provider lives at a base URL the test sets; test-model stays healthy beside it."""

    def at(api_base: str) -> Any:
        provider = make_provider(upstream, name="broken")
        provider.api_base = api_base
        provider.save()
        return make_deployment(provider, public_name="broken-model")

    return at


# --- cannot connect ---


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_refused_connection_is_a_502_and_recorded(portal, master_key, upstream, broken, stream):
    broken(f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    response = post(portal, master_key, "broken-model", stream=stream)
    assert_error_envelope(response, 502, "upstream_connection_error")
    assert_error_record(response, 502, "upstream_connection_error")
    assert_still_serving(portal, master_key, upstream)


def test_a_tls_handshake_failure_is_a_502_and_recorded(portal, master_key, upstream, broken):
    # An https:// base pointed at the plain-HTTP mock: the TLS handshake fails.
    broken(f"https://127.0.0.1:{upstream.port}/v1")
    started = time.monotonic()
    response = post(portal, master_key, "broken-model")
    assert time.monotonic() - started < 10
    assert_error_envelope(response, 502, "upstream_connection_error")
    assert_error_record(response, 502, "upstream_connection_error")
    assert_still_serving(portal, master_key, upstream)


def test_a_host_name_that_does_not_resolve_is_a_502_and_recorded(portal, master_key, upstream, broken):
    # .invalid never resolves (RFC 6761): a DNS failure without any real host involved.
    broken("http://no-such-upstream.invalid/v1")
    response = post(portal, master_key, "broken-model")
    error = assert_error_envelope(response, 502, "upstream_connection_error")
    assert "broken" in error["message"]
    assert_error_record(response, 502, "upstream_connection_error")
    assert_still_serving(portal, master_key, upstream)


# --- too slow ---


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_headers_slower_than_the_upstream_timeout_are_a_504(portal, master_key, upstream, deployment, settings,
                                                             stream):
    settings.UPSTREAM_TIMEOUT = 1
    upstream.behaviour = Behaviour(latency=4)
    started = time.monotonic()
    response = post(portal, master_key, stream=stream)
    assert time.monotonic() - started < 3.5
    assert_error_envelope(response, 504, "upstream_timeout")
    assert_error_record(response, 504, "upstream_timeout")
    assert_still_serving(portal, master_key, upstream)


def test_slow_headers_within_the_timeout_are_waited_for(portal, master_key, upstream, deployment, settings):
    settings.UPSTREAM_TIMEOUT = 3
    upstream.behaviour = Behaviour(latency=0.5)
    response = post(portal, master_key)
    assert response.status_code == 200
    assert record_of(response).ok


def test_a_body_trickling_past_the_upstream_timeout_is_a_504(portal, master_key, upstream, deployment, settings):
    # Each piece comes well within the timeout, the whole body does not: UPSTREAM_TIMEOUT bounds the answer,
    # not each read, or a provider dripping bytes could hold a request (and its worker slot) forever.
    settings.UPSTREAM_TIMEOUT = 1
    upstream.behaviour = Behaviour(body_delay=0.3, body_pieces=12)
    started = time.monotonic()
    response = post(portal, master_key)
    assert time.monotonic() - started < 2.5
    assert_error_envelope(response, 504, "upstream_timeout")
    assert_error_record(response, 504, "upstream_timeout")
    assert_still_serving(portal, master_key, upstream)


def test_a_slow_body_within_the_timeout_is_read_whole(portal, master_key, upstream, deployment, settings):
    settings.UPSTREAM_TIMEOUT = 5
    upstream.behaviour = Behaviour(body_delay=0.05, body_pieces=6)
    response = post(portal, master_key)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from mock"


def test_a_stalled_stream_ends_with_an_error_event_and_closes_the_upstream(portal, master_key, upstream, deployment,
                                                                           settings):
    settings.STREAM_IDLE_TIMEOUT = 1
    upstream.behaviour = Behaviour(reply="a b c", chunk_delay=10)
    started = time.monotonic()
    response = post(portal, master_key, stream=True)
    assert time.monotonic() - started < 8
    assert_stream_error(response, "upstream_stream_stalled")
    assert upstream.disconnected.wait(timeout=5)
    record = record_of(response)
    assert record.status == 200 and record.ok is False and record.error_code == "upstream_stream_stalled"
    assert_still_serving(portal, master_key, upstream)


# --- cut short ---


def test_a_body_cut_by_a_connection_reset_is_a_502(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reset_after_bytes=40)
    response = post(portal, master_key)
    assert_error_envelope(response, 502, "upstream_connection_error")
    assert_error_record(response, 502, "upstream_connection_error")
    assert_still_serving(portal, master_key, upstream)


def test_a_stream_cut_mid_body_ends_with_an_error_event(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply="one two three four five six", disconnect_after_chunks=3)
    response = post(portal, master_key, stream=True)
    assert "one" in response.text  # what came before the cut was forwarded
    error = assert_stream_error(response, _stream_error_code(response))
    assert error["message"]
    record = record_of(response)
    assert record.status == 200 and record.ok is False and record.error_code
    assert_still_serving(portal, master_key, upstream)


def _stream_error_code(response: httpx.Response) -> str:
    code = httpx.Response(200, content=events(response)[-1][6:]).json()["error"]["code"]
    assert code in ("upstream_connection_error", "upstream_stream_incomplete", "upstream_error")
    return str(code)


# --- nonsense ---


def test_malformed_json_from_the_upstream_is_a_502(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(malformed=True)
    response = post(portal, master_key)
    assert response.status_code == 502
    # The passthrough names the fault; through LiteLLM it is the parser's message.
    code = response.json()["error"]["code"]
    assert code in ("upstream_malformed_response", "upstream_error")
    assert_error_record(response, 502, code)
    assert_still_serving(portal, master_key, upstream)


def test_a_malformed_sse_line_ends_the_stream_with_an_error_event(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply="a b c d", malformed=True)
    response = post(portal, master_key, stream=True)
    assert response.status_code == 200
    lines = events(response)
    assert "data: [DONE]" not in lines
    assert '"error"' in lines[-1]
    record = record_of(response)
    assert record.status == 200 and record.ok is False
    assert record.error_code in ("upstream_malformed_response", "upstream_error")
    assert_still_serving(portal, master_key, upstream)


OVERLOADED = {"message": "The model is overloaded, try later", "type": "server_error", "code": "overloaded"}


def test_a_200_with_an_error_object_inside_is_a_502_not_a_success(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(error_in_200=OVERLOADED)
    response = post(portal, master_key)
    error = assert_error_envelope(response, 502, "upstream_error")
    assert "overloaded" in error["message"]
    assert_error_record(response, 502, "upstream_error")
    assert_still_serving(portal, master_key, upstream)


def test_an_error_event_inside_a_200_stream_ends_it_with_an_error_event(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(error_in_200=OVERLOADED)
    response = post(portal, master_key, stream=True)
    error = assert_stream_error(response, "upstream_error")
    assert "overloaded" in error["message"]
    record = record_of(response)
    assert record.status == 200 and record.ok is False and record.error_code == "upstream_error"
    assert_still_serving(portal, master_key, upstream)


# --- too big ---


def test_a_response_larger_than_the_cap_is_a_502_that_says_so(portal, master_key, upstream, deployment, settings):
    settings.MAX_UPSTREAM_RESPONSE_BYTES = 1_000_000
    upstream.behaviour = Behaviour(reply="x" * 1_500_000)
    response = post(portal, master_key)
    error = assert_error_envelope(response, 502, "upstream_response_too_large")
    assert "1000000 bytes" in error["message"]
    assert_error_record(response, 502, "upstream_response_too_large")
    assert_still_serving(portal, master_key, upstream)


def test_a_stream_larger_than_the_cap_ends_with_an_error_event(portal, master_key, upstream, deployment, settings):
    settings.MAX_UPSTREAM_RESPONSE_BYTES = 1_000_000
    upstream.behaviour = Behaviour(reply=" ".join(["y" * 10_000] * 150))  # 150 events of 10 kB
    response = post(portal, master_key, stream=True)
    error = assert_stream_error(response, "upstream_response_too_large")
    assert "1000000 bytes" in error["message"]
    assert len(response.content) < 1_200_000
    record = record_of(response)
    assert record.status == 200 and record.ok is False and record.error_code == "upstream_response_too_large"
    assert_still_serving(portal, master_key, upstream)


def test_one_big_stream_event_under_the_cap_is_forwarded_whole(portal, master_key, upstream, deployment, settings):
    # A single SSE line far above an HTTP client's default line buffer (e.g. a large tool call's arguments).
    settings.MAX_UPSTREAM_RESPONSE_BYTES = 5_000_000
    upstream.behaviour = Behaviour(reply="z" * 600_000)
    response = post(portal, master_key, stream=True)
    assert response.status_code == 200
    lines = events(response)
    assert lines[-1] == "data: [DONE]", lines[-1][:300]
    assert "z" * 600_000 in response.text
    assert record_of(response).ok
