"""A user's key on the real /v1 API, through the official openai SDK: works, is limited to its models,
and stops working when revoked or expired. The master key always works."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from accounts.models import ApiKey
from tests.conftest import make_deployment, make_provider
from tests.personas import issue

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def models(upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, public_name="test-model", upstream_model="m1")
    make_deployment(provider, public_name="google/gemini-2.5-flash", upstream_model="m2")
    make_deployment(provider, public_name="gemma-3-12b", upstream_model="m3")
    return provider


def sdk(portal, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_a_new_key_works_and_is_refused_within_a_second_of_revocation(portal, models, personas):
    key, token = issue(personas.alice)
    client = sdk(portal, token)
    assert client.chat.completions.create(model="test-model", messages=HELLO).choices[0].message.content
    key.revoke(actor=personas.alice)
    revoked_at = time.monotonic()
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert time.monotonic() - revoked_at < 1.0
    assert caught.value.code == "invalid_api_key"
    assert caught.value.body["type"] == "authentication_error"


def test_an_expired_key_is_refused(portal, models, personas):
    _, token = issue(personas.alice, expires=timezone.now() - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(portal, token).chat.completions.create(model="test-model", messages=HELLO)
    assert caught.value.code == "invalid_api_key"


def test_a_key_that_expires_while_in_use_stops_working(portal, models, personas):
    _, token = issue(personas.alice, expires=timezone.now() + timedelta(seconds=1.5))
    client = sdk(portal, token)
    client.models.list()
    time.sleep(1.6)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_an_unknown_or_tampered_key_is_refused(portal, models, personas):
    _, token = issue(personas.alice)
    for bad in ("sk-abcdefgh." + "x" * 43, token[:-2] + "zz", "sk-nothing"):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(portal, bad).models.list()
        assert caught.value.code == "invalid_api_key"


def test_a_model_the_key_may_not_use_is_a_403_naming_it(portal, models, personas):
    _, token = issue(personas.alice, allowed_models=["test-model"])
    client = sdk(portal, token)
    client.chat.completions.create(model="test-model", messages=HELLO)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gemma-3-12b", messages=HELLO)
    assert caught.value.code == "model_not_allowed"
    assert "gemma-3-12b" in caught.value.message


def test_the_model_list_shows_only_the_keys_models(portal, models, personas):
    _, limited = issue(personas.alice, "limited", allowed_models=["gemma-3-12b", "test-model"])
    _, unlimited = issue(personas.alice, "all")
    assert [m.id for m in sdk(portal, limited).models.list()] == ["gemma-3-12b", "test-model"]
    assert [m.id for m in sdk(portal, unlimited).models.list()] == ["gemma-3-12b", "google/gemini-2.5-flash",
                                                                    "test-model"]
    with pytest.raises(openai.NotFoundError):
        sdk(portal, limited).models.retrieve("google/gemini-2.5-flash")


def test_the_master_key_always_works(portal, models, personas, client):
    key, _ = issue(personas.alice, allowed_models=["test-model"])
    key.revoke()
    assert len(client.models.list().data) == 3
    assert client.chat.completions.create(model="gemma-3-12b", messages=HELLO).choices


def test_a_user_key_streams_and_is_accepted_in_x_api_key(portal, models, personas):
    _, token = issue(personas.bob)
    stream = sdk(portal, token).chat.completions.create(model="test-model", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    response = httpx.get(f"{portal.url}/v1/models", headers={"x-api-key": token})
    assert response.status_code == 200


def test_using_a_key_records_when_it_was_last_used(portal, models, personas):
    key, token = issue(personas.alice)
    sdk(portal, token).models.list()
    deadline = time.monotonic() + 5
    while ApiKey.objects.get(pk=key.pk).last_used is None:
        assert time.monotonic() < deadline, "last_used was never written"
        time.sleep(0.05)


def test_a_deactivated_users_key_is_refused(portal, models, personas):
    _, token = issue(personas.bob)
    sdk(portal, token).models.list()
    personas.bob.is_active = False
    personas.bob.save()
    with pytest.raises(openai.AuthenticationError):
        sdk(portal, token).models.list()
