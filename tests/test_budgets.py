"""USD budgets of API keys: refused at the exact boundary with 429 insufficient_quota, never spent by a free
deployment, started over at the period's end, and held across two server processes sharing Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.conf import settings

from gateway import clock, quota
from tests.conftest import make_deployment, make_provider
from tests.processes import PortalProcess

HELLO = [{"role": "user", "content": "hi"}]
# Only completions are priced, at $0.01 a token, and every request asks for (and gets: the mock's reply is
# "Hello from mock") exactly 3 tokens: each costs $0.03 estimated and really, so a budget is an exact number of
# requests.


def priced_deployment(upstream: Any, **fields: Any) -> Any:
    return make_deployment(make_provider(upstream), billing="paid", input_price_per_mtok=0,
                           output_price_per_mtok=10_000, **fields)


def budget_key(amount: str, duration: str = "day") -> str:
    from accounts.models import ApiKey, micro_usd
    from accounts.principal import KeyLimits
    from tests.personas import make_user

    owner = make_user("alice", self_serve=True)
    limits = KeyLimits(budget=micro_usd(Decimal(amount)), budget_period=duration)
    return ApiKey.objects.issue(owner, "ci", limits=limits)[1]


def post_chat(url: str, key: str, max_tokens: int = 3) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions",
                      json={"model": "test-model", "messages": HELLO, "max_tokens": max_tokens},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_budget_admits_exactly_what_it_pays_for_then_refuses_until_midnight(portal, upstream, transactional_db):
    priced_deployment(upstream)
    key = budget_key("0.12")  # four requests
    assert [post_chat(portal.url, key).status_code for _ in range(4)] == [200] * 4
    refused = post_chat(portal.url, key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    assert "Your API key's budget of $0.12 per day is spent" in error["message"] and "resets at" in error["message"]
    retry = int(refused.headers["retry-after"])
    assert 0 < retry <= 86400
    assert len(upstream.requests) == 4
    clock.advance(retry + 1)  # past midnight: the budget starts over
    assert post_chat(portal.url, key).status_code == 200


def test_a_request_whose_estimate_alone_exceeds_the_budget_is_insufficient_quota(portal, upstream,
                                                                                  transactional_db):
    priced_deployment(upstream)
    key = budget_key("0.02")
    refused = post_chat(portal.url, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert upstream.requests == []


def test_a_free_deployment_never_spends_a_budget(portal, upstream, transactional_db):
    make_deployment(make_provider(upstream), billing="free", input_price_per_mtok=1000, output_price_per_mtok=1000)
    key = budget_key("0.01")
    assert [post_chat(portal.url, key).status_code for _ in range(5)] == [200] * 5


def test_a_total_budget_never_resets_and_sends_no_retry_after(portal, upstream, transactional_db):
    priced_deployment(upstream)
    key = budget_key("0.06", "total")
    assert [post_chat(portal.url, key).status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(40 * 86400)
    refused = post_chat(portal.url, key)
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    assert "$0.06 in total is spent; it does not reset" in refused.json()["error"]["message"]


def test_the_spend_is_corrected_to_the_real_cost(portal, upstream, transactional_db):
    priced_deployment(upstream)
    key = budget_key("0.12")
    # Asked for 12 tokens ($0.12, the whole budget) but got 3 ($0.03): what is left pays for another request once
    # the correction lands (at once in-process, within QUOTA_SETTLE_SECONDS with Redis).
    assert post_chat(portal.url, key, max_tokens=12).status_code == 200
    deadline = time.monotonic() + 5
    while (response := post_chat(portal.url, key)).status_code == 429:
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.05)
    assert response.status_code == 200


def test_a_total_budgets_durable_count_survives_the_counter_purge(transactional_db):
    from gateway.models import DailyCounter

    quota.ledger.add([("key:999999:usd_total", quota.limits.TOTAL_START, 5000),
                      ("key:999999:usd_day", quota.limits.TOTAL_START, 5000)])
    quota.ledger.flush()
    quota.reset_daily_counters()
    kept = DailyCounter.objects.filter(key__startswith="key:999999:").values_list("key", "value")
    assert list(kept) == [("key:999999:usd_total", 5000)]


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL: without Redis a budget is per process")
def test_two_server_processes_never_spend_past_the_budget(upstream, transactional_db):
    priced_deployment(upstream)
    key = budget_key("0.30")  # ten requests
    with PortalProcess() as one, PortalProcess() as two:
        with ThreadPoolExecutor(max_workers=30) as pool:
            statuses = list(pool.map(lambda url: post_chat(url, key).status_code, [one.url, two.url] * 20))
    # Every estimate equals the real cost, so not even one request's estimate goes past the budget.
    assert statuses.count(200) == 10
    assert statuses.count(429) == 30
    assert len(upstream.requests) == 10


def test_the_key_page_shows_what_is_left_of_the_budget(portal, upstream, transactional_db):
    from django.contrib.auth.models import User
    from django.test import Client

    from accounts.models import ApiKey

    priced_deployment(upstream)
    key = budget_key("0.12")
    assert post_chat(portal.url, key).status_code == 200
    browser = Client()
    browser.force_login(User.objects.get(username="alice"))
    page = browser.get(f"/keys/{ApiKey.objects.get().pk}/").content.decode()
    assert "budget left: $0.09 of $0.12 per day (resets " in page


def test_a_per_model_row_does_not_count_a_second_budget(transactional_db):
    from accounts.keys import load_entry
    from accounts.models import ApiKey, ApiKeyModelLimit

    budget_key("0.12")
    key = ApiKey.objects.get()
    ApiKeyModelLimit.objects.create(key=key, public_model="test-model", rpm=5)
    principal = load_entry(key.prefix, 0).principal
    limits = quota.key_limits(principal, "test-model")
    assert [(limit.scope, limit.name) for limit in limits if limit.unit == "usd"] == [("key", "usd_day")]


def test_a_request_served_by_a_fallback_deployment_spends_its_real_cost_once(portal, upstream, transactional_db):
    from tests.mock_upstream import Behaviour

    provider = make_provider(upstream)
    for priority, model in enumerate(["failing", "mock-1"]):
        make_deployment(provider, upstream_model=model, priority=priority, billing="paid", input_price_per_mtok=0,
                        output_price_per_mtok=10_000)
    upstream.set_behaviour("failing", Behaviour(status=500))
    key = budget_key("0.12")  # four requests, wherever they are served
    statuses = [post_chat(portal.url, key).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
