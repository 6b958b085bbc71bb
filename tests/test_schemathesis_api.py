"""Schemathesis against the management API, from the OpenAPI schema the portal serves at /api/schema/.

Every operation gets generated requests, valid and invalid (wrong types, missing fields, out-of-range and
huge values, odd unicode), over real HTTP: as an operator (the master key), as a user with a key of their
own, and with no credentials. Whatever is sent: never a 5xx, no traceback, no secret in the answer; and
nobody but an operator gets anything but 401/403.

Schemathesis's pytest integration (`schemathesis.pytest.from_fixture`) does not work with pytest 9 (it sets
`Function._nodeid`, which pytest 9 no longer has; 4.32, the latest, still does), so each test loads the live
schema itself and drives every operation's hypothesis strategy (`APIOperation.as_strategy`) directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import schemathesis
from django.test import Client
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode

from tests.conftest import make_deployment, make_provider
from tests.personas import issue
from tests.secret_guard import PROVIDER_TEST_SECRET

FUZZ = settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture
def api_schema(portal: Any, upstream: Any, personas: Any) -> Any:
    """The live schema, with rows for the generated requests to find: users, keys, a model."""
    make_deployment(make_provider(upstream), public_name="test-model")
    issue(personas.alice, "laptop")
    issue(personas.bob, "phone")
    return schemathesis.openapi.from_url(f"{portal.url}/api/schema/?format=json")


@pytest.fixture
def alice_key(personas: Any) -> str:
    return issue(personas.alice, "fuzzed")[1]


def assert_harmless(response: Any, master_key: str) -> None:
    from django.conf import settings as django_settings

    text = response.text
    assert response.status_code < 500, f"{response.status_code}: {text[:500]}"
    assert "Traceback" not in text and 'File "/' not in text
    for secret in (master_key, PROVIDER_TEST_SECRET, django_settings.SECRET_KEY):
        assert secret not in text, "a secret was echoed"


def assert_refused(response: Any, case: Case) -> None:
    """401/403. Or what is answered before any view runs, so before any authentication: 404 when the
    generated path matches no route at all (e.g. an id with a slash in it), 400 for a generated Host header
    that is not a host name or for a NUL character (portal.middleware.RefuseNulMiddleware). Never a
    validation error of the API itself: that would mean it looked at the request."""
    if response.status_code == 400:
        refused_early = "NUL characters are not allowed" in response.text or any(
            name.lower() == "host" for name in case.headers or {})
        assert refused_early, response.text[:300]
        return
    if response.status_code == 404:
        path = unquote(urlsplit(response.request.url).path)
        with pytest.raises(Resolver404):
            resolve(path)
        return
    assert response.status_code in (401, 403), response.text[:300]


def each_case(api_schema: Any, check: Callable[[Case], None], examples: int = 20) -> list[str]:
    """Run `check` on generated cases of every operation, valid and invalid; returns the operations run."""
    done = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(FUZZ, max_examples=examples)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Case) -> None:
                check(case)

            run()
        done.append(f"{operation.method.upper()} {operation.path}")
    return done


OPERATIONS = {"GET /api/keys/", "POST /api/keys/", "GET /api/keys/{id}/", "POST /api/keys/{id}/revoke/",
              "GET /api/users/", "PATCH /api/users/{id}/"}


def test_an_operator_never_gets_a_5xx(api_schema, portal, master_key):
    def check(case: Case) -> None:
        response = case.call(base_url=portal.url, headers={"Authorization": f"Bearer {master_key}"}, timeout=30)
        assert_harmless(response, master_key)

    assert set(each_case(api_schema, check)) >= OPERATIONS


@pytest.fixture
def unthrottled(settings: Any) -> None:
    """Every generated case reaches the authentication check: wrong keys are not counted towards a 429
    (tests/test_auth_hardening.py covers that)."""
    settings.AUTH_FAILURE_LIMIT = 0


def test_a_user_key_is_refused_everywhere(api_schema, portal, master_key, alice_key, unthrottled):
    def check(case: Case) -> None:
        response = case.call(base_url=portal.url, headers={"Authorization": f"Bearer {alice_key}"}, timeout=30)
        assert_harmless(response, master_key)
        assert_refused(response, case)

    assert set(each_case(api_schema, check, examples=8)) >= OPERATIONS


def test_no_credentials_are_refused_everywhere(api_schema, portal, master_key):
    def check(case: Case) -> None:
        if case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        response = case.call(base_url=portal.url, timeout=30)
        assert_harmless(response, master_key)
        assert_refused(response, case)

    assert set(each_case(api_schema, check, examples=8)) >= OPERATIONS


def test_a_nul_character_is_a_400_not_a_database_error(personas, master_key):
    """PostgreSQL refuses NUL in text: found by the operator fuzzing above (a 500 on PostgreSQL only)."""
    operator = Client(HTTP_AUTHORIZATION=f"Bearer {master_key}")
    assert operator.get("/api/keys/?owner=al%00ice").status_code == 400
    created = operator.post("/api/keys/", {"owner": "alice\u0000", "name": "ci"}, content_type="application/json")
    assert created.status_code == 400 and "NUL" in created.json()["detail"]
    assert operator.post("/api/keys/", '{"owner": "alice", "name": "c\\u0000i"}',
                         content_type="application/json").status_code == 400
    staff = Client()
    staff.force_login(personas.operator)
    assert staff.get("/admin/accounts/apikey/?q=%00").status_code == 400
    alice = Client()
    alice.force_login(personas.alice)
    assert alice.post("/keys/new/", {"name": "lap\x00top", "expires_in": "7"}).status_code == 400
    # Text that merely looks like an escape is fine.
    assert operator.post("/api/keys/", {"owner": "alice", "name": "100%00 sure"},
                         content_type="application/json").status_code == 201
