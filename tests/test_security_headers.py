"""The admin, the self-service key pages and the management API send the security headers, page by page.

Over the live ASGI server for the login pages (what a browser gets), and with Django's test client for the
pages behind a login. Every inline script a page carries must hold that response's CSP nonce, or the
browser would refuse to run it.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from django.test import Client

from gateway.models import Provider
from tests.personas import issue

COMMON = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


def assert_secure(response: Any, *, page: bool = True) -> dict[str, list[str]]:
    """The headers every page gets; returns the CSP's directives."""
    headers = response.headers
    for name, value in COMMON.items():
        assert headers.get(name) == value, f"{name}: {headers.get(name)!r}"
    assert "camera=()" in headers["Permissions-Policy"] and "microphone=()" in headers["Permissions-Policy"]
    csp = directives(headers["Content-Security-Policy"])
    assert csp["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in csp.get("script-src", csp.get("default-src", []))
    sources = [value for values in csp.values() for value in values]
    assert "'unsafe-eval'" not in sources and "*" not in sources
    if page:
        assert_scripts_carry_the_nonce(response, csp)
    return csp


def assert_scripts_carry_the_nonce(response: Any, csp: dict[str, list[str]]) -> None:
    body = response.content.decode()
    nonces = {value[7:-1] for value in csp.get("script-src", []) if value.startswith("'nonce-")}
    for tag in re.findall(r"<script\b[^>]*>", body):
        if "src=" in tag or 'type="application/json"' in tag:
            continue
        found = re.search(r'nonce="([^"]+)"', tag)
        assert found and found.group(1) in nonces, f"inline script without this response's nonce: {tag}"


@pytest.fixture
def operator(personas: Any) -> Client:
    client = Client()
    client.force_login(personas.operator)
    return client


@pytest.fixture
def alice(personas: Any) -> Client:
    client = Client()
    client.force_login(personas.alice)
    return client


@pytest.mark.parametrize("path", ["/admin/login/", "/keys/login/"])
def test_the_login_pages_send_the_security_headers_over_http(live_portal, transactional_db, path):
    assert_secure(httpx.get(f"{live_portal.url}{path}", timeout=30))


ADMIN_PAGES = [
    "/admin/",
    "/admin/gateway/provider/",
    "/admin/gateway/provider/add/",
    "/admin/gateway/deployment/",
    "/admin/accounts/apikey/",
    "/admin/auth/user/",
    "/admin/tracking/usagerecord/",
    "/admin/tracking/usagerecord/dashboard/",
]


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_each_admin_page_sends_the_security_headers(operator, path):
    response = operator.get(path)
    assert response.status_code == 200, path
    csp = assert_secure(response)
    # The admin's scripts and styles come from this origin only.
    assert csp["default-src"] == ["'self'"] and csp["object-src"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]


def test_the_admins_own_inline_script_carries_the_nonce(operator, personas, github):
    # The Copilot login page polls GitHub from an inline script while the device flow runs.
    provider = Provider.objects.create(name="copilot", kind="github_copilot")
    response = operator.post(f"/admin/gateway/provider/{provider.pk}/copilot/", {"action": "start"}, follow=True)
    assert response.status_code == 200
    assert "<script nonce=" in response.content.decode()
    assert_secure(response)


def test_each_self_service_page_sends_the_security_headers(alice, personas):
    key, _ = issue(personas.alice)
    for path in ("/keys/", "/keys/new/", f"/keys/{key.pk}/"):
        response = alice.get(path)
        assert response.status_code == 200, path
        csp = assert_secure(response)
        # Their own policy, stricter than the admin's, is kept: nothing at all without the nonce.
        assert csp["default-src"] == ["'none'"], path
        assert response["Cache-Control"] == "no-store"


def test_a_refused_page_sends_them_too(personas):
    charlie = Client()
    charlie.force_login(personas.charlie)  # may not manage keys
    response = charlie.get("/keys/")
    assert response.status_code == 403
    assert_secure(response)
    assert_secure(Client().get("/admin/no-such-page/"), page=False)


def test_the_management_api_sends_them(personas, master_key):
    for path in ("/api/keys/", "/api/schema/"):
        response = Client(HTTP_AUTHORIZATION=f"Bearer {master_key}").get(path)
        assert response.status_code == 200
        assert_secure(response, page=False)


def test_hsts_is_sent_on_https_when_configured(operator, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    https = Client(HTTP_X_FORWARDED_PROTO="https")
    assert https.get("/admin/login/")["Strict-Transport-Security"] == "max-age=3600"
    # Never over plain HTTP (a browser would ignore it, and a mistyped setting must not lock anyone out).
    assert "Strict-Transport-Security" not in Client().get("/admin/login/")
