"""POST /v1/embeddings: OpenAI's shape, for OpenAI-style providers and Gemini's embedContent API."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from gateway.api.validation import parse_embeddings
from gateway.errors import GatewayError
from gateway.models import Deployment, Provider
from tests.catalog_setup import CREDENTIALS, load_builtin_catalog
from tests.conftest import make_deployment
from tests.mock_gemini import API_KEY, embedding_values
from tests.mock_upstream import Behaviour, _embedding_vector

EMBEDDING = {"mode": "embedding"}


@pytest.fixture
def builtin(portal, gemini, upstream, monkeypatch, tmp_path):
    """The built-in catalog plus an embedding model on Gemini and one on LM Studio."""
    load_builtin_catalog(
        monkeypatch,
        tmp_path,
        env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"], "LM_STUDIO_API_BASE": upstream.base_url,
             "LM_STUDIO_API_KEY": CREDENTIALS["LM_STUDIO_API_KEY"]},
        bases={"gemini": gemini.base_url},
    )
    make_deployment(Provider.objects.get(name="gemini"), public_name="google/gemini-embedding-001",
                    upstream_model="gemini-embedding-001", model_info=EMBEDDING)
    make_deployment(Provider.objects.get(name="lm_studio"), public_name="nomic-embed-text",
                    upstream_model="text-embedding-nomic-embed-text-v1.5", model_info=EMBEDDING)


def close_to(vector: list[float]) -> object:
    """Equal within float32 precision (base64 embeddings are float32)."""
    return pytest.approx(vector, abs=1e-6)


def test_an_openai_style_provider_embeds_a_batch(client, upstream, builtin):
    result = client.embeddings.create(model="nomic-embed-text", input=["first", "second"])

    assert [item.index for item in result.data] == [0, 1]
    assert result.data[0].embedding == close_to(_embedding_vector("first"))
    assert result.data[1].embedding == close_to(_embedding_vector("second"))
    assert result.usage.prompt_tokens > 0
    sent = upstream.requests_for("/embeddings")[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.json["model"] == "text-embedding-nomic-embed-text-v1.5"
    assert sent.json["input"] == ["first", "second"]
    assert sent.headers["authorization"] == f"Bearer {CREDENTIALS['LM_STUDIO_API_KEY']}"


def test_base64_is_openais_little_endian_float32(portal, master_key, upstream, builtin):
    # The openai SDK asks for base64 by default; raw HTTP shows what we send back.
    response = httpx.post(
        f"{portal.url}/v1/embeddings",
        json={"model": "nomic-embed-text", "input": "first", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {master_key}"},
    )
    assert response.status_code == 200
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == close_to(_embedding_vector("first"))


def test_float_is_a_plain_list(portal, master_key, upstream, builtin):
    response = httpx.post(
        f"{portal.url}/v1/embeddings",
        json={"model": "nomic-embed-text", "input": "first", "encoding_format": "float"},
        headers={"Authorization": f"Bearer {master_key}"},
    )
    assert response.json()["data"][0]["embedding"] == _embedding_vector("first")


def test_gemini_embeds_through_batch_embed_contents(client, gemini, builtin):
    result = client.embeddings.create(model="google/gemini-embedding-001", input=["alpha", "beta"])

    assert result.data[0].embedding == close_to(embedding_values("alpha", 8))
    assert result.data[1].embedding == close_to(embedding_values("beta", 8))
    sent = gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert sent.json["requests"] == [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "alpha"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "beta"}]}},
    ]
    assert "encoding_format" not in str(sent.json)


def test_dimensions_reach_gemini_as_output_dimensionality(client, gemini, builtin):
    result = client.embeddings.create(model="google/gemini-embedding-001", input="alpha", dimensions=4,
                                      encoding_format="float")
    assert len(result.data[0].embedding) == 4
    request = gemini.requests[-1].json["requests"][0]
    assert request.get("outputDimensionality", request.get("output_dimensionality")) == 4


def test_a_second_deployment_answers_when_the_first_fails(client, upstream, gemini, builtin):
    make_deployment(Provider.objects.get(name="lm_studio"), public_name="google/gemini-embedding-001",
                    upstream_model="backup-embedder", model_info=EMBEDDING, priority=1)
    gemini.behaviour = Behaviour(status=503)

    result = client.embeddings.create(model="google/gemini-embedding-001", input="alpha")

    assert result.data[0].embedding == close_to(_embedding_vector("alpha"))
    assert upstream.requests_for("/embeddings")[-1].json["model"] == "backup-embedder"


def test_an_upstream_rate_limit_is_a_429(client, upstream, builtin):
    upstream.behaviour = Behaviour(status=429, headers={"Retry-After": "3"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="nomic-embed-text", input="first")
    assert caught.value.response.headers["retry-after"] == "3"


def test_a_chat_model_cannot_embed(client, upstream, builtin):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="gemma-3-12b", input="first")
    assert caught.value.code == "wrong_model_mode"
    assert upstream.requests == []


def test_an_undeclared_model_is_tried(client, upstream, builtin):
    # Imported configs rarely say model_info.mode; the provider decides then.
    Deployment.objects.filter(public_name="nomic-embed-text").update(model_info={})
    from gateway import catalog

    catalog.invalidate()
    assert client.embeddings.create(model="nomic-embed-text", input="first").data


@pytest.mark.parametrize("value", ["", [], [""], ["a", 1], [[1, 2], "a"], [[]], {"text": "a"}, 42, True])
def test_an_invalid_input_names_the_field(value):
    with pytest.raises(GatewayError) as caught:
        parse_embeddings({"model": "m", "input": value})
    assert (caught.value.status, caught.value.param) == (400, "input")


def test_an_invalid_input_is_a_400_before_any_provider_is_asked(portal, master_key, upstream, builtin):
    response = httpx.post(
        f"{portal.url}/v1/embeddings",
        json={"model": "nomic-embed-text", "input": ["a", 1]},
        headers={"Authorization": f"Bearer {master_key}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert upstream.requests == []


def test_token_arrays_are_valid_input(client, upstream, builtin):
    client.embeddings.create(model="nomic-embed-text", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert upstream.requests_for("/embeddings")[-1].json["input"] == [[1, 2, 3], [4, 5]]


def test_an_unknown_encoding_format_is_a_400(portal, master_key, builtin):
    response = httpx.post(
        f"{portal.url}/v1/embeddings",
        json={"model": "nomic-embed-text", "input": "a", "encoding_format": "int8"},
        headers={"Authorization": f"Bearer {master_key}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "encoding_format"
