"""The playground's relay: staff only, CSRF-protected, and a real call through the portal's own /v1 (the quota
counts it, refusals come back as they are). The browser side is in tests/test_browser_playground.py."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from tests.conftest import make_deployment, make_provider
from tracking import recorder
from tracking.models import UsageRecord

PAGE = "admin:gateway_playground"
CHAT = "admin:gateway_playground_chat"
HELLO = {"model": "test-model", "messages": [{"role": "user", "content": "Say hello"}]}


def events(body: bytes) -> list[tuple[str, object]]:
    """(event name, data) of an SSE body; unnamed events are "message"."""
    out = []
    for block in body.decode().split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data:
            out.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return out


@pytest.fixture
def operator_session(portal, personas):
    """An httpx client logged in as the operator on the live portal, and the page's CSRF token."""
    django_client = Client()
    django_client.force_login(personas.operator)
    session = httpx.Client(base_url=portal.url, cookies={"sessionid": django_client.cookies["sessionid"].value},
                           timeout=30)
    page = session.get(reverse(PAGE))
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    yield session, token
    session.close()


def test_only_staff_may_open_or_call_the_playground(db, personas):
    for user in (personas.alice, personas.charlie):
        browser = Client()
        browser.force_login(user)
        assert browser.get(reverse(PAGE)).status_code == 302  # to the admin's login
        assert browser.post(reverse(CHAT), HELLO, content_type="application/json").status_code == 302
    assert Client().get(reverse(PAGE)).status_code == 302


def test_the_relay_refuses_a_post_without_the_csrf_token(db, personas):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(personas.operator)

    assert browser.post(reverse(CHAT), HELLO, content_type="application/json").status_code == 403


def test_the_relay_refuses_a_model_that_is_not_enabled(db, personas, upstream):
    make_deployment(make_provider(upstream), enabled=False)
    browser = Client()
    browser.force_login(personas.operator)

    response = browser.post(reverse(CHAT), HELLO, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Choose an enabled model."


def test_the_relay_streams_the_v1_answer_between_its_meta_and_summary(operator_session, upstream):
    make_deployment(make_provider(upstream), rpm=5)
    session, token = operator_session

    response = session.post(reverse(CHAT), json={**HELLO, "system": "Be brief.", "max_tokens": 50},
                            headers={"X-CSRFToken": token})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = events(response.content)
    (first, meta), (last, summary) = stream[0], stream[-1]
    assert first == "meta" and meta["status"] == 200
    assert meta["ratelimit"]["x-ratelimit-limit-requests"] == "5"
    assert meta["ratelimit"]["x-ratelimit-remaining-requests"] == "4"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for n, c in stream[1:-1]
                   if n == "message" and c != "[DONE]" and c["choices"])
    assert text == "Hello from mock"
    assert last == "summary" and summary["ttft_ms"] <= summary["total_ms"]
    assert summary["record"]["deployment"] == "test-model → mock/mock-1"
    recorder.flush()
    record = UsageRecord.objects.get(request_id=meta["request_id"])
    assert summary["record"]["completion_tokens"] == record.completion_tokens
    assert record.tags["source"] == "playground"
    sent = upstream.requests_for()[-1]
    assert sent.json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert settings.MASTER_KEY not in response.text


def test_a_quota_refusal_comes_back_as_the_v1_path_gave_it(operator_session, upstream):
    make_deployment(make_provider(upstream), rpm=1)
    session, token = operator_session
    assert session.post(reverse(CHAT), json=HELLO, headers={"X-CSRFToken": token}).status_code == 200

    stream = events(session.post(reverse(CHAT), json=HELLO, headers={"X-CSRFToken": token}).content)

    (_, meta), (name, failure) = stream[0], stream[1]
    assert meta["status"] == 429 and int(meta["retry_after"]) > 0
    assert name == "failure" and failure["code"] == "rate_limit_exceeded"


def test_an_unreachable_v1_is_told_on_the_page_not_dropped(operator_session, upstream, settings):
    from tests.conftest import free_port

    make_deployment(make_provider(upstream))
    settings.PLAYGROUND_API_BASE = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    session, token = operator_session

    stream = events(session.post(reverse(CHAT), json=HELLO, headers={"X-CSRFToken": token}).content)

    name, failure = stream[0]
    assert name == "failure" and failure["code"] == "playground_unreachable"
    assert stream[-1][0] == "summary"
