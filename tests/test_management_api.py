"""The operators' REST API under /api/: master key or staff session only; keys listed, created (plaintext
once) and revoked; users with their key counts; the OpenAPI schema."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import Client
from django.utils import timezone

from accounts import keys
from accounts.models import ApiKey
from gateway.models import Deployment, Provider
from tests.personas import issue


@pytest.fixture
def catalog(db):
    provider = Provider.objects.create(name="mock", kind="openai_compatible", api_base="http://127.0.0.1:9/v1")
    for name in ("gemma-3-12b", "test-model"):
        Deployment.objects.create(public_name=name, provider=provider, upstream_model=name)


@pytest.fixture
def master():
    return Client(HTTP_AUTHORIZATION=f"Bearer {settings.MASTER_KEY}")


def session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client: Client, url: str, data: dict | None = None):
    return client.post(url, json.dumps(data or {}), content_type="application/json")


NEW_KEY = {"owner": "bob", "name": "svc"}
ENDPOINTS = [
    ("get", "/api/keys/"),
    ("post", "/api/keys/"),
    ("get", "/api/keys/{key}/"),
    ("post", "/api/keys/{key}/revoke/"),
    ("get", "/api/users/"),
]


def call(client: Client, method: str, url: str, key: ApiKey):
    url = url.format(key=key.pk)
    return post(client, url, NEW_KEY) if method == "post" else client.get(url)


@pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
def test_users_sessions_get_403_and_no_data(personas, who):
    key, _ = issue(personas.alice)
    client = session(getattr(personas, who))
    for method, url in ENDPOINTS:
        response = call(client, method, url, key)
        assert response.status_code == 403, url
        assert key.prefix not in response.content.decode()
    assert ApiKey.objects.get().is_active and ApiKey.objects.count() == 1


@pytest.mark.parametrize("header", ["", "Bearer wrong", "Bearer {user_key}", "Basic YWxpY2U6eA=="])
def test_anyone_without_the_master_key_or_a_session_gets_401(personas, header):
    key, token = issue(personas.alice)
    client = Client(HTTP_AUTHORIZATION=header.format(user_key=token)) if header else Client()
    for method, url in ENDPOINTS:
        response = call(client, method, url, key)
        assert response.status_code == 401, (header, url)
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert key.prefix not in response.content.decode()
    assert ApiKey.objects.get().is_active and ApiKey.objects.count() == 1


@pytest.mark.parametrize("how", ["master", "operator"])
def test_operators_reach_every_endpoint(personas, master, how):
    key, _ = issue(personas.alice)
    client = master if how == "master" else session(personas.operator)
    statuses = [call(client, method, url, key).status_code for method, url in ENDPOINTS]
    assert statuses == [200, 201, 200, 200, 200]


def test_a_staff_session_needs_the_csrf_token_to_change_anything(personas):
    key, _ = issue(personas.alice)
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.operator)
    assert post(client, f"/api/keys/{key.pk}/revoke/").status_code == 403
    assert ApiKey.objects.get(pk=key.pk).is_active
    token = client.get("/keys/").cookies["csrftoken"].value  # any page with a form sets it
    response = client.post(f"/api/keys/{key.pk}/revoke/", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert ApiKey.objects.get(pk=key.pk).status == "revoked"


def test_creating_a_key_returns_its_plaintext_once(personas, master, catalog):
    expires = (timezone.now() + timedelta(days=10)).isoformat()
    response = post(master, "/api/keys/", {
        "owner": "bob", "name": "svc", "expires": expires, "allowed_models": ["test-model"], "rpm": 5,
        "model_limits": [{"model": "test-model", "rpd": 10}], "tags": {"team": "data"},
    })
    assert response.status_code == 201, response.content
    body = response.json()
    token = body["key"]
    assert token.startswith(f"sk-{body['prefix']}.")
    assert body["owner"] == "bob" and body["status"] == "active" and body["rpm"] == 5
    assert body["model_limits"] == [{"model": "test-model", "rpm": None, "rpd": 10, "tokens_per_day": None,
                                     "tokens_per_month": None}]
    principal = async_to_sync(keys.resolve_token)(token)
    assert principal.username == "bob" and principal.limits_for("test-model").rpd == 10
    assert principal.tags == {"team": "data"}
    listed = master.get("/api/keys/").content.decode() + master.get(f"/api/keys/{body['id']}/").content.decode()
    assert token not in listed and "secret_hash" not in listed


@pytest.mark.parametrize("change, field", [
    ({"owner": "nobody"}, "owner"),
    ({"allowed_models": ["no-such-model"]}, "allowed_models"),
    ({"expires": "2001-01-01T00:00:00Z"}, "expires"),
    ({"name": ""}, "name"),
    ({"rpm": -1}, "rpm"),
    ({"budget_duration": "7d"}, "budget_duration"),
    ({"max_budget": -1}, "max_budget"),
    ({"model_limits": [{"model": "test-model"}, {"model": "test-model"}]}, "model_limits"),
])
def test_an_invalid_key_is_refused_naming_the_field(personas, master, catalog, change, field):
    response = post(master, "/api/keys/", {"owner": "bob", "name": "svc", **change})
    assert response.status_code == 400
    assert field in response.json()
    assert ApiKey.objects.count() == 0


def test_a_key_takes_litellms_budget_names_and_shows_what_is_left(personas, master, catalog):
    response = post(master, "/api/keys/", {"owner": "bob", "name": "svc", "max_budget": 5, "budget_duration": "1d"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["max_budget"], body["budget_duration"], body["spend"], body["budget_remaining"]) == \
        (5.0, "day", 0.0, 5.0)
    principal = async_to_sync(keys.resolve_token)(body["key"])
    assert (principal.limits.budget, principal.limits.budget_period) == (5_000_000, "day")
    forever = post(master, "/api/keys/", {"owner": "bob", "name": "svc2", "max_budget": 1}).json()
    assert forever["budget_duration"] == "total"
    unlimited = post(master, "/api/keys/", {"owner": "bob", "name": "svc3"}).json()
    assert (unlimited["max_budget"], unlimited["spend"], unlimited["budget_remaining"]) == (None, None, None)


def test_a_bad_budget_duration_is_refused_listing_the_accepted_ones(personas, master, catalog):
    response = post(master, "/api/keys/", {"owner": "bob", "name": "svc", "max_budget": 5, "budget_duration": "1w"})
    assert response.status_code == 400
    message = response.json()["budget_duration"][0]
    assert "1w" in message and "1d" in message and "30d" in message and "null" in message


def test_keys_are_listed_and_filtered_by_owner_and_status(personas, master):
    issue(personas.alice, "a1")
    issue(personas.alice, "a2")[0].revoke()
    issue(personas.bob, "b1", expires=timezone.now() - timedelta(days=1))
    names = lambda query: {k["name"] for k in master.get(f"/api/keys/{query}").json()["results"]}  # noqa: E731
    assert names("") == {"a1", "a2", "b1"}
    assert names("?owner=alice") == {"a1", "a2"}
    assert names("?status=active") == {"a1"}
    assert names("?status=revoked") == {"a2"}
    assert names("?status=expired") == {"b1"}


def test_revoking_stops_the_key_and_is_idempotent(personas, master):
    key, token = issue(personas.alice)
    assert async_to_sync(keys.resolve_token)(token)
    first = post(master, f"/api/keys/{key.pk}/revoke/")
    assert first.status_code == 200 and first.json()["status"] == "revoked"
    assert async_to_sync(keys.resolve_token)(token) is None
    again = post(master, f"/api/keys/{key.pk}/revoke/")
    assert again.status_code == 200 and again.json()["revoked_at"] == first.json()["revoked_at"]
    assert post(master, "/api/keys/99999/revoke/").status_code == 404


def test_users_are_listed_with_their_keys_and_self_service_right(personas, master):
    issue(personas.alice, "a1")
    issue(personas.alice, "a2")[0].revoke()
    used, _ = issue(personas.bob, "b1")
    ApiKey.objects.touch(used.pk)
    users = {u["username"]: u for u in master.get("/api/users/").json()["results"]}
    assert set(users) == {"alice", "bob", "charlie", "operator"}
    assert (users["alice"]["keys"], users["alice"]["active_keys"]) == (2, 1)
    assert users["bob"]["last_used"] is not None and users["alice"]["last_used"] is None
    assert {name for name, u in users.items() if u["may_self_serve"]} == {"alice", "bob", "operator"}


def test_listing_users_takes_a_fixed_number_of_queries(personas, master, django_assert_max_num_queries):
    for user in personas.all():
        issue(user, "k")
    with django_assert_max_num_queries(6):
        assert master.get("/api/users/").status_code == 200
    with django_assert_max_num_queries(6):
        assert master.get("/api/keys/").status_code == 200


def test_the_openapi_schema_describes_the_endpoints(db):
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert {"/api/keys/", "/api/keys/{id}/", "/api/keys/{id}/revoke/", "/api/users/"} <= set(schema["paths"])
    created = schema["paths"]["/api/keys/"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["$ref"].endswith("/ApiKeyCreated")
    assert "masterKey" in schema["components"]["securitySchemes"]
