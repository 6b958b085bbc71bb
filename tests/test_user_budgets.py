"""A user's USD budget (their KeyPolicy's max_budget), shared by all of the user's keys: refused at the exact
boundary with 429 insufficient_quota naming the account's budget, beside each key's own budget; a change reaches
the keys at once; daily and monthly budgets start over; set and cleared through the management API; shown on
the key page and the admin; and held across two server processes sharing Redis.

As in tests/test_budgets.py, only completions are priced ($0.01 a token) and every request asks for and gets 3
tokens: each costs $0.03, estimated and really, so a budget is an exact number of requests."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from accounts.keys import load_entry
from accounts.models import ApiKey, KeyPolicy, micro_usd
from accounts.principal import KeyLimits
from gateway import clock, quota
from tests.personas import issue
from tests.processes import PortalProcess
from tests.test_budgets import post_chat, priced_deployment


def give_budget(user: Any, amount: str | None, duration: str = "day") -> KeyPolicy:
    policy = KeyPolicy.for_user(user)
    policy.max_budget = Decimal(amount) if amount is not None else None
    policy.budget_duration = duration
    policy.save()
    return policy


def key_with_budget(owner: Any, name: str, amount: str, duration: str = "day") -> str:
    return issue(owner, name, limits=KeyLimits(budget=micro_usd(Decimal(amount)), budget_period=duration))[1]


def statuses(url: str, key: str, n: int) -> list[int]:
    return [post_chat(url, key).status_code for _ in range(n)]


def error_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error: dict[str, Any] = response.json()["error"]
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    return error


# --- shared by the user's keys ---


def test_two_keys_of_one_user_share_the_budget_to_the_exact_boundary(portal, upstream, personas):
    priced_deployment(upstream)
    give_budget(personas.alice, "0.12")  # four requests, whichever key sends them
    _, laptop = issue(personas.alice, "laptop")
    _, phone = issue(personas.alice, "phone")
    _, bobs = issue(personas.bob, "bob's")
    assert statuses(portal.url, laptop, 2) + statuses(portal.url, phone, 2) == [200] * 4
    for key in (phone, laptop):
        refused = post_chat(portal.url, key)
        error = error_of(refused)
        assert "Your account's budget of $0.12 per day is spent; it resets at" in error["message"]
        assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert statuses(portal.url, bobs, 3) == [200] * 3  # another user's key is not touched
    assert len(upstream.requests) == 7


def test_a_keys_own_budget_and_its_users_budget_both_apply_whichever_is_spent_first(portal, upstream, personas):
    priced_deployment(upstream)
    give_budget(personas.alice, "0.12")
    capped = key_with_budget(personas.alice, "capped", "0.06")
    _, other = issue(personas.alice, "other")
    # The key's own budget runs out first: its refusal names the key.
    assert statuses(portal.url, capped, 2) == [200, 200]
    assert "Your API key's budget of $0.06 per day is spent" in error_of(post_chat(portal.url, capped))["message"]
    # The user's budget has $0.06 left, for any key of theirs.
    assert statuses(portal.url, other, 2) == [200, 200]
    assert "Your account's budget of $0.12 per day" in error_of(post_chat(portal.url, other))["message"]
    # A roomy key's budget does not lift the user's.
    roomy = key_with_budget(personas.alice, "roomy", "10")
    assert "Your account's budget" in error_of(post_chat(portal.url, roomy))["message"]
    assert len(upstream.requests) == 4


def test_the_users_spend_is_corrected_to_the_real_cost(portal, upstream, personas):
    priced_deployment(upstream)
    give_budget(personas.alice, "0.12")
    _, laptop = issue(personas.alice, "laptop")
    _, phone = issue(personas.alice, "phone")
    # Asked for 12 tokens ($0.12, the whole budget) but got 3 ($0.03): what is left pays for more requests, of
    # any key of the user's, once the correction lands (at once in-process, within QUOTA_SETTLE_SECONDS with
    # Redis).
    assert post_chat(portal.url, laptop, max_tokens=12).status_code == 200
    deadline = time.monotonic() + 5
    while (response := post_chat(portal.url, phone)).status_code == 429:
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.05)
    assert statuses(portal.url, phone, 3) == [200, 200, 429]


def test_a_keys_limits_carry_its_own_budget_and_its_users_each_once(personas):
    from accounts.models import ApiKeyModelLimit
    from accounts.principal import MASTER

    give_budget(personas.alice, "5", "month")
    key, _ = issue(personas.alice, "laptop", limits=KeyLimits(budget=micro_usd(Decimal(1))))
    ApiKeyModelLimit.objects.create(key=key, public_model="test-model", rpm=5)
    principal = load_entry(key.prefix, 0).principal
    limits = quota.key_limits(principal, "test-model")
    budgets = [(limit.scope, limit.scope_id, limit.name, limit.value) for limit in limits if limit.unit == "usd"]
    assert budgets == [("key", str(key.pk), "usd_total", 1_000_000),
                       ("user", str(personas.alice.pk), "usd_month", 5_000_000)]
    # The quota plans are cached by the tuple's identity: the same principal and model give the same one.
    assert quota.key_limits(principal, "test-model") is limits
    assert quota.key_limits(load_entry(key.prefix, 0).principal, "test-model") is limits
    assert quota.key_limits(MASTER, "test-model") == ()


# --- changes apply at once ---


def test_a_change_to_the_users_budget_reaches_their_keys_at_once(portal, upstream, personas):
    priced_deployment(upstream)
    _, key = issue(personas.alice, "laptop")
    assert post_chat(portal.url, key).status_code == 200  # the key is cached now, without a budget of the user
    policy = give_budget(personas.alice, "0.06")
    assert statuses(portal.url, key, 3) == [200, 200, 429]
    policy.max_budget = Decimal("0.09")
    policy.save()
    assert statuses(portal.url, key, 2) == [200, 429]
    policy.delete()  # no policy, no budget of the user's
    assert statuses(portal.url, key, 3) == [200] * 3


def test_new_self_served_keys_keep_the_policys_limits_but_not_its_budget(personas):
    KeyPolicy.objects.create(user=personas.alice, rpm=7, max_budget=Decimal(5), budget_duration="month")
    browser = Client()
    browser.force_login(personas.alice)
    assert browser.post("/keys/new/", {"name": "laptop", "expires_in": "30"}).status_code == 201
    key = ApiKey.objects.get(name="laptop")
    assert key.key_limits() == KeyLimits(rpm=7)
    principal = load_entry(key.prefix, 0).principal
    assert principal is not None
    assert principal.user_budget == KeyLimits(budget=5_000_000, budget_period="month")


# --- periods ---


def test_a_users_monthly_budget_starts_over_at_the_end_of_the_month(portal, upstream, personas):
    priced_deployment(upstream)
    give_budget(personas.alice, "0.06", "month")
    _, laptop = issue(personas.alice, "laptop")
    _, phone = issue(personas.alice, "phone")
    assert [post_chat(portal.url, laptop).status_code, post_chat(portal.url, phone).status_code] == [200, 200]
    refused = post_chat(portal.url, laptop)
    assert "Your account's budget of $0.06 per month is spent; it resets at" in error_of(refused)["message"]
    retry = int(refused.headers["retry-after"])
    assert 0 < retry <= 31 * 86400
    clock.advance(retry - 5)  # the last seconds of the month: still spent
    assert post_chat(portal.url, phone).status_code == 429
    clock.advance(6)  # the first second of the next month
    assert statuses(portal.url, phone, 3) == [200, 200, 429]


def test_a_keys_monthly_budget_starts_over_at_the_end_of_the_month(portal, upstream, personas):
    priced_deployment(upstream)
    key = key_with_budget(personas.alice, "laptop", "0.06", "month")
    assert statuses(portal.url, key, 2) == [200, 200]
    refused = post_chat(portal.url, key)
    assert "Your API key's budget of $0.06 per month is spent; it resets at" in error_of(refused)["message"]
    retry = int(refused.headers["retry-after"])
    assert 0 < retry <= 31 * 86400
    clock.advance(retry - 5)
    assert post_chat(portal.url, key).status_code == 429
    clock.advance(6)
    assert statuses(portal.url, key, 3) == [200, 200, 429]


def test_a_users_total_budget_never_resets_and_its_count_survives_the_counter_purge(portal, upstream, personas):
    from gateway.models import DailyCounter

    priced_deployment(upstream)
    give_budget(personas.alice, "0.03", "total")
    _, key = issue(personas.alice, "laptop")
    assert statuses(portal.url, key, 2) == [200, 429]
    counter = f"user:{personas.alice.pk}:usd_total"
    deadline = time.monotonic() + 5
    while not DailyCounter.objects.filter(key=counter).exists():  # the call settles just after its answer
        assert time.monotonic() < deadline
        quota.ledger.flush()
        time.sleep(0.05)
    clock.advance(60 * 86400)
    quota.reset_daily_counters()
    assert DailyCounter.objects.filter(key=counter).values_list("value", flat=True).get() == 30_000
    refused = post_chat(portal.url, key)
    assert "retry-after" not in refused.headers
    assert "Your account's budget of $0.03 in total is spent; it does not reset" in error_of(refused)["message"]


# --- the management API ---


@pytest.fixture
def master() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {settings.MASTER_KEY}")


def patch(client: Client, user: Any, data: dict[str, Any]) -> Any:
    user_id = user if isinstance(user, int) else user.pk
    return client.patch(f"/api/users/{user_id}/", json.dumps(data), content_type="application/json")


def test_the_management_api_sets_and_clears_a_users_budget(personas, master):
    key, _ = issue(personas.alice, "laptop")
    response = patch(master, personas.alice, {"max_budget": 5, "budget_duration": "30d"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["username"], body["max_budget"], body["budget_duration"], body["spend"],
            body["budget_remaining"]) == ("alice", 5.0, "month", 0.0, 5.0)
    principal = load_entry(key.prefix, 0).principal
    assert principal is not None and principal.user_budget == KeyLimits(budget=5_000_000, budget_period="month")
    users = {u["username"]: u for u in master.get("/api/users/").json()["results"]}
    assert (users["alice"]["max_budget"], users["alice"]["budget_remaining"]) == (5.0, 5.0)
    assert (users["bob"]["max_budget"], users["bob"]["spend"], users["bob"]["budget_remaining"]) == (None, None, None)
    # A field left out stays as it is; null takes the budget away (and a null duration means "never resets").
    assert patch(master, personas.alice, {"budget_duration": "1d"}).json()["max_budget"] == 5.0
    assert KeyPolicy.objects.get(user=personas.alice).budget_duration == "day"
    cleared = patch(master, personas.alice, {"max_budget": None, "budget_duration": None}).json()
    assert (cleared["max_budget"], cleared["budget_duration"], cleared["budget_remaining"]) == (None, "total", None)
    principal = load_entry(key.prefix, 0).principal
    assert principal is not None and principal.user_budget is None


def test_the_management_api_reads_one_user_as_the_list_shows_them(personas, master):
    issue(personas.alice, "laptop")
    patch(master, personas.alice, {"max_budget": 2, "budget_duration": "1d"})
    one = master.get(f"/api/users/{personas.alice.pk}/")
    assert one.status_code == 200, one.content
    listed = {u["username"]: u for u in master.get("/api/users/").json()["results"]}
    assert one.json() == listed["alice"]
    assert (one.json()["keys"], one.json()["max_budget"], one.json()["budget_remaining"]) == (1, 2.0, 2.0)
    assert master.get("/api/users/999999/").status_code == 404
    alice = Client()
    alice.force_login(personas.alice)
    assert alice.get(f"/api/users/{personas.alice.pk}/").status_code == 403


@pytest.mark.parametrize("duration", ["7d", "weekly", ""])
def test_the_management_api_refuses_a_bad_budget_duration_naming_the_accepted_ones(personas, master, duration):
    response = patch(master, personas.alice, {"max_budget": 5, "budget_duration": duration})
    assert response.status_code == 400
    message = response.json()["budget_duration"][0]
    assert "1d, 24h, day, 30d, 1mo, month, total" in message
    assert not KeyPolicy.objects.filter(user=personas.alice).exists()


def test_the_management_api_refuses_a_negative_budget_and_non_operators(personas, master):
    assert patch(master, personas.alice, {"max_budget": -1}).status_code == 400
    assert patch(master, personas.alice, {"max_budget": 5}).status_code == 200
    alice = Client()
    alice.force_login(personas.alice)
    assert patch(alice, personas.alice, {"max_budget": 500}).status_code == 403
    assert patch(master, 999_999, {"max_budget": 5}).status_code == 404
    assert KeyPolicy.objects.get(user=personas.alice).max_budget == Decimal(5)


def test_a_budget_set_through_the_api_refuses_the_users_cached_keys_at_once(portal, upstream, personas, master):
    priced_deployment(upstream)
    _, key = issue(personas.alice, "laptop")
    assert post_chat(portal.url, key).status_code == 200
    assert patch(master, personas.alice, {"max_budget": 0.03, "budget_duration": "1d"}).status_code == 200
    assert statuses(portal.url, key, 2) == [200, 429]
    assert patch(master, personas.alice, {"max_budget": None}).status_code == 200
    assert post_chat(portal.url, key).status_code == 200


# --- where it shows ---


def test_the_key_list_shows_what_is_left_of_the_users_budget(portal, upstream, personas):
    priced_deployment(upstream)
    browser = Client()
    browser.force_login(personas.alice)
    assert "Your account's budget" not in browser.get("/keys/").content.decode()
    give_budget(personas.alice, "0.12")
    _, key = issue(personas.alice, "laptop")
    assert post_chat(portal.url, key).status_code == 200
    page = browser.get("/keys/").content.decode()
    assert "shared by all your keys: budget left: $0.09 of $0.12 per day (resets " in page


def test_the_admins_user_page_shows_the_users_budget_spent_and_left(portal, upstream, personas):
    priced_deployment(upstream)
    give_budget(personas.alice, "0.12")
    _, key = issue(personas.alice, "laptop")
    assert post_chat(portal.url, key).status_code == 200
    operator = Client()
    operator.force_login(personas.operator)
    page = operator.get(f"/admin/auth/user/{personas.alice.pk}/change/").content.decode()
    assert "The user&#x27;s budget, shared by all their keys" in page
    assert "$0.03 spent, $0.09 left of $0.12 per day (resets " in page


# --- two processes on Redis ---


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL: without Redis a budget is per process")
def test_two_server_processes_and_two_keys_never_spend_past_the_users_budget(upstream, transactional_db, personas):
    priced_deployment(upstream)
    give_budget(personas.alice, "0.30")  # ten requests
    keys = [issue(personas.alice, name)[1] for name in ("laptop", "phone")]
    with PortalProcess() as one, PortalProcess() as two:
        calls = [(url, key) for url in (one.url, two.url) for key in keys] * 10
        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(lambda call: post_chat(*call).status_code, calls))
    assert codes.count(200) == 10
    assert codes.count(429) == 30
    assert len(upstream.requests) == 10
