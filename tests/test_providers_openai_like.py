"""OpenRouter, GitHub Models, LM Studio and generic OpenAI-compatible providers, each on a mock at its real path.

The mock speaks OpenAI's protocol under the provider's own base path (OpenRouter's /api/v1, GitHub Models'
/inference), so a wrong path, header, key or model id fails here as it would against the provider.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.models import Deployment, Provider
from gateway.upstreams import providers
from tests.catalog_setup import CREDENTIALS, all_credentials, load_builtin_catalog
from tests.conftest import make_deployment
from tests.mock_upstream import Behaviour, MockUpstream

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


class ProviderPaths(MockUpstream):
    """The OpenAI mock, served under a provider's base path too (recorded requests keep the full path)."""

    prefixes = ("/api", "/inference")

    async def _dispatch(self, conn: Any, request: Any, keep_alive: bool) -> bool:
        for prefix in self.prefixes:
            if request.path.startswith(prefix + "/"):
                request = dataclasses.replace(request, path=request.path[len(prefix):])
                break
        return await super()._dispatch(conn, request, keep_alive)


@pytest.fixture(scope="module")
def mock_server() -> Iterator[ProviderPaths]:
    server = ProviderPaths().start()
    yield server
    server.stop()


@pytest.fixture
def mock(mock_server: ProviderPaths) -> ProviderPaths:
    mock_server.reset()
    return mock_server


@pytest.fixture
def builtin(portal, mock, monkeypatch, tmp_path):
    """The built-in catalog, every provider pointed at the mock the way an operator overrides api_base;
    LM Studio through LM_STUDIO_API_BASE, as users configure it."""
    load_builtin_catalog(
        monkeypatch,
        tmp_path,
        env=all_credentials(LM_STUDIO_API_BASE=f"{mock.url}/v1"),
        bases={"openrouter": f"{mock.url}/api/v1", "github_models": f"{mock.url}/inference"},
    )


def chat_and_stream(client: openai.OpenAI, model: str) -> tuple[str, str]:
    answer = client.chat.completions.create(model=model, messages=HELLO, max_tokens=20)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model=model, messages=HELLO, stream=True)
        if chunk.choices
    )
    return answer.choices[0].message.content or "", streamed


# --- defaults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "base"),
    [
        ("openrouter", "https://openrouter.ai/api/v1"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta"),
        ("github_models", "https://models.github.ai/inference"),
        ("openai", "https://api.openai.com/v1"),
        ("openai_compatible", ""),
    ],
)
def test_each_kind_calls_its_providers_current_endpoint_by_default(kind, base):
    assert providers.api_base_for(Provider(name="p", kind=kind)) == base


def test_a_providers_own_api_base_overrides_the_kinds_default():
    provider = Provider(name="p", kind="github_models", api_base="https://models.example.com/inference")
    assert providers.api_base_for(provider) == "https://models.example.com/inference"


def test_lm_studio_takes_its_address_from_lm_studio_api_base(monkeypatch):
    monkeypatch.setenv("LM_STUDIO_API_BASE", "http://host.docker.internal:1234/v1")
    assert providers.api_base_for(Provider(name="p", kind="lm_studio")) == "http://host.docker.internal:1234/v1"
    monkeypatch.setenv("LM_STUDIO_API_BASE", "http://host.docker.internal:1234")
    # Written without /v1, as LM Studio's own UI shows the address.
    assert providers.api_base_for(Provider(name="p", kind="lm_studio")) == "http://host.docker.internal:1234/v1"
    monkeypatch.delenv("LM_STUDIO_API_BASE")
    assert providers.api_base_for(Provider(name="p", kind="lm_studio")) == ""


def test_extra_headers_of_provider_and_deployment_are_merged_header_by_header():
    merged = providers.merge_params(
        {"extra_headers": {"X-Team": "a", "X-Env": "prod"}, "temperature": 0.2},
        {"extra_headers": {"X-Team": "b"}, "top_p": 0.5},
    )
    assert merged == {"extra_headers": {"X-Team": "b", "X-Env": "prod"}, "temperature": 0.2, "top_p": 0.5}


