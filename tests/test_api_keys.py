"""ApiKey: issuing, storing only an HMAC, revoking, expiring, caps, and the cached hot-path lookup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from accounts import keys
from accounts.models import ApiKey, ApiKeyModelLimit, KeyLimitReached, KeyPolicy
from accounts.principal import KeyLimits
from tests.personas import issue

ROOT = Path(__file__).resolve().parent.parent


def resolve(token: str):
    """resolve_token as the gateway calls it, waiting for its background last_used write."""

    async def go():
        principal = await keys.resolve_token(token)
        await keys.drain()
        return principal

    return async_to_sync(go)()


def test_a_key_looks_like_an_openai_key_and_only_its_hmac_is_stored(personas):
    key, token = issue(personas.alice)
    assert token.startswith(f"sk-{key.prefix}.")
    assert len(token) > 40
    row = ApiKey.objects.filter(pk=key.pk).values().get()
    assert token not in {str(v) for v in row.values()}
    assert token.split(".", 1)[1] not in str(row)
    assert key.matches(token)
    assert not key.matches(token + "x")


def test_the_hash_is_keyed_by_the_pepper(personas):
    key, token = issue(personas.alice)
    with override_settings(API_KEY_PEPPER="another pepper"):
        assert not key.matches(token)


def test_it_resolves_a_key_to_its_owner_models_limits_and_tags(personas):
    key, token = issue(
        personas.alice, "ci", allowed_models=["b-model", "a-model"], limits=KeyLimits(rpm=5, tokens_per_day=1000),
        tags={"team": "data"},
    )
    ApiKeyModelLimit.objects.create(key=key, public_model="a-model", rpd=50)
    principal = resolve(token)
    assert principal is not None
    assert not principal.is_master
    assert (principal.key_id, principal.key_name) == (key.pk, "ci")
    assert (principal.user_id, principal.username) == (personas.alice.pk, "alice")
    assert principal.allowed_models == frozenset({"a-model", "b-model"})
    assert principal.limits == KeyLimits(rpm=5, tokens_per_day=1000)
    # Blank fields of a per-model row inherit the key's limits.
    assert principal.limits_for("a-model") == KeyLimits(rpm=5, rpd=50, tokens_per_day=1000)
    assert principal.limits_for("b-model") == KeyLimits(rpm=5, tokens_per_day=1000)
    assert principal.tags == {"team": "data"}
    assert principal.may_use("a-model") and not principal.may_use("c-model")


def test_a_repeated_lookup_costs_no_database_query(personas, django_assert_num_queries):
    _, token = issue(personas.alice)
    assert resolve(token) is not None
    with django_assert_num_queries(0):
        assert resolve(token) is not None


def test_after_the_memo_expires_a_lookup_is_one_cache_read_not_a_query(personas, django_assert_num_queries):
    _, token = issue(personas.alice)
    assert resolve(token) is not None
    with override_settings(API_KEY_REFRESH_SECONDS=0), django_assert_num_queries(0):
        assert resolve(token) is not None


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # right prefix, wrong secret
    lambda t: "sk-zzzzzzzz." + t.split(".", 1)[1],  # unknown prefix
    lambda t: t.split(".", 1)[0],  # no secret
    lambda t: "not-a-key",
    lambda t: "",
])
def test_it_rejects_anything_but_the_exact_key(personas, mangle):
    _, token = issue(personas.alice)
    assert resolve(token) is not None
    assert resolve(mangle(token)) is None


def test_a_revoked_key_is_rejected_at_once(personas):
    key, token = issue(personas.alice)
    assert resolve(token) is not None
    assert key.revoke(actor=personas.alice) is True
    assert resolve(token) is None
    assert key.revoke() is False  # already revoked: nothing to do


def test_revoking_through_the_queryset_rejects_every_key(personas):
    tokens = [issue(personas.alice, f"k{i}")[1] for i in range(3)]
    assert all(resolve(t) for t in tokens)
    assert ApiKey.objects.owned_by(personas.alice).revoke() == 3
    assert not any(resolve(t) for t in tokens)


def test_an_expired_key_is_rejected(personas):
    _, token = issue(personas.alice, expires=timezone.now() - timedelta(seconds=1))
    assert resolve(token) is None


def test_a_key_is_rejected_once_its_expiry_passes_even_while_cached(personas, monkeypatch):
    _, token = issue(personas.alice, expires=timezone.now() + timedelta(hours=1))
    assert resolve(token) is not None
    later = time.time() + 3601
    monkeypatch.setattr(keys.time, "time", lambda: later)
    assert resolve(token) is None


def test_a_deactivated_or_deleted_owner_loses_their_keys_at_once(personas):
    _, alice_token = issue(personas.alice)
    _, bob_token = issue(personas.bob)
    assert resolve(alice_token) and resolve(bob_token)
    personas.alice.is_active = False
    personas.alice.save()
    assert resolve(alice_token) is None
    personas.bob.delete()
    assert resolve(bob_token) is None


def test_editing_limits_applies_to_the_next_request(personas):
    key, token = issue(personas.alice)
    assert resolve(token).limits == KeyLimits()
    key.rpm = 3
    key.save()
    assert resolve(token).limits == KeyLimits(rpm=3)
    ApiKeyModelLimit.objects.create(key=key, public_model="m", rpd=9)
    assert resolve(token).limits_for("m") == KeyLimits(rpm=3, rpd=9)


def test_last_used_is_written_once_a_minute_at_most(personas):
    key, _ = issue(personas.alice)
    now = timezone.now()
    assert ApiKey.objects.touch(key.pk, now) == 1
    assert ApiKey.objects.touch(key.pk, now + timedelta(seconds=30)) == 0
    assert ApiKey.objects.touch(key.pk, now + timedelta(seconds=61)) == 1


def test_a_lookup_records_last_used_in_the_background(personas):
    key, token = issue(personas.alice)
    assert key.last_used is None
    resolve(token)
    key.refresh_from_db()
    assert key.last_used is not None
    first = key.last_used
    resolve(token)
    key.refresh_from_db()
    assert key.last_used == first


def test_self_service_respects_the_key_cap(personas):
    with override_settings(MAX_KEYS_PER_USER=2):
        first, _ = issue(personas.alice, "one", enforce_cap=True)
        issue(personas.alice, "two", enforce_cap=True)
        with pytest.raises(KeyLimitReached):
            issue(personas.alice, "three", enforce_cap=True)
        # Operators may go past it, and a revoked key frees a place.
        issue(personas.alice, "by operator")
        first.revoke()
        ApiKey.objects.filter(name="by operator").get().revoke()
        issue(personas.alice, "three", enforce_cap=True)


def test_a_per_user_policy_overrides_the_cap(personas):
    KeyPolicy.objects.create(user=personas.bob, max_keys=1)
    issue(personas.bob, "one", enforce_cap=True)
    with pytest.raises(KeyLimitReached):
        issue(personas.bob, "two", enforce_cap=True)


def test_a_policy_clamps_the_models_a_user_picks(db):
    policy = KeyPolicy(allowed_models=["a", "b"])
    assert policy.clamp(["a", "z"]) == ["a"]
    assert policy.clamp([]) == ["a", "b"]  # "everything I may use", not everything
    assert policy.selectable_models(["a", "c", "b"]) == ["a", "b"]
    assert KeyPolicy().clamp([]) == []


def test_extending_pushes_the_expiry_and_leaves_never_expiring_and_revoked_keys(personas):
    soon = timezone.now() + timedelta(days=1)
    key, _ = issue(personas.alice, expires=soon)
    assert key.extend(30)
    assert abs((key.expires - soon) - timedelta(days=30)) < timedelta(seconds=1)
    lapsed, token = issue(personas.alice, "lapsed", expires=timezone.now() - timedelta(days=3))
    assert lapsed.extend(30)
    assert lapsed.expires > timezone.now() + timedelta(days=29)
    assert resolve(token) is not None  # extending an expired key brings it back
    forever, _ = issue(personas.alice, "forever")
    assert not forever.extend(30)
    key.revoke()
    assert not key.extend(30)


def test_status_reads_active_revoked_or_expired(personas):
    active, _ = issue(personas.alice, "a")
    expired, _ = issue(personas.alice, "e", expires=timezone.now() - timedelta(minutes=1))
    revoked, _ = issue(personas.alice, "r")
    revoked.revoke()
    assert [k.status for k in (active, expired, revoked)] == ["active", "expired", "revoked"]
    assert set(ApiKey.objects.active()) == {active}
    assert set(ApiKey.objects.get_queryset().expired()) == {expired}
    assert set(ApiKey.objects.get_queryset().revoked()) == {revoked}


def test_creating_and_revoking_is_logged_without_the_secret(personas, caplog):
    caplog.set_level("INFO", logger="accounts")
    key, token = issue(personas.alice, actor=personas.operator)
    key.revoke(actor=personas.operator)
    text = caplog.text
    assert "api key created" in text and "api key revoked" in text and key.prefix in text
    assert token not in text and token.split(".", 1)[1] not in text


@pytest.mark.skipif(
    not settings.REDIS_URL or "postgresql" not in settings.DATABASES["default"]["ENGINE"],
    reason="needs Redis and PostgreSQL: separate processes share revocations through them",
)
def test_another_process_revoking_a_key_reaches_this_worker_within_a_second(personas, transactional_db):
    key, token = issue(personas.alice)
    assert resolve(token) is not None
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": settings.REDIS_URL}
    code = f"from accounts.models import ApiKey; assert ApiKey.objects.get(pk={key.pk}).revoke()"
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    revoked_at = time.monotonic()
    while resolve(token) is not None:
        assert time.monotonic() - revoked_at < 1.0, "still accepted a second after another process revoked it"
        time.sleep(0.05)
