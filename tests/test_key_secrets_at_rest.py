"""A new key's plaintext is shown once, in the answer to the POST that created it, and is never kept where a
browser or the session table holds it: not in a cookie (the `messages` cookie is signed, not encrypted), not
in a django_session row (which lives two weeks). Both ways of creating a key are read back here as an
attacker with the browser's cookie jar or a database dump would read them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.models import Session
from django.http import HttpRequest
from django.test import Client

from accounts.models import ApiKey
from gateway.models import Deployment, Provider
from tests.personas import PASSWORD


@pytest.fixture
def catalog(db: Any) -> None:
    provider = Provider.objects.create(name="mock", kind="openai_compatible", api_base="http://127.0.0.1:9/v1")
    Deployment.objects.create(public_name="test-model", provider=provider, upstream_model="test-model")


def logged_in(url: str, username: str) -> Client:
    """A browser that logged in through the form, as a person does (its session row and cookies are real)."""
    browser = Client()
    assert browser.post(url, {"username": username, "password": PASSWORD}).status_code == 302
    return browser


def shown_token(response: Any) -> str:
    found = re.search(r'<code id="new-key">(sk-[^<]+)</code>', response.content.decode())
    assert found, response.content.decode()[:2000]
    return found.group(1)


def stored_by_browsers_and_sessions(*browsers: Client) -> str:
    """Everything the browsers' cookie jars and the session table hold, decoded where it is encoded."""
    held = []
    for browser in browsers:
        for name, morsel in browser.cookies.items():
            held.append(f"{name}={morsel.value}")
            if name == CookieStorage.cookie_name:
                messages = CookieStorage(HttpRequest())._decode(morsel.value) or []
                held += [str(message) for message in messages]
    for session in Session.objects.all():
        held += [session.session_data, repr(session.get_decoded())]
    return "\n".join(held)


def assert_nowhere(token: str, *browsers: Client) -> None:
    stored = stored_by_browsers_and_sessions(*browsers)
    secret = token.partition(".")[2]
    assert secret and secret not in stored and token not in stored


def test_a_key_made_on_the_self_service_page_is_shown_once_and_kept_by_no_browser_or_session(personas, catalog):
    browser = logged_in("/keys/login/", "alice")
    response = browser.post("/keys/new/", {"name": "laptop", "expires_in": "30", "models": ["test-model"]})
    token = shown_token(response)
    key = ApiKey.objects.get(owner=personas.alice, name="laptop")
    assert key.matches(token)
    assert_nowhere(token, browser)  # right after the POST, before any other page
    for url in ("/keys/", f"/keys/{key.pk}/"):
        assert token not in browser.get(url).content.decode()
    assert_nowhere(token, browser)


def test_a_key_made_in_the_admin_is_shown_once_and_kept_by_no_browser_or_session(personas, catalog):
    browser = logged_in("/admin/login/", "operator")
    response = browser.post("/admin/accounts/apikey/add/", {
        "owner": personas.bob.pk, "name": "service", "expires": "", "allowed_models": ["test-model"],
        "rpm": "", "rpd": "", "tokens_per_day": "", "tokens_per_month": "", "tags": "{}",
        "model_limits-TOTAL_FORMS": "0", "model_limits-INITIAL_FORMS": "0",
    })
    token = shown_token(response)
    key = ApiKey.objects.get(name="service")
    assert key.matches(token)
    assert_nowhere(token, browser)
    for url in ("/admin/accounts/apikey/", f"/admin/accounts/apikey/{key.pk}/change/", "/admin/"):
        assert token not in browser.get(url).content.decode()
    assert_nowhere(token, browser)


def test_the_check_reads_the_messages_cookie_and_the_session(personas, catalog):
    # The reader above must be able to find a secret where the portal used to leave it.
    browser = logged_in("/keys/login/", "alice")
    browser.cookies[CookieStorage.cookie_name] = CookieStorage(HttpRequest())._encode(["sk-abc.in-a-message"])
    session = browser.session
    session["left-here"] = "sk-def.in-the-session"
    session.save()
    stored = stored_by_browsers_and_sessions(browser)
    assert "in-a-message" in stored and "in-the-session" in stored