# --- OpenRouter -----------------------------------------------------------------------------------


def test_openrouter_gets_its_path_key_model_id_and_app_headers(client, mock, builtin):
    mock.behaviour = Behaviour(reply="hi from openrouter")
    answer, streamed = chat_and_stream(client, "openrouter/gpt-oss-20b")

    assert (answer, streamed) == ("hi from openrouter", "hi from openrouter")
    sent = mock.requests_for("/chat/completions")
    assert [r.path for r in sent] == ["/api/v1/chat/completions"] * 2
    for request in sent:
        assert request.json["model"] == "openai/gpt-oss-20b:free"
        assert request.headers["authorization"] == f"Bearer {CREDENTIALS['OPENROUTER_API_KEY']}"
        assert request.headers["x-title"] == "LLM Portal"
        assert request.headers["http-referer"] == ""  # not LiteLLM's https://litellm.ai
    assert sent[0].json["messages"] == HELLO
    assert sent[0].json["max_tokens"] == 20
    assert sent[1].json["stream"] is True


def test_openrouter_app_name_and_site_url_are_configurable(client, mock, builtin, settings):
    settings.OPENROUTER_APP_NAME = "Acme Tools"
    settings.OPENROUTER_SITE_URL = "https://tools.acme.example"
    client.chat.completions.create(model="openrouter/gpt-oss-20b", messages=HELLO)
    sent = mock.requests[-1]
    assert sent.headers["x-title"] == "Acme Tools"
    assert sent.headers["http-referer"] == "https://tools.acme.example"


def test_a_providers_extra_headers_go_to_openrouter_too(client, mock, builtin):
    openrouter = Provider.objects.get(name="openrouter")
    openrouter.extra = {"extra_headers": {"X-Title": "Override", "X-Trace": "1"}}
    openrouter.save()
    client.chat.completions.create(model="openrouter/gpt-oss-20b", messages=HELLO)
    sent = mock.requests[-1]
    assert (sent.headers["x-title"], sent.headers["x-trace"]) == ("Override", "1")


def test_openrouter_rate_limits_reach_the_client_as_429_with_retry_after(client, mock, builtin):
    mock.behaviour = Behaviour(status=429, headers={"Retry-After": "7"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="openrouter/gpt-oss-20b", messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "7"


# --- GitHub Models --------------------------------------------------------------------------------


def test_github_models_gets_the_inference_path_the_token_and_the_publisher_model_id(client, mock, builtin):
    answer, streamed = chat_and_stream(client, "github/gpt-4o-mini")

    assert answer == streamed == "Hello from mock"
    sent = mock.requests_for("/chat/completions")
    assert [r.path for r in sent] == ["/inference/chat/completions"] * 2
    assert {r.json["model"] for r in sent} == {"openai/gpt-4o-mini"}
    assert {r.headers["authorization"] for r in sent} == {f"Bearer {CREDENTIALS['GITHUB_API_KEY']}"}
    assert "x-title" not in sent[0].headers


def test_a_rejected_github_token_is_an_upstream_auth_error(client, mock, builtin):
    mock.behaviour = Behaviour(status=401)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="github/gpt-5", messages=HELLO)
    assert caught.value.code == "upstream_auth_error"
    assert CREDENTIALS["GITHUB_API_KEY"] not in caught.value.message


# --- LM Studio ------------------------------------------------------------------------------------


def test_lm_studio_is_reached_at_lm_studio_api_base_with_its_key(client, mock, builtin):
    answer, streamed = chat_and_stream(client, "gemma-3-12b")

    assert answer == streamed == "Hello from mock"
    sent = mock.requests_for("/chat/completions")
    assert [r.path for r in sent] == ["/v1/chat/completions"] * 2
    assert {r.json["model"] for r in sent} == {"google/gemma-3-12b"}
    assert {r.headers["authorization"] for r in sent} == {f"Bearer {CREDENTIALS['LM_STUDIO_API_KEY']}"}


def test_lm_studio_down_is_a_502_that_names_the_provider(client, mock, builtin, monkeypatch):
    from gateway import catalog
    from tests.conftest import free_port

    monkeypatch.setenv("LM_STUDIO_API_BASE", f"http://127.0.0.1:{free_port()}/v1")
    catalog.invalidate()
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="qwen3-coder-30b", messages=HELLO)
    assert caught.value.status_code == 502
    assert "lm_studio" in caught.value.message


