"""Keys compared in constant time, guessing keys throttled per IP, and one key holder never seeing another's.

alice and bob each hold a key; charlie has none; the operator runs the place. Requests from a made-up
address (203.0.113.x, a documentation range) reach the live portal through X-Forwarded-For, which uvicorn
believes from 127.0.0.1 exactly as it believes Nginx in production (FORWARDED_ALLOW_IPS).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import pytest
from django.test import Client

from accounts.models import ApiKey, digest, pepper
from accounts.throttle import SlidingWindow, key_failures
from gateway import clock
from tests.conftest import make_deployment, make_provider
from tests.personas import issue
from tracking import recorder
from tracking.models import UsageRecord

GUESSER = "203.0.113.7"
NEIGHBOUR = "203.0.113.8"
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def models(upstream: Any, transactional_db: Any) -> Any:
    return make_deployment(make_provider(upstream), public_name="test-model")


@pytest.fixture
def limit(settings: Any) -> int:
    settings.AUTH_FAILURE_LIMIT = 5
    settings.AUTH_FAILURE_WINDOW = 60
    return 5


# A failure is remembered for the window and at most one slice of it more (accounts.throttle.SlidingWindow).
LONGEST_BLOCK = 60 + 60 / SlidingWindow.SLICES


def get_models(portal: Any, key: str | None, ip: str = GUESSER) -> httpx.Response:
    headers = {"X-Forwarded-For": ip}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.get(f"{portal.url}/v1/models", headers=headers, timeout=30)


def wrong_key(n: int = 0) -> str:
    return f"sk-abcdefgh.{'x' * 30}{n:05d}"


def guess(portal: Any, times: int, ip: str = GUESSER) -> list[int]:
    return [get_models(portal, wrong_key(n), ip).status_code for n in range(times)]


# --- brute force ---


def test_the_attempt_after_the_limit_of_bad_keys_gets_a_429(portal, limit):
    assert guess(portal, limit) == [401] * limit
    response = get_models(portal, wrong_key(99))
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= LONGEST_BLOCK
    error = response.json()["error"]
    assert error["code"] == "too_many_invalid_keys" and error["type"] == "rate_limit_error"
    assert "Try again in" in error["message"]


def test_a_blocked_address_is_refused_even_with_a_valid_key(portal, master_key, limit):
    # Otherwise the 429 would tell a guesser which keys are wrong, and a 200 which one is right.
    guess(portal, limit)
    assert get_models(portal, master_key).status_code == 429
    # Other addresses are not affected.
    assert get_models(portal, master_key, NEIGHBOUR).status_code == 200
    assert get_models(portal, wrong_key(), NEIGHBOUR).status_code == 401


def test_the_block_lifts_when_the_window_ends(portal, master_key, limit):
    guess(portal, limit + 1)
    assert get_models(portal, master_key).status_code == 429
    clock.advance(LONGEST_BLOCK)
    assert get_models(portal, master_key).status_code == 200
    assert guess(portal, limit) == [401] * limit  # a fresh allowance


def test_requests_without_a_key_and_good_keys_do_not_count(portal, master_key, limit):
    assert {get_models(portal, None).status_code for _ in range(limit * 2)} == {401}
    assert {get_models(portal, master_key).status_code for _ in range(limit * 2)} == {200}
    assert guess(portal, limit) == [401] * limit


def test_the_count_is_shared_by_every_worker(portal, master_key, limit):
    # Counts live in the shared cache (Redis in production): a worker that never saw this address fail
    # refuses it at its first bad key once the address is over the limit. Forgetting this process's
    # memo of blocked addresses makes it that other worker.
    guess(portal, limit)
    key_failures.reset()
    assert get_models(portal, master_key).status_code == 200  # it has not learnt of the block yet
    assert get_models(portal, wrong_key()).status_code == 429  # and learns it from the shared count
    assert get_models(portal, master_key).status_code == 429


def test_a_throttled_call_leaves_a_usage_record(portal, limit):
    guess(portal, limit)
    response = httpx.post(f"{portal.url}/v1/chat/completions", json={"model": "test-model", "messages": HELLO},
                          headers={"Authorization": f"Bearer {wrong_key()}", "X-Forwarded-For": GUESSER},
                          timeout=30)
    assert response.status_code == 429
    deadline = time.monotonic() + 10
    while not (record := UsageRecord.objects.filter(request_id=response.headers["x-request-id"]).first()):
        assert time.monotonic() < deadline
        recorder.flush()
        time.sleep(0.05)
    assert (record.status, record.error_code, record.client_ip) == (429, "too_many_invalid_keys", GUESSER)


def test_anthropic_clients_get_the_429_in_their_own_shape(portal, limit):
    guess(portal, limit)
    response = httpx.post(f"{portal.url}/v1/messages", json={"model": "test-model", "max_tokens": 5,
                                                             "messages": HELLO},
                          headers={"x-api-key": wrong_key(), "X-Forwarded-For": GUESSER}, timeout=30)
    assert response.status_code == 429
    assert response.headers["Retry-After"]
    assert response.json()["type"] == "error"


def test_a_limit_of_zero_turns_the_brake_off(portal, settings):
    settings.AUTH_FAILURE_LIMIT = 0
    assert set(guess(portal, 30)) == {401}


# --- constant-time comparison ---


@pytest.fixture
def compared(monkeypatch: Any) -> list[tuple[bytes, bytes]]:
    """Every hmac.compare_digest call (a spy at the standard library: the comparison itself still runs)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a.encode() if isinstance(a, str) else bytes(a), b.encode() if isinstance(b, str) else bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


