"""Egress proxies: HTTPS_PROXY / HTTP_PROXY / NO_PROXY as curl reads them, and a provider's own proxy URL.

A real forwarding proxy runs as its own process (tests/forward_proxy.py) and reports what it forwarded. The
upstream mocks listen on 127.0.0.1; "localhost" names the same servers, so one test can have a host that must go
through the proxy and another that NO_PROXY sends direct. The tests' own calls to the portal never use a proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from gateway.models import Provider
from tests.catalog_setup import CREDENTIALS, load_builtin_catalog
from tests.conftest import free_port, make_deployment, make_provider
from tests.forward_proxy import ForwardProxy
from tests.mock_upstream import Behaviour

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                   "NO_PROXY")
HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def proxy_server() -> Iterator[ForwardProxy]:
    with ForwardProxy(free_port()).running() as proxy:
        yield proxy


@pytest.fixture
def proxy(proxy_server: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> ForwardProxy:
    """The proxy with nothing seen yet, and no proxy variable set unless the test sets it."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    proxy_server.reset()
    return proxy_server


def chat(portal: Any, key: str, model: str, stream: bool) -> str:
    """The answer's text, streamed or not; the test's own client ignores the proxy variables."""
    body = {"model": model, "messages": HELLO, "stream": stream}
    with httpx.Client(trust_env=False, timeout=30) as http:
        response = http.post(f"{portal.url}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    assert "data: [DONE]" in response.text
    events = [orjson.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    assert not any("error" in event for event in events), response.text
    return "".join(c["delta"].get("content") or "" for event in events for c in event.get("choices") or [])


def localhost(url: str) -> str:
    return url.replace("127.0.0.1", "localhost")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_passthrough_call_goes_through_the_environments_proxy(portal, master_key, upstream, deployment, proxy,
                                                               monkeypatch, variable, stream):
    upstream.behaviour = Behaviour(reply="via the proxy")
    monkeypatch.setenv(variable, proxy.url)
    assert "via the proxy" in chat(portal, master_key, "test-model", stream)
    assert proxy.seen() == [f"POST 127.0.0.1:{upstream.port}/v1/chat/completions"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_upstream_listed_in_no_proxy_is_reached_directly(portal, master_key, upstream, deployment, proxy,
                                                            monkeypatch, stream):
    far = make_provider(upstream, name="far")
    far.api_base = localhost(upstream.base_url)
    far.save()
    make_deployment(far, public_name="far-model")
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")

    assert chat(portal, master_key, "test-model", stream)
    assert proxy.seen() == []  # 127.0.0.1 is in NO_PROXY
    assert chat(portal, master_key, "far-model", stream)
    assert proxy.seen() == [f"POST localhost:{upstream.port}/v1/chat/completions"]


def test_an_https_proxy_is_not_used_for_an_http_upstream(portal, master_key, upstream, deployment, proxy,
                                                         monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    assert chat(portal, master_key, "test-model", stream=False)
    assert proxy.seen() == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_providers_own_proxy_wins_over_the_environment(portal, master_key, upstream, deployment, proxy,
                                                         monkeypatch, stream):
    monkeypatch.setenv("NO_PROXY", "*")
    provider = deployment.provider
    provider.proxy_url = proxy.url
    provider.save()

    assert chat(portal, master_key, "test-model", stream)
    assert proxy.seen() == [f"POST 127.0.0.1:{upstream.port}/v1/chat/completions"]


@pytest.fixture
def gemini_far(portal, gemini, monkeypatch, tmp_path):
    """The built-in catalog's Gemini provider (the LiteLLM path) at the mock, named as localhost."""
    load_builtin_catalog(monkeypatch, tmp_path, env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"]},
                         bases={"gemini": localhost(gemini.base_url)})


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_call_on_the_litellm_path_goes_through_the_environments_proxy(portal, master_key, gemini, gemini_far,
                                                                        proxy, monkeypatch, stream):
    gemini.behaviour = Behaviour(reply="Blue")
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # not localhost: the Gemini provider's host

    assert "Blue" in chat(portal, master_key, "google/gemini-2.5-flash", stream)
    method = "streamGenerateContent" if stream else "generateContent"
    assert proxy.seen() == [f"POST localhost:{gemini.port}/v1beta/models/gemini-2.5-flash:{method}"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_litellm_path_upstream_listed_in_no_proxy_is_reached_directly(portal, master_key, gemini, gemini_far,
                                                                        proxy, monkeypatch, stream):
    gemini.behaviour = Behaviour(reply="Blue")
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("no_proxy", "localhost")

    assert "Blue" in chat(portal, master_key, "google/gemini-2.5-flash", stream)
    assert proxy.seen() == []
    assert gemini.requests  # it was reached, directly


def test_a_litellm_path_provider_with_its_own_proxy_uses_it(portal, master_key, gemini, gemini_far, proxy):
    gemini.behaviour = Behaviour(reply="Blue")
    provider = Provider.objects.get(name="gemini")
    provider.proxy_url = proxy.url
    provider.save()

    assert chat(portal, master_key, "google/gemini-2.5-flash", stream=False) == "Blue"
    assert proxy.seen() == [f"POST localhost:{gemini.port}/v1beta/models/gemini-2.5-flash:generateContent"]


def test_the_admin_rejects_a_proxy_url_that_is_not_one(transactional_db):
    from django.core.exceptions import ValidationError

    provider = Provider(name="p", kind="openai_compatible", api_base="http://127.0.0.1:1/v1",
                        proxy_url="socks://proxy:1080")
    with pytest.raises(ValidationError) as caught:
        provider.full_clean()
    assert "proxy_url" in caught.value.message_dict


def test_copilots_token_exchange_and_chat_go_through_the_environments_proxy(portal, master_key, github, proxy,
                                                                            monkeypatch):
    from gateway.models import CopilotAuth

    provider = Provider.objects.create(name="copilot", kind="github_copilot")
    make_deployment(provider, public_name="copilot/gpt-4.1", upstream_model="gpt-4.1")
    CopilotAuth.for_provider(provider).connect(github.issue_github_token(), source="device_flow")
    monkeypatch.setenv("http_proxy", proxy.url)

    assert chat(portal, master_key, "copilot/gpt-4.1", stream=False) == "Hello from Copilot"
    port = github.url.rsplit(":", 1)[1]
    assert proxy.seen() == [f"GET 127.0.0.1:{port}/copilot_internal/v2/token",
                            f"POST 127.0.0.1:{port}/chat/completions"]


def test_the_copilot_device_login_goes_through_the_providers_proxy(portal, github, proxy):
    from gateway.upstreams import copilot

    provider = Provider.objects.create(name="copilot", kind="github_copilot", proxy_url=proxy.url)
    copilot.start_connect(provider)

    port = github.url.rsplit(":", 1)[1]
    assert proxy.seen() == [f"POST 127.0.0.1:{port}/login/device/code"]


@pytest.mark.parametrize(("env", "url", "expected"), [
    ({"HTTPS_PROXY": "http://p:3128"}, "https://openrouter.ai/api/v1", "http://p:3128"),
    ({"HTTPS_PROXY": "http://p:3128"}, "http://lmstudio:1234/v1", None),
    ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "https://x.org", "http://lower:1"),
    ({"HTTPS_PROXY": "p:3128"}, "https://x.org", "http://p:3128"),  # curl's default scheme for a bare host:port
    ({"ALL_PROXY": "http://all:1"}, "https://x.org", "http://all:1"),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".lan,10.0.0.5"}, "https://box.lan/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".lan,10.0.0.5"}, "https://10.0.0.5:8443/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "lan"}, "https://box.lan/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.lan"}, "https://box.lan/v1", "http://p:1"),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "box.lan:8443"}, "https://box.lan:8443/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, "https://x.org", None),
], ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_the_proxy_of_a_url_follows_curls_reading_of_the_environment(monkeypatch, env, url, expected):
    import yarl

    from gateway.upstreams import client

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert client.proxy_for(yarl.URL(url)) == expected
    assert client.proxy_for(yarl.URL(url), "http://own:9") == "http://own:9"  # a provider's own proxy wins