# --- generic OpenAI-compatible (vLLM, Ollama, …) --------------------------------------------------


def test_an_openai_compatible_server_gets_the_model_id_as_is(client, mock, transactional_db):
    provider = Provider(name="ollama", kind="openai_compatible", api_base=f"{mock.url}/v1")
    provider.save()
    make_deployment(provider, public_name="llama3", upstream_model="llama3.1:8b-instruct-q4_K_M")

    answer, streamed = chat_and_stream(client, "llama3")

    assert answer == streamed == "Hello from mock"
    sent = mock.requests_for("/chat/completions")
    assert {r.path for r in sent} == {"/v1/chat/completions"}
    assert {r.json["model"] for r in sent} == {"llama3.1:8b-instruct-q4_K_M"}
    # No key configured: local servers accept any, but the OpenAI client insists on sending one.
    assert sent[0].headers["authorization"] == "Bearer no-key"


def test_an_upstream_400_is_passed_on_and_not_retried_elsewhere(client, mock, builtin):
    backup = Provider.objects.get(name="openrouter")
    make_deployment(backup, public_name="gemma-3-12b", upstream_model="google/gemma-3-12b-it:free", priority=1)
    mock.set_behaviour("google/gemma-3-12b", Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gemma-3-12b", messages=HELLO)
    assert [r.json["model"] for r in mock.requests_for("/chat/completions")] == ["google/gemma-3-12b"]


def test_a_failing_provider_falls_back_to_the_next_deployment_of_the_name(client, mock, builtin):
    backup = Provider.objects.get(name="openrouter")
    make_deployment(backup, public_name="gemma-3-12b", upstream_model="google/gemma-3-12b-it:free", priority=1)
    mock.set_behaviour("google/gemma-3-12b", Behaviour(status=503))
    mock.set_behaviour("google/gemma-3-12b-it:free", Behaviour(reply="from openrouter"))

    answer = client.chat.completions.create(model="gemma-3-12b", messages=HELLO)

    assert answer.choices[0].message.content == "from openrouter"
    assert [r.path for r in mock.requests_for("/chat/completions")] == [
        "/v1/chat/completions", "/api/v1/chat/completions"
    ]


def test_deployments_of_a_disabled_provider_are_not_served(client, mock, builtin):
    Provider.objects.get(name="github_models").set_enabled_by_operator(False)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="github/gpt-4o", messages=HELLO)
    assert mock.requests == []
    assert Deployment.objects.filter(public_name="github/gpt-4o").exists()


# --- embeddings on these kinds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "upstream_model", "path", "key"),
    [
        ("github_models", "openai/text-embedding-3-small", "/inference/embeddings", "GITHUB_API_KEY"),
        ("openrouter", "openai/text-embedding-3-small", "/api/v1/embeddings", "OPENROUTER_API_KEY"),
        ("lm_studio", "text-embedding-nomic-embed-text-v1.5", "/v1/embeddings", "LM_STUDIO_API_KEY"),
    ],
)
def test_embeddings_reach_each_kind_at_its_path(client, mock, builtin, provider, upstream_model, path, key):
    make_deployment(Provider.objects.get(name=provider), public_name="embedder", upstream_model=upstream_model,
                    model_info={"mode": "embedding"})

    result = client.embeddings.create(model="embedder", input=["one", "two"])

    assert len(result.data) == 2
    sent = mock.requests_for("/embeddings")[-1]
    assert sent.path == path
    assert sent.json["model"] == upstream_model
    assert sent.headers["authorization"] == f"Bearer {CREDENTIALS[key]}"
