"""Upstream faults end with the right status or an SSE error event, never a hang or a silent success."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.mock_upstream import Behaviour

HELLO = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.usefixtures("upstream_path")


def stream_lines(portal, key) -> list[str]:
    with httpx.stream(
        "POST", f"{portal.url}/v1/chat/completions",
        json={"model": "test-model", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {key}"}, timeout=30,
    ) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_a_stalled_stream_ends_with_an_error_event_and_closes_the_upstream(portal, master_key, upstream, deployment,
                                                                           settings):
    settings.STREAM_IDLE_TIMEOUT = 1
    upstream.behaviour = Behaviour(reply="a b c", chunk_delay=10)
    started = time.monotonic()
    lines = stream_lines(portal, master_key)
    assert time.monotonic() - started < 8
    assert "upstream_stream_stalled" in lines[-1]
    assert upstream.disconnected.wait(timeout=5)


def test_malformed_json_from_the_upstream_is_a_502(client, upstream, deployment):
    upstream.behaviour = Behaviour(malformed=True)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert e.value.status_code == 502


def test_a_malformed_sse_line_ends_the_stream_with_an_error_event(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply="a b c d", malformed=True)
    response = httpx.post(
        f"{portal.url}/v1/chat/completions",
        json={"model": "test-model", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {master_key}"}, timeout=30,
    )
    lines = [line for line in response.text.splitlines() if line]
    if response.status_code == 200:
        assert '"error"' in lines[-1]
    else:
        assert response.status_code == 502


def test_a_stream_cut_mid_body_ends_with_an_error_event(portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply="one two three four five six", disconnect_after_chunks=3)
    lines = stream_lines(portal, master_key)
    assert lines[-1] != "data: [DONE]"
    assert '"error"' in lines[-1]
