"""Provider quotas: exact limits under concurrency, daily windows, parking, waiting, honest 429s."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from django.conf import settings

from gateway import clock, quota
from tests.conftest import make_deployment, make_provider
from tests.mock_upstream import Behaviour

HELLO = [{"role": "user", "content": "hi"}]

GEMINI_PER_DAY_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
        ],
    }
}


def post_chat(portal, key, model="test-model", stream=False, **extra) -> httpx.Response:
    return httpx.post(
        f"{portal.url}/v1/chat/completions",
        json={"model": model, "messages": HELLO, "stream": stream, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def burst(portal, key, n: int, model: str = "test-model") -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: post_chat(portal, key, model), range(n)))


def test_an_rpm_limit_lets_exactly_that_many_through_a_concurrent_burst(portal, master_key, upstream,
                                                                       transactional_db):
    make_deployment(make_provider(upstream), rpm=10)
    responses = burst(portal, master_key, 50)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 40
    assert len(upstream.requests) == 10
    refused = next(r for r in responses if r.status_code == 429)
    # A minute, counted in whole seconds and never early: up to 61 s.
    assert 1 <= int(refused.headers["retry-after"]) <= 61
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "requests"
    assert "test-model" in error["message"] and "10 requests per minute" in error["message"]


def test_successful_responses_carry_rate_limit_headers(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=5, rpd=100)
    first = post_chat(portal, master_key)
    second = post_chat(portal, master_key)
    assert first.headers["x-ratelimit-limit-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert second.headers["x-ratelimit-remaining-requests"] == "3"
    assert second.headers["x-ratelimit-reset-requests"].endswith("s")


def test_requests_admitted_from_a_workers_lease_count_down_in_their_headers(portal, master_key, upstream,
                                                                           transactional_db):
    """A roomy limit and a busy worker: with Redis, it admits some of these from a block it reserved (without
    Redis, all from the in-process store); either way each response tells what is left after it."""
    from tests.quota_redis import script_calls

    make_deployment(make_provider(upstream), rpm=100_000, rpd=1_000_000)
    post_chat(portal, master_key)  # the day's counter seeded
    before = script_calls() if settings.REDIS_URL else 0
    remaining = [post_chat(portal, master_key).headers["x-ratelimit-remaining-requests"] for _ in range(12)]
    assert remaining == [str(99_998 - i) for i in range(12)]
    if settings.REDIS_URL:
        # The 8th request within a second asked for a lease of 4: the next ones came from it.
        assert script_calls() - before < 12


def test_the_token_headers_describe_the_tightest_token_limit(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), tpm=100_000, tpd=5_000)
    body = {"model": "test-model", "messages": HELLO, "max_tokens": 100}
    response = post_chat(portal, master_key, max_tokens=100)
    assert response.status_code == 200
    # The day's 5,000 tokens leave less room than the minute's 100,000: the headers speak of the day.
    assert response.headers["x-ratelimit-limit-tokens"] == "5000"
    assert response.headers["x-ratelimit-remaining-tokens"] == str(5_000 - quota.estimate_tokens(body))
    assert response.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert "x-ratelimit-limit-requests" not in response.headers  # no request limit to speak of


def test_the_sliding_window_frees_a_slot_a_minute_after_it_was_used(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=2)
    assert [post_chat(portal, master_key).status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(30)  # half a minute later: still the same sliding minute
    assert post_chat(portal, master_key).status_code == 429
    clock.advance(31)
    assert post_chat(portal, master_key).status_code == 200


def test_a_daily_limit_is_insufficient_quota_until_midnight_in_the_providers_zone(portal, master_key, upstream,
                                                                                 transactional_db):
    make_deployment(make_provider(upstream, reset_timezone="America/Los_Angeles"), rpd=2)
    assert [post_chat(portal, master_key).status_code for _ in range(2)] == [200, 200]
    refused = post_chat(portal, master_key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "2 requests per day" in error["message"] and "America/Los_Angeles" in error["message"]
    seconds_to_reset = int(refused.headers["retry-after"])
    assert 0 < seconds_to_reset <= 86400
    clock.advance(seconds_to_reset + 1)
    assert post_chat(portal, master_key).status_code == 200


def test_daily_counts_come_back_from_the_database_when_the_fast_store_is_lost(portal, master_key, upstream,
                                                                             transactional_db):
    make_deployment(make_provider(upstream), rpd=3)
    assert all(post_chat(portal, master_key).status_code == 200 for _ in range(3))
    quota.ledger.flush()
    quota.store().clear()  # what a restart does to the in-process store (or a Redis flush)
    assert post_chat(portal, master_key).status_code == 429


def test_a_shared_pool_limits_its_deployments_together(portal, master_key, upstream, transactional_db):
    from gateway.models import QuotaPool

    pool = QuotaPool.objects.create(name="openrouter-free", rpd=3)
    provider = make_provider(upstream)
    make_deployment(provider, public_name="a", upstream_model="a", pool=pool)
    make_deployment(provider, public_name="b", upstream_model="b", pool=pool)
    codes = [post_chat(portal, master_key, model=m).status_code for m in ("a", "b", "a", "b")]
    assert codes == [200, 200, 200, 429]
    assert "shared pool 'openrouter-free'" in post_chat(portal, master_key, model="a").json()["error"]["message"]


def test_an_exhausted_deployment_is_skipped_for_the_next_one(portal, master_key, upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, upstream_model="primary", rpm=1, priority=0)
    make_deployment(provider, upstream_model="secondary", priority=1)
    post_chat(portal, master_key)
    post_chat(portal, master_key)
    assert [r.json["model"] for r in upstream.requests] == ["primary", "secondary"]


def test_a_per_day_429_from_gemini_parks_the_deployment_until_its_reset(portal, master_key, upstream,
                                                                       transactional_db):
    provider = make_provider(upstream, reset_timezone="America/Los_Angeles")
    make_deployment(provider, upstream_model="primary", priority=0)
    make_deployment(provider, upstream_model="secondary", priority=1)
    upstream.set_behaviour("primary", Behaviour(status=429, error_body=GEMINI_PER_DAY_429))
    assert post_chat(portal, master_key).status_code == 200
    assert post_chat(portal, master_key).status_code == 200
    # The primary was asked once; after its per-day 429 it is parked, not retried every request.
    assert [r.json["model"] for r in upstream.requests] == ["primary", "secondary", "secondary"]
    clock.advance(30 * 3600)  # past midnight in Los Angeles
    upstream.set_behaviour("primary", None)
    post_chat(portal, master_key)
    assert upstream.requests[-1].json["model"] == "primary"


def test_a_per_minute_429_parks_the_deployment_for_the_delay_it_asked(portal, master_key, upstream,
                                                                     transactional_db):
    make_deployment(make_provider(upstream))
    upstream.behaviour = Behaviour(status=429, headers={"Retry-After": "20"})
    first = post_chat(portal, master_key)
    assert first.status_code == 429 and first.headers["retry-after"] == "20"
    upstream.behaviour = Behaviour()
    second = post_chat(portal, master_key)
    assert second.status_code == 429  # answered by us: the provider is not asked again yet
    assert 1 <= int(second.headers["retry-after"]) <= 20
    assert len(upstream.requests) == 1
    clock.advance(21)
    assert post_chat(portal, master_key).status_code == 200


def test_repeated_failures_back_off_but_not_forever(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream))
    upstream.behaviour = Behaviour(status=503)
    assert post_chat(portal, master_key).status_code == 502
    assert post_chat(portal, master_key).status_code == 502
    assert post_chat(portal, master_key).status_code == 429  # parked after the second failure
    assert len(upstream.requests) == 2
    upstream.behaviour = Behaviour()
    clock.advance(2)
    assert post_chat(portal, master_key).status_code == 200


def test_a_token_estimate_is_corrected_by_the_real_usage(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), tpm=1000)
    assert post_chat(portal, master_key, max_tokens=900).status_code == 200
    # The estimate (prompt + 900) was replaced by the mock's real usage (a few tokens), so 900 fit again.
    deadline = time.monotonic() + 5
    while (response := post_chat(portal, master_key, max_tokens=900)).status_code == 429:
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.05)
    assert response.status_code == 200
    refused = post_chat(portal, master_key, max_tokens=990)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"


def test_a_burst_waits_for_slots_when_the_model_allows_waiting(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=2, max_wait_seconds=300)
    stop = threading.Event()

    def tick() -> None:  # a minute passes every 0.4 s of real time
        while not stop.wait(0.4):
            clock.advance(61)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        responses = burst(portal, master_key, 6)
    finally:
        stop.set()
        ticker.join()
    assert [r.status_code for r in responses] == [200] * 6
    assert len(upstream.requests) == 6


def test_without_waiting_a_burst_is_rejected_at_once(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=2)
    started = time.monotonic()
    statuses = sorted(r.status_code for r in burst(portal, master_key, 6))
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert time.monotonic() - started < 5


def test_a_stream_that_fails_after_its_first_chunk_ends_with_an_error_event(portal, master_key, client, upstream,
                                                                            deployment):
    upstream.behaviour = Behaviour(reply="one two three four five", disconnect_after_chunks=2)
    with httpx.stream(
        "POST", f"{portal.url}/v1/chat/completions",
        json={"model": "test-model", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {master_key}"},
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] != "data: [DONE]"
    assert '"error"' in lines[-1]
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="test-model", messages=HELLO, stream=True):
            pass


def test_imported_cross_name_fallbacks_are_honoured(portal, master_key, upstream, transactional_db):
    from gateway.models import ConfigSetting

    provider = make_provider(upstream)
    make_deployment(provider, public_name="big", upstream_model="big")
    make_deployment(provider, public_name="small", upstream_model="small")
    ConfigSetting.objects.create(key="router_settings", value={"fallbacks": [{"big": ["small"]}]})
    upstream.set_behaviour("big", Behaviour(status=500))
    response = post_chat(portal, master_key, model="big")
    assert response.status_code == 200
    assert [r.json["model"] for r in upstream.requests] == ["big", "small"]


def test_a_key_holder_reads_the_remaining_quota_per_model(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=10, rpd=50)
    post_chat(portal, master_key)
    response = httpx.get(f"{portal.url}/v1/quota", headers={"Authorization": f"Bearer {master_key}"})
    assert response.status_code == 200
    [model] = response.json()["data"]
    assert model["model"] == "test-model"
    limits = {item["limit_name"]: item for item in model["deployments"][0]["limits"]}
    assert limits["rpm"]["used"] == 1 and limits["rpm"]["remaining"] == 9
    assert limits["rpd"]["used"] == 1 and limits["rpd"]["resets_at"]


def user_key(**limits):
    from django.contrib.auth.models import User

    from accounts.models import ApiKey
    from accounts.principal import KeyLimits

    owner = User.objects.create_user("alice", password="pw-alice-12345")
    return ApiKey.objects.issue(owner, "ci", limits=KeyLimits(**limits))


def test_a_keys_own_rpm_is_enforced_and_the_master_key_bypasses_it(portal, master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=100)
    _, token = user_key(rpm=2)
    assert [post_chat(portal, token).status_code for _ in range(3)] == [200, 200, 429]
    refused = post_chat(portal, token)
    assert "your API key" in refused.json()["error"]["message"]
    assert post_chat(portal, master_key).status_code == 200  # the master key ignores key limits


def test_a_keys_daily_token_budget_is_insufficient_quota(portal, upstream, transactional_db):
    make_deployment(make_provider(upstream))
    _, token = user_key(tokens_per_day=600)
    assert post_chat(portal, token, max_tokens=500).status_code == 200
    time.sleep(0.3)  # the real usage replaces the estimate when the call ends
    # Its estimate (9 for the prompt + 590) fits the budget by itself, not on top of what the first one used.
    refused = post_chat(portal, token, max_tokens=590)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"


def test_the_key_limit_is_counted_once_even_when_a_deployment_fails_over(portal, upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, upstream_model="primary", priority=0)
    make_deployment(provider, upstream_model="secondary", priority=1)
    upstream.set_behaviour("primary", Behaviour(status=503))
    _, token = user_key(rpm=2)
    assert [post_chat(portal, token).status_code for _ in range(2)] == [200, 200]
    assert post_chat(portal, token).status_code == 429


def test_quota_shows_the_callers_key_limits_only(portal, upstream, transactional_db):
    make_deployment(make_provider(upstream))
    _, token = user_key(rpm=5, rpd=100)
    post_chat(portal, token)
    response = httpx.get(f"{portal.url}/v1/quota", headers={"Authorization": f"Bearer {token}"})
    [model] = response.json()["data"]
    limits = {item["limit_name"]: item for item in model["key_limits"]}
    assert limits["rpm"]["remaining"] == 4
    assert limits["rpd"]["used"] == 1
