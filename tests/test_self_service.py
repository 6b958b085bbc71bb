"""The self-service key pages (/keys/): each persona against each page, creating, showing once, revoking."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from accounts import keys
from accounts.models import ApiKey, ApiKeyModelLimit, KeyPolicy
from accounts.principal import KeyLimits
from gateway.models import Deployment, Provider
from tests.personas import PASSWORD, issue


def resolve(token):
    return async_to_sync(keys.resolve_token)(token)


@pytest.fixture
def catalog(db):
    provider = Provider.objects.create(name="mock", kind="openai_compatible", api_base="http://127.0.0.1:9/v1")
    for name in ("gemma-3-12b", "google/gemini-2.5-flash", "test-model"):
        Deployment.objects.create(public_name=name, provider=provider, upstream_model=name)
    return provider


@pytest.fixture
def alice_key(personas):
    key, _ = issue(personas.alice, "alice's laptop")
    return key


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def create(client: Client, **data) -> object:
    return client.post("/keys/new/", {"name": "ci", "expires_in": "30", **data})


# --- who may do what ---

PAGES = [
    ("get", "/keys/"),
    ("get", "/keys/new/"),
    ("post", "/keys/new/"),
    ("get", "/keys/{key}/"),
    ("post", "/keys/{key}/revoke/"),
]
# The status each persona gets on each page above, for a key of alice's.
EXPECTED = {
    "alice": [200, 200, 201, 200, 302],
    "bob": [200, 200, 201, 404, 404],
    "charlie": [403, 403, 403, 403, 403],
    "operator": [200, 200, 201, 404, 404],
}


@pytest.mark.parametrize("who", ["alice", "bob", "charlie", "operator"])
def test_each_persona_reaches_only_their_own_keys(personas, alice_key, catalog, who):
    client = logged_in(getattr(personas, who))
    statuses = []
    for method, url in PAGES:
        response = getattr(client, method)(url.format(key=alice_key.pk), {"name": f"{who}-key", "expires_in": "7"})
        statuses.append(response.status_code)
        if who != "alice":
            assert b"alice's laptop" not in response.content
            assert alice_key.prefix.encode() not in response.content
    assert statuses == EXPECTED[who]
    alice_key.refresh_from_db()
    assert alice_key.is_active == (who != "alice")  # only alice could revoke it


def test_anonymous_visitors_are_sent_to_log_in(personas, alice_key):
    client = Client()
    for method, url in PAGES:
        response = getattr(client, method)(url.format(key=alice_key.pk))
        assert response.status_code == 302
        assert response["Location"].startswith("/keys/login/?next=")
    assert ApiKey.objects.count() == 1 and ApiKey.objects.get().is_active


def test_charlie_is_told_to_ask_an_operator(personas):
    response = logged_in(personas.charlie).get("/keys/")
    assert response.status_code == 403
    assert b"Ask an operator" in response.content


def test_revoke_only_accepts_post(personas, alice_key):
    response = logged_in(personas.alice).get(f"/keys/{alice_key.pk}/revoke/")
    assert response.status_code == 405
    alice_key.refresh_from_db()
    assert alice_key.is_active


# --- creating and showing once ---

def test_alice_creates_a_key_and_sees_it_exactly_once(personas, catalog):
    client = logged_in(personas.alice)
    response = create(client, name="laptop", models=["test-model"])
    key = ApiKey.objects.get(owner=personas.alice)
    # The answer to the POST itself is the key's page with the plaintext; the page's address becomes the key's.
    assert response.status_code == 201
    page = response.content.decode()
    token = re.search(r'<code id="new-key">([^<]+)</code>', page).group(1)
    assert key.matches(token)
    assert f'history.replaceState(null, "", "/keys/{key.pk}/")' in page
    assert resolve(token).allowed_models == frozenset({"test-model"})
    again = client.get(f"/keys/{key.pk}/").content.decode()
    assert token not in again and 'id="new-key"' not in again


def test_the_plaintext_is_only_shown_on_the_new_keys_page(personas, catalog):
    client = logged_in(personas.alice)
    old, _ = issue(personas.alice, "old")
    assert 'id="new-key"' in create(client, name="new").content.decode()
    new = ApiKey.objects.get(name="new")
    for key in (old, new):
        assert 'id="new-key"' not in client.get(f"/keys/{key.pk}/").content.decode()


def test_a_key_expires_after_the_chosen_time_or_never(personas, catalog):
    client = logged_in(personas.alice)
    create(client, name="week", expires_in="7")
    create(client, name="forever", expires_in="never")
    week, forever = ApiKey.objects.get(name="week"), ApiKey.objects.get(name="forever")
    assert 6.9 < (week.expires - week.created).total_seconds() / 86400 < 7.1
    assert forever.expires is None


def test_the_form_shows_errors_next_to_the_fields(personas, catalog):
    client = logged_in(personas.alice)
    response = create(client, name="  ", expires_in="soon", models=["no-such-model"])
    assert response.status_code == 400
    page = response.content.decode()
    for field in ("name", "expires_in", "models"):
        assert f'id="id_{field}_errors"' in page, field
    assert ApiKey.objects.count() == 0


def test_a_name_already_in_use_is_an_error_on_the_name(personas, catalog):
    client = logged_in(personas.alice)
    create(client, name="laptop")
    response = create(client, name="laptop")
    assert response.status_code == 400
    assert "already have an active key with this name" in response.content.decode()


def test_the_models_offered_are_those_the_operator_allows(personas, catalog):
    KeyPolicy.objects.create(user=personas.alice, allowed_models=["gemma-3-12b", "test-model"])
    client = logged_in(personas.alice)
    form = client.get("/keys/new/").content.decode()
    assert 'value="gemma-3-12b"' in form and 'value="test-model"' in form
    assert "google/gemini-2.5-flash" not in form
    assert create(client, name="sneaky", models=["google/gemini-2.5-flash"]).status_code == 400
    # Ticking nothing gives "everything I may use", not every model.
    create(client, name="all mine")
    assert ApiKey.objects.get(name="all mine").allowed_models == ["gemma-3-12b", "test-model"]


def test_the_key_cap_is_shown_as_a_form_error(personas, catalog):
    KeyPolicy.objects.create(user=personas.alice, max_keys=1)
    client = logged_in(personas.alice)
    create(client, name="one")
    response = create(client, name="two")
    assert response.status_code == 400
    assert "the most allowed" in response.content.decode()
    assert ApiKey.objects.filter(owner=personas.alice).count() == 1


def test_self_served_keys_get_the_limits_of_the_users_policy(personas, catalog):
    KeyPolicy.objects.create(user=personas.alice, rpm=2, tokens_per_day=5000)
    create(logged_in(personas.alice), name="limited")
    key = ApiKey.objects.get(name="limited")
    assert key.key_limits() == KeyLimits(rpm=2, tokens_per_day=5000)


# --- listing, quota, revoking ---

def test_the_list_shows_my_keys_with_status_and_never_a_secret(personas, catalog):
    key, token = issue(personas.alice, "laptop")
    revoked, _ = issue(personas.alice, "old phone")
    revoked.revoke()
    issue(personas.bob, "bob's key")
    page = logged_in(personas.alice).get("/keys/").content.decode()
    assert "laptop" in page and "old phone" in page and "bob&#x27;s key" not in page
    assert f"sk-{key.prefix}" in page
    assert token not in page and key.secret_hash not in page
    assert "status-revoked" in page and "status-active" in page
    assert "2 of 20 active keys" not in page and "1 of 20 active keys" in page


def quota_table(page: str) -> list[list[str]]:
    section = page.split('id="quota"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section, re.S)
    text = lambda cell: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell)).strip()  # noqa: E731
    return [[text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]


def test_the_quota_section_lists_each_usable_model_with_what_is_left(personas, catalog):
    key, _ = issue(personas.alice, "ci", allowed_models=["gemma-3-12b", "test-model"], limits=KeyLimits(rpm=7))
    ApiKeyModelLimit.objects.create(key=key, public_model="test-model", rpd=40)
    table = quota_table(logged_in(personas.alice).get(f"/keys/{key.pk}/").content.decode())
    assert [row[0] for row in table] == ["gemma-3-12b", "test-model"]
    assert table[0][1:] == ["7 left of 7", "no limit", "no limit", "no limit"]
    assert table[1][1] == "7 left of 7"
    assert table[1][2].startswith("40 left of 40 resets ")
    assert table[1][3:] == ["no limit", "no limit"]


def test_a_revoked_key_shows_its_limits_without_counters(personas, catalog):
    key, _ = issue(personas.alice, "ci", limits=KeyLimits(rpd=5))
    key.revoke()
    table = quota_table(logged_in(personas.alice).get(f"/keys/{key.pk}/").content.decode())
    assert [row[0] for row in table] == ["gemma-3-12b", "google/gemini-2.5-flash", "test-model"]
    assert all(row[2] == "5" for row in table)


def test_alice_revokes_her_key_on_the_page(personas, alice_key, caplog):
    caplog.set_level("INFO", logger="accounts")
    _, token = ApiKey.objects.issue(personas.alice, "second")
    second = ApiKey.objects.get(name="second")
    assert resolve(token) is not None
    response = logged_in(personas.alice).post(f"/keys/{second.pk}/revoke/", follow=True)
    assert response.status_code == 200
    assert "is revoked" in response.content.decode()
    second.refresh_from_db()
    assert second.status == "revoked"
    assert resolve(token) is None
    assert "api key revoked" in caplog.text and token not in caplog.text


# --- login, CSRF, headers ---

def test_logging_in_and_out(personas, caplog):
    caplog.set_level("INFO", logger="accounts")
    client = Client()
    assert client.get("/keys/login/").status_code == 200
    response = client.post("/keys/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/keys/"
    assert client.get("/keys/").status_code == 200
    response = client.post("/keys/logout/")
    assert response.status_code == 302
    assert client.get("/keys/").status_code == 302
    assert "login: user=alice" in caplog.text and "logout: user=alice" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_wrong_password_shows_an_error_and_is_logged(personas, caplog):
    caplog.set_level("INFO", logger="accounts")
    response = Client().post("/keys/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "login failed: user=alice" in caplog.text
    assert "wrong" not in caplog.text.replace("login failed", "")


@pytest.mark.parametrize("url", ["/keys/new/", "/keys/{key}/revoke/", "/keys/logout/", "/keys/login/"])
def test_every_form_needs_the_csrf_token(personas, alice_key, url):
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.alice)
    response = client.post(url.format(key=alice_key.pk), {"name": "x", "expires_in": "7",
                                                          "username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    alice_key.refresh_from_db()
    assert alice_key.is_active and ApiKey.objects.count() == 1


def test_pages_carry_a_strict_security_policy(personas, alice_key):
    client = logged_in(personas.alice)
    for url in ("/keys/", f"/keys/{alice_key.pk}/", "/keys/new/"):
        response = client.get(url)
        csp = response["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
        assert f'nonce="{nonce}"' in response.content.decode()
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Cache-Control"] == "no-store"
    assert "Content-Security-Policy" in Client().get("/keys/login/")


def test_session_and_csrf_cookies_are_http_only(personas):
    client = Client()
    client.get("/keys/login/")
    assert client.cookies["csrftoken"]["httponly"]
    client.post("/keys/login/", {"username": "alice", "password": PASSWORD})
    assert client.cookies["sessionid"]["httponly"]


def test_in_production_the_cookies_are_secure_and_http_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"PORTAL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "portal.settings", "DEBUG": "false",
                "SECRET_KEY": "s" * 50, "LITELLM_MASTER_KEY": "sk-master-test"})
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.CSRF_COOKIE_SECURE, s.CSRF_COOKIE_HTTPONLY, "
            "s.SECURE_PROXY_SSL_HEADER)")
    result = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')"]