def test_the_master_key_is_compared_in_constant_time(portal, master_key, compared):
    almost = master_key[:-1] + ("A" if master_key[-1] != "A" else "B")
    assert get_models(portal, almost).status_code == 401
    assert (almost.encode(), master_key.encode()) in compared
    assert get_models(portal, master_key).status_code == 200
    assert (master_key.encode(), master_key.encode()) in compared


def test_a_user_key_is_compared_as_an_hmac_in_constant_time(portal, personas, compared):
    key, token = issue(personas.alice)
    almost = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert get_models(portal, almost).status_code == 401
    # The stored HMAC against the HMAC of what was sent: never the plaintexts, never with ==.
    assert (key.secret_hash.encode(), digest(almost).encode()) in compared
    assert get_models(portal, token).status_code == 200
    assert (key.secret_hash.encode(), key.secret_hash.encode()) in compared


def test_the_management_api_compares_the_master_key_in_constant_time(personas, master_key, compared):
    almost = master_key[:-1] + ("A" if master_key[-1] != "A" else "B")
    assert Client(HTTP_AUTHORIZATION=f"Bearer {almost}").get("/api/keys/").status_code == 401
    assert (almost.encode(), master_key.encode()) in compared


def test_a_key_is_stored_only_as_an_hmac_of_it(personas):
    key, token = issue(personas.alice)
    row = ApiKey.objects.filter(pk=key.pk).values().get()
    secret = token.split(".", 1)[1]
    assert not any(secret in str(value) for value in row.values())
    assert row["secret_hash"] == hmac.new(pepper(), token.encode(), hashlib.sha256).hexdigest()


# --- isolation ---


