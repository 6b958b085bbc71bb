"""The "Test" action on models (deployments): a one-token request, its latency or the upstream's error.

Driven through the real ASGI server (the admin's sync view calls the async upstream code there as in
production). Olivia is the operator; Vera is staff who may only view models.
"""

from __future__ import annotations

import html
import re

import httpx
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from gateway.models import CopilotAuth, Deployment, Provider
from tests.conftest import free_port, make_deployment, make_provider
from tests.mock_upstream import Behaviour

CHANGELIST = "/admin/gateway/deployment/"
SECRET = "sk-upstream-secret-value-123"  # the key make_provider stores


def browser_for(portal, user):
    login = Client()
    login.force_login(user)
    browser = httpx.Client(base_url=portal.url, cookies={"sessionid": login.cookies["sessionid"].value},
                           follow_redirects=True, timeout=60)
    browser.get(CHANGELIST)  # sets the CSRF cookie
    return browser


@pytest.fixture
def operator(portal):
    olivia = User.objects.create_superuser("olivia", "olivia@example.com", None)
    browser = browser_for(portal, olivia)
    yield browser
    browser.close()


def run_test_action(browser, *deployments):
    response = browser.post(
        CHANGELIST,
        data={"action": "test_call", "_selected_action": [str(d.pk) for d in deployments]},
        headers={"X-CSRFToken": browser.cookies["csrftoken"]},
    )
    assert response.status_code == 200
    found = re.findall(r'<li class="(success|error|warning|info)">(.*?)</li>', response.text, re.S)
    # Lowered for comparison (the provider's error texts vary in case).
    return [(level, html.unescape(text.strip()).lower()) for level, text in found], response.text


def test_a_working_model_shows_its_latency(operator, upstream):
    deployment = make_deployment(make_provider(upstream))

    messages, page = run_test_action(operator, deployment)

    ((level, text),) = messages
    assert level == "success"
    assert text.startswith("test-model → mock/mock-1: answered in ") and text.endswith(" ms.")
    (sent,) = upstream.requests_for("/chat/completions")
    assert sent.json["model"] == "mock-1" and sent.json["max_tokens"] == 1
    assert SECRET not in page


def test_an_upstream_error_shows_the_upstreams_message(operator, upstream):
    deployment = make_deployment(make_provider(upstream))
    upstream.behaviour = Behaviour(status=400, error_body={"error": {
        "message": "max_tokens is too small for this model", "type": "invalid_request_error", "code": None}})

    ((level, text),), _ = run_test_action(operator, deployment)

    assert level == "error"
    assert "test-model → mock/mock-1: failed after" in text
    assert "400" in text and "max_tokens is too small for this model" in text


def test_no_credential_is_revealed_even_when_the_upstream_echoes_it(operator, upstream):
    deployment = make_deployment(make_provider(upstream))
    upstream.behaviour = Behaviour(status=401, error_body={"error": {
        "message": f"Incorrect API key provided: {SECRET}. Header was 'Authorization: Bearer {SECRET}'.",
        "type": "invalid_request_error", "code": "invalid_api_key"}})

    ((level, text),), page = run_test_action(operator, deployment)

    assert level == "error" and "401" in text and "incorrect api key provided" in text
    assert SECRET not in text and SECRET not in page
    assert SECRET[:12] + SECRET[12:16] not in page


def test_an_unreachable_provider_is_reported(operator, upstream):
    provider = Provider.objects.create(name="gone", kind="openai_compatible", api_base=f"http://127.0.0.1:{free_port()}")
    deployment = make_deployment(provider, public_name="gone-model")

    ((level, text),), _ = run_test_action(operator, deployment)

    assert level == "error" and "502" in text and "could not reach provider 'gone'" in text


def test_several_models_are_tested_in_one_go(operator, upstream):
    good = make_deployment(make_provider(upstream), public_name="good-model")
    gone = Provider.objects.create(name="gone", kind="openai_compatible", api_base=f"http://127.0.0.1:{free_port()}")
    bad = make_deployment(gone, public_name="bad-model")

    messages, _ = run_test_action(operator, good, bad)

    assert sorted((level, text.split(":")[0]) for level, text in messages) == [
        ("error", "bad-model → gone/mock-1"), ("success", "good-model → mock/mock-1"),
    ]


def test_a_disabled_model_can_be_tested_before_it_is_enabled(operator, upstream):
    deployment = make_deployment(make_provider(upstream), enabled=False)

    ((level, _),), _ = run_test_action(operator, deployment)

    assert level == "success"


def test_a_copilot_model_is_tested_with_a_copilot_token(operator, github):
    provider = Provider.objects.create(name="copilot", kind="github_copilot")
    CopilotAuth.for_provider(provider).connect(github.issue_github_token(), source="device_flow")
    deployment = make_deployment(provider, public_name="copilot/gpt-4o", upstream_model="gpt-4o")

    ((level, text),), page = run_test_action(operator, deployment)

    assert level == "success", text
    (sent,) = github.calls("/chat/completions")
    assert sent.json["max_tokens"] == 1 and sent.headers["copilot-integration-id"] == "vscode-chat"
    (copilot_token,) = github.copilot_tokens
    assert copilot_token not in page


def test_a_copilot_model_that_is_not_connected_says_so(operator, github):
    provider = Provider.objects.create(name="copilot", kind="github_copilot")
    deployment = make_deployment(provider, public_name="copilot/gpt-4o", upstream_model="gpt-4o")

    ((level, text),), _ = run_test_action(operator, deployment)

    assert level == "error" and "503" in text and "connect github copilot" in text


def test_someone_who_may_only_view_models_cannot_run_it(portal, upstream):
    deployment = make_deployment(make_provider(upstream))
    vera = User.objects.create_user("vera", "vera@example.com", None, is_staff=True)
    vera.user_permissions.add(Permission.objects.get(codename="view_deployment"))

    as_vera = browser_for(portal, vera)
    assert 'value="test_call"' not in as_vera.get(CHANGELIST).text
    messages, _ = run_test_action(as_vera, deployment)
    as_vera.close()

    assert messages == [("warning", "no action selected.")]
    assert upstream.requests_for("/chat/completions") == []
    assert Deployment.objects.count() == 1
