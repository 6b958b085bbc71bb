"""GET /v1/models and /v1/models/{id}: enabled public names in OpenAI's list shape."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import make_deployment, make_provider


@pytest.fixture
def catalog(upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, public_name="google/gemini-2.5-flash", upstream_model="a")
    make_deployment(provider, public_name="google/gemini-2.5-flash", upstream_model="b", priority=1)
    make_deployment(provider, public_name="gemma-3-12b", upstream_model="c")
    make_deployment(provider, public_name="switched-off", upstream_model="d", enabled=False)
    return provider


def test_it_lists_each_enabled_public_name_once(client, catalog):
    ids = [m.id for m in client.models.list()]
    assert ids == ["gemma-3-12b", "google/gemini-2.5-flash"]


def test_it_hides_models_of_a_disabled_provider(client, catalog):
    catalog.enabled = False
    catalog.save()
    assert [m.id for m in client.models.list()] == []


def test_it_retrieves_a_model_whose_name_has_a_slash(client, catalog):
    model = client.models.retrieve("google/gemini-2.5-flash")
    assert model.id == "google/gemini-2.5-flash"
    assert model.owned_by == "mock"


def test_retrieving_an_unknown_model_is_a_404(client, catalog):
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("switched-off")


def test_listing_needs_a_key(portal, catalog):
    anonymous = openai.OpenAI(base_url=f"{portal.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
