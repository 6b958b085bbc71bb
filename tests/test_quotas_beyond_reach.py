"""A request larger than a limit by itself can never be admitted: it gets a 400 naming the limit and the field
to change, not a 429 telling it to wait (issue 17, item 6). A deployment it can never fit is skipped for the
others of its model; the 400 comes only when none could ever take it."""

from __future__ import annotations

from typing import Any

import httpx

from accounts.models import ApiKey
from tests.conftest import make_deployment, make_provider
from tests.personas import make_user

HELLO = [{"role": "user", "content": "hi"}]


def post_chat(portal: Any, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{portal.url}/v1/chat/completions",
                      json={"model": "test-model", "messages": HELLO, **body},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def key_with(**limits: Any) -> str:
    key, token = ApiKey.objects.issue(make_user("alice"), "ci")
    ApiKey.objects.filter(pk=key.pk).update(**limits)
    return token


def test_max_tokens_over_a_deployments_tpm_is_a_400_that_names_the_limit_and_the_field(portal, master_key, upstream,
                                                                                         transactional_db):
    make_deployment(make_provider(upstream), tpm=2000, max_wait_seconds=30)
    response = post_chat(portal, master_key, max_tokens=2**31)
    assert response.status_code == 400, response.text
    assert "retry-after" not in response.headers
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "context_length_exceeded", "max_tokens")
    assert "2000 tokens per minute" in error["message"] and "provider 'mock'" in error["message"]
    assert "at most 1991" in error["message"]  # what would fit: 2000 less the prompt's 9
    assert upstream.requests == []
    # Nothing was counted: a request that fits goes through at once.
    assert post_chat(portal, master_key, max_tokens=1991).status_code == 200


def test_max_tokens_over_a_keys_daily_tokens_is_a_400_not_a_days_wait(portal, upstream, transactional_db):
    make_deployment(make_provider(upstream))
    token = key_with(tokens_per_day=1000)
    response = post_chat(portal, token, max_completion_tokens=2**63 - 1)
    assert response.status_code == 400, response.text
    assert "retry-after" not in response.headers
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "max_completion_tokens")
    assert "1000 tokens per day" in error["message"] and "your API key" in error["message"]
    assert upstream.requests == []


def test_a_prompt_too_large_for_the_limit_names_the_messages(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), tpm=300)
    response = post_chat(portal, master_key, messages=[{"role": "user", "content": "word " * 400}], max_tokens=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages"


def test_without_max_tokens_the_assumed_completion_budget_is_what_to_set(portal, master_key, upstream,
                                                                         transactional_db, settings):
    settings.QUOTA_DEFAULT_COMPLETION_TOKENS = 256
    make_deployment(make_provider(upstream), tpm=200)
    response = post_chat(portal, master_key)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_tokens"
    assert "Set max_tokens to at most 191" in error["message"]
    assert post_chat(portal, master_key, max_tokens=191).status_code == 200


def test_a_deployment_the_request_can_never_fit_is_skipped_for_one_that_can(portal, master_key, upstream,
                                                                            transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, upstream_model="small", tpm=2000, priority=0)
    make_deployment(provider, upstream_model="large", tpm=100_000, priority=1)
    response = post_chat(portal, master_key, max_tokens=50_000)
    assert response.status_code == 200, response.text
    assert [r.json["model"] for r in upstream.requests] == ["large"]


def test_when_the_deployment_that_could_fit_it_is_used_up_the_429_is_about_that_one(portal, master_key, upstream,
                                                                                    transactional_db):
    """The wait and the limit in the 429 are those of the deployment that could take the request one day, not
    the minute of one that never could."""
    provider = make_provider(upstream)
    make_deployment(provider, upstream_model="small", tpm=2000, priority=0)
    make_deployment(provider, upstream_model="large", rpd=1, priority=1)
    assert post_chat(portal, master_key, max_tokens=50_000).status_code == 200
    refused = post_chat(portal, master_key, max_tokens=50_000)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "1 requests per day" in error["message"] and "2000" not in error["message"]
    assert [r.json["model"] for r in upstream.requests] == ["large"]
