"""A stream still running when the server's graceful shutdown time is over is cut by the portal, not by its
client: whatever its API (OpenAI chat, Anthropic Messages, OpenAI Responses), it ends with an error event in
that API's own shape and its usage record says `server_shutting_down`, never `client_disconnected`.

The portal's ASGI application is driven here as uvicorn drives it: the request's task is cancelled when the
graceful time runs out (a SIGTERM to gunicorn does the same, see test_restarts.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from django.conf import settings

from gateway.upstreams import passthrough
from tests.conftest import make_deployment, make_provider
from tests.mock_upstream import Behaviour
from tracking import recorder
from tracking.models import UsageRecord

HELLO = [{"role": "user", "content": "hi"}]


def scope_for(path: str) -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {settings.MASTER_KEY}".encode()), (b"content-type", b"application/json")]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000)}


async def stream_then(path: str, body: dict[str, Any], end: str) -> list[dict[str, Any]]:
    """Start a stream and let two deltas through; then, with `end="cut"`, cancel the request as the server does
    at the end of its graceful shutdown time, or with `end="leave"`, have the client disconnect (as uvicorn alone
    reports it: through `receive()`). The ASGI messages sent."""
    from portal.asgi import application

    sent: list[dict[str, Any]] = []
    streaming = asyncio.Event()
    leaves = streaming if end == "leave" else asyncio.Event()  # never set when cut: the client stays to the end
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await leaves.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if sum(b"delta" in m.get("body", b"") for m in sent) >= 2:
            streaming.set()

    request = asyncio.create_task(application(scope_for(path), receive, send))
    try:
        await asyncio.wait_for(streaming.wait(), 20)
        if end == "cut":
            request.cancel()
        await asyncio.wait_for(request, 20)  # answered, not re-raised: uvicorn moves on to the shutdown
    finally:
        await passthrough.instance.aclose()  # this loop's pooled connections end with it, as at a shutdown
    return sent


async def cut_by_shutdown(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    return await stream_then(path, body, "cut")


def last_event(sent: list[dict[str, Any]]) -> bytes:
    return [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")][-1]


def recorded(sent: list[dict[str, Any]]) -> Any:
    request_id = dict(sent[0]["headers"])[b"x-request-id"].decode()
    recorder.flush()
    return UsageRecord.objects.get(request_id=request_id)


@pytest.fixture
def slow_model(upstream, transactional_db):
    make_deployment(make_provider(upstream), "slow-model", "mock-slow")
    upstream.set_behaviour("mock-slow", Behaviour(chunks=100, chunk_delay=0.1))


def test_an_anthropic_stream_cut_by_shutdown_ends_with_anthropics_error_event_and_is_recorded_as_such(slow_model):
    sent = asyncio.run(cut_by_shutdown("/v1/messages", {"model": "slow-model", "max_tokens": 100,
                                                        "messages": HELLO, "stream": True}))

    assert sent[0]["status"] == 200
    kind, data = last_event(sent).decode().strip().split("\n", 1)
    assert kind == "event: error"
    error = orjson.loads(data.removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
    assert "restarting" in error["error"]["message"]
    assert recorded(sent).error_code == "server_shutting_down"


def test_a_responses_stream_cut_by_shutdown_ends_with_response_failed_and_is_recorded_as_such(slow_model):
    sent = asyncio.run(cut_by_shutdown("/v1/responses", {"model": "slow-model", "input": "hi", "stream": True}))

    kind, data = last_event(sent).decode().strip().split("\n", 1)
    assert kind == "event: response.failed"
    assert orjson.loads(data.removeprefix("data: "))["response"]["error"]["code"] == "server_shutting_down"
    assert recorded(sent).error_code == "server_shutting_down"


def test_a_chat_stream_cut_by_shutdown_ends_with_an_error_event_and_is_recorded_as_such(slow_model):
    sent = asyncio.run(cut_by_shutdown("/v1/chat/completions", {"model": "slow-model", "messages": HELLO,
                                                                "stream": True}))

    error = orjson.loads(last_event(sent).removeprefix(b"data: "))["error"]
    assert error["code"] == "server_shutting_down"
    assert recorded(sent).error_code == "server_shutting_down"


def test_under_a_server_that_does_not_report_lost_connections_a_client_that_leaves_still_ends_its_stream(
    slow_model, upstream
):
    """uvicorn alone (not the portal's worker) only says a client left through `receive()`: the portal listens
    for it then, and the stream is recorded as left by its client, not cut by a shutdown."""
    sent = asyncio.run(stream_then("/v1/chat/completions", {"model": "slow-model", "messages": HELLO,
                                                             "stream": True}, "leave"))

    assert sent[0]["status"] == 200
    assert b"[DONE]" not in last_event(sent) and b"error" not in last_event(sent)
    assert upstream.disconnected.wait(timeout=5)
    assert recorded(sent).error_code == "client_disconnected"