def chat(portal: Any, key: str) -> httpx.Response:
    return httpx.post(f"{portal.url}/v1/chat/completions", json={"model": "test-model", "messages": HELLO},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def quota(portal: Any, key: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{portal.url}/v1/quota", params={"model": "test-model"},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200
    [entry] = response.json()["data"]
    return list(entry["key_limits"])


def test_quota_shows_each_key_only_its_own_limits_and_use(portal, models, personas):
    from accounts.principal import KeyLimits

    _, alice = issue(personas.alice, limits=KeyLimits(rpm=50, rpd=500))
    _, bob = issue(personas.bob, limits=KeyLimits(rpm=70))
    for key, times in ((alice, 2), (bob, 3)):
        for _ in range(times):
            assert chat(portal, key).status_code == 200
    mine = {(row["limit_name"], row["limit"], row["used"]) for row in quota(portal, alice)}
    assert mine == {("rpm", 50, 2), ("rpd", 500, 2)}
    assert {(row["limit_name"], row["limit"], row["used"]) for row in quota(portal, bob)} == {("rpm", 70, 3)}
    assert all(row["scope"] == "key" for row in quota(portal, alice))


def test_a_key_cannot_read_delete_or_continue_another_keys_response(portal, models, personas):
    _, alice = issue(personas.alice)
    _, bob = issue(personas.bob)
    created = httpx.post(f"{portal.url}/v1/responses", json={"model": "test-model", "input": "hi"},
                         headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    assert created.status_code == 200
    url = f"{portal.url}/v1/responses/{created.json()['id']}"
    as_bob = {"Authorization": f"Bearer {bob}"}
    assert httpx.get(url, headers=as_bob, timeout=30).status_code == 404
    assert httpx.delete(url, headers=as_bob, timeout=30).status_code == 404
    follow_up = httpx.post(f"{portal.url}/v1/responses", headers=as_bob, timeout=30, json={
        "model": "test-model", "input": "and then?", "previous_response_id": created.json()["id"]})
    assert follow_up.status_code == 404
    assert follow_up.json()["error"]["param"] == "previous_response_id"
    # Still there for alice: bob's attempts changed nothing.
    assert httpx.get(url, headers={"Authorization": f"Bearer {alice}"}, timeout=30).status_code == 200


API_CALLS = [("get", "/api/keys/"), ("get", "/api/users/"), ("post", "/api/keys/"), ("get", "/api/keys/{bob}/"),
             ("post", "/api/keys/{bob}/revoke/")]


def call_api(client: Client, method: str, path: str, bob_key: ApiKey) -> int:
    url = path.format(bob=bob_key.pk)
    if method == "post":
        return client.post(url, {"owner": "alice", "name": "mine now"}, content_type="application/json").status_code
    return client.get(url).status_code


def test_the_management_api_refuses_user_keys_and_non_staff_users(personas, master_key):
    _, alice = issue(personas.alice)
    bob_key, _ = issue(personas.bob)
    as_alice_key = Client(HTTP_AUTHORIZATION=f"Bearer {alice}")
    as_alice = Client()
    as_alice.force_login(personas.alice)
    as_charlie = Client()
    as_charlie.force_login(personas.charlie)
    for method, path in API_CALLS:
        assert call_api(as_alice_key, method, path, bob_key) == 401, path
        assert call_api(as_alice, method, path, bob_key) == 403, path
        assert call_api(as_charlie, method, path, bob_key) == 403, path
        assert call_api(Client(), method, path, bob_key) in (401, 403), path
    bob_key.refresh_from_db()
    assert bob_key.is_active
    assert ApiKey.objects.count() == 2  # nothing was created
    # The same calls work for an operator, with the master key or a staff session.
    operator = Client()
    operator.force_login(personas.operator)
    assert operator.get("/api/keys/").status_code == 200
    assert Client(HTTP_AUTHORIZATION=f"Bearer {master_key}").get("/api/users/").status_code == 200


def test_the_key_page_never_shows_or_touches_another_users_key(personas):
    bob_key, _ = issue(personas.bob, "bob's secret project")
    alice = Client()
    alice.force_login(personas.alice)
    page = alice.get("/keys/").content.decode()
    assert "bob's secret project" not in page and bob_key.prefix not in page
    assert alice.get(f"/keys/{bob_key.pk}/").status_code == 404
    assert alice.post(f"/keys/{bob_key.pk}/revoke/").status_code == 404
    bob_key.refresh_from_db()
    assert bob_key.is_active


def test_guessing_the_master_key_on_the_management_api_is_throttled_like_v1(limit: int, transactional_db: Any) -> None:
    from django.conf import settings

    def keys_list(key: str, ip: str = GUESSER) -> Any:
        return Client(REMOTE_ADDR=ip).get("/api/keys/", HTTP_AUTHORIZATION=f"Bearer {key}")

    statuses = [keys_list(wrong_key(n)).status_code for n in range(limit + 1)]
    assert statuses == [401] * limit + [429]
    # Now even the right key is refused from that address until the window ends, so a guesser cannot tell it
    # from a wrong one; another address is not affected.
    refused = keys_list(settings.MASTER_KEY)
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= LONGEST_BLOCK
    assert settings.MASTER_KEY not in refused.content.decode()
    assert keys_list(settings.MASTER_KEY, ip=NEIGHBOUR).status_code == 200
    clock.advance(LONGEST_BLOCK)
    assert keys_list(settings.MASTER_KEY).status_code == 200
