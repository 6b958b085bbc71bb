"""The operators' admin for users and keys: lists without secrets, the plaintext once, revoke and extend."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from accounts import keys
from accounts.models import ApiKey, KeyPolicy
from gateway.models import Deployment, Provider
from tests.personas import issue


@pytest.fixture
def operator(personas) -> Client:
    client = Client()
    client.force_login(personas.operator)
    return client


@pytest.fixture
def catalog(db):
    provider = Provider.objects.create(name="mock", kind="openai_compatible", api_base="http://127.0.0.1:9/v1")
    for name in ("gemma-3-12b", "test-model"):
        Deployment.objects.create(public_name=name, provider=provider, upstream_model=name)


def test_the_key_list_shows_owner_prefix_status_and_last_used_but_no_secret(operator, personas):
    active, active_token = issue(personas.alice, "laptop")
    revoked, _ = issue(personas.bob, "phone")
    revoked.revoke()
    issue(personas.alice, "old", expires=timezone.now() - timedelta(days=1))
    ApiKey.objects.touch(active.pk)
    page = operator.get("/admin/accounts/apikey/").content.decode()
    for text in ("laptop", "phone", "alice", "bob", f"sk-{active.prefix}", ">active<", ">revoked<", ">expired<"):
        assert text in page, text
    assert active_token not in page and active.secret_hash not in page
    change = operator.get(f"/admin/accounts/apikey/{active.pk}/change/").content.decode()
    assert active.secret_hash not in change and active_token not in change


@pytest.mark.parametrize("state, names", [("active", {"laptop"}), ("revoked", {"phone"}), ("expired", {"old"})])
def test_keys_can_be_filtered_by_status(operator, personas, state, names):
    issue(personas.alice, "laptop")
    issue(personas.bob, "phone")[0].revoke()
    issue(personas.alice, "old", expires=timezone.now() - timedelta(days=1))
    response = operator.get(f"/admin/accounts/apikey/?status={state}")
    shown = {k.name for k in response.context["cl"].result_list}
    assert shown == names


def test_creating_a_key_shows_its_plaintext_once(operator, personas, catalog, caplog):
    caplog.set_level("INFO", logger="accounts")
    response = operator.post("/admin/accounts/apikey/add/", {
        "owner": personas.bob.pk, "name": "service", "expires": "", "allowed_models": ["test-model"],
        "rpm": "5", "rpd": "", "tokens_per_day": "", "tokens_per_month": "", "tags": '{"team": "data"}',
        "model_limits-TOTAL_FORMS": "1", "model_limits-INITIAL_FORMS": "0",
        "model_limits-0-public_model": "test-model", "model_limits-0-rpd": "100",
    })
    # The answer to the POST itself shows the plaintext (a message would put it in the `messages` cookie).
    assert response.status_code == 201 and "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get(name="service")
    page = response.content.decode()
    token = re.search(r'<code id="new-key">(sk-[^<]+)</code>', page).group(1)
    assert key.matches(token)
    principal = async_to_sync(keys.resolve_token)(token)
    assert principal.username == "bob" and principal.allowed_models == frozenset({"test-model"})
    assert principal.limits.rpm == 5 and principal.limits_for("test-model").rpd == 100
    assert principal.tags == {"team": "data"}
    assert token not in operator.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    assert "api key created" in caplog.text and "by=operator" in caplog.text and token not in caplog.text


def test_the_revoke_action_revokes_and_takes_effect_at_once(operator, personas):
    key, token = issue(personas.alice)
    _, other_token = issue(personas.bob)
    assert async_to_sync(keys.resolve_token)(token)
    response = operator.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert response.status_code == 302
    assert "1 key(s) revoked." in [str(m) for m in get_messages(response.wsgi_request)]
    assert ApiKey.objects.get(pk=key.pk).status == "revoked"
    assert async_to_sync(keys.resolve_token)(token) is None
    assert async_to_sync(keys.resolve_token)(other_token) is not None


def test_the_extend_action_adds_thirty_days_to_keys_that_expire(operator, personas):
    soon = timezone.now() + timedelta(days=2)
    expiring, _ = issue(personas.alice, "expiring", expires=soon)
    forever, _ = issue(personas.alice, "forever")
    response = operator.post("/admin/accounts/apikey/", {
        "action": "extend_30_days", "_selected_action": [expiring.pk, forever.pk],
    })
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert messages == ["1 key(s) extended by 30 days. 1 skipped (revoked, or never expire)."]
    expiring.refresh_from_db()
    assert abs(expiring.expires - (soon + timedelta(days=30))) < timedelta(seconds=1)
    assert ApiKey.objects.get(pk=forever.pk).expires is None


def test_the_user_page_edits_the_key_policy(operator, personas, catalog):
    page = operator.get(f"/admin/auth/user/{personas.alice.pk}/change/")
    assert page.status_code == 200
    assert b"API key policy" in page.content
    users = operator.get("/admin/auth/user/").content.decode()
    assert "active keys" in users.lower()
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "password"}
    data.update({
        "username": "alice", "date_joined_0": "2024-01-01", "date_joined_1": "00:00:00",
        "groups": [g.pk for g in personas.alice.groups.all()], "is_active": "on",
        "key_policy-TOTAL_FORMS": "1", "key_policy-INITIAL_FORMS": "0", "key_policy-MIN_NUM_FORMS": "0",
        "key_policy-MAX_NUM_FORMS": "1", "key_policy-0-max_keys": "3", "key_policy-0-allowed_models": ["test-model"],
        "key_policy-0-rpm": "4",
    })
    data.pop("last_login", None)
    data.pop("user_permissions", None)
    response = operator.post(f"/admin/auth/user/{personas.alice.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    policy = KeyPolicy.objects.get(user=personas.alice)
    assert (policy.max_keys, policy.allowed_models, policy.rpm) == (3, ["test-model"], 4)


@pytest.mark.parametrize("who", ["alice", "charlie"])
def test_users_who_are_not_staff_cannot_open_the_admin(personas, who):
    issue(personas.alice)
    client = Client()
    client.force_login(getattr(personas, who))
    response = client.get("/admin/accounts/apikey/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_admin_pages_send_security_headers(operator):
    for response in (operator.get("/admin/accounts/apikey/"), Client().get("/admin/login/")):
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"
