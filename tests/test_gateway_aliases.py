"""The routes without /v1 (as some apps call them) answer exactly as their /v1 routes, for an app: no cookie, no
CSRF token. They must reach the gateway's handler, not the admin's middleware (whose CSRF check would refuse
every POST), and the ASGI entry point learns them from gateway/urls.py, so none can be forgotten."""

from __future__ import annotations

import httpx
import pytest

from gateway.models import Provider
from portal.lean import gateway_prefixes
from tests.catalog_setup import CREDENTIALS, load_builtin_catalog
from tests.conftest import make_deployment

TTS = "google/gemini-2.5-flash-tts"


@pytest.fixture
def models(portal, deployment, gemini, upstream, monkeypatch, tmp_path):
    """A chat model (test-model), an embedding model and a text-to-speech model."""
    load_builtin_catalog(
        monkeypatch, tmp_path,
        env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"], "LM_STUDIO_API_BASE": upstream.base_url,
             "LM_STUDIO_API_KEY": CREDENTIALS["LM_STUDIO_API_KEY"]},
        bases={"gemini": gemini.base_url},
    )
    make_deployment(Provider.objects.get(name="lm_studio"), public_name="nomic-embed-text",
                    upstream_model="text-embedding-nomic-embed-text-v1.5", model_info={"mode": "embedding"})


def as_an_app(portal, master_key, method, path, body=None):
    # A fresh client each time: no cookie is ever kept, and no CSRF token is ever sent.
    with httpx.Client(base_url=portal.url, headers={"Authorization": f"Bearer {master_key}"}, timeout=30) as http:
        return http.request(method, path, json=body)


CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hello"}]}
EMBED = {"model": "nomic-embed-text", "input": ["first", "second"]}
SPEECH = {"model": TTS, "voice": "alloy", "input": "Hello there!", "response_format": "wav"}


@pytest.mark.parametrize(("method", "alias", "body"), [
    ("POST", "/chat/completions", CHAT),
    ("POST", "/embeddings", EMBED),
    ("POST", "/audio/speech", SPEECH),
    ("GET", "/models", None),
])
def test_an_alias_answers_an_app_as_its_v1_route_does(portal, master_key, models, method, alias, body):
    via_v1 = as_an_app(portal, master_key, method, "/v1" + alias, body)
    via_alias = as_an_app(portal, master_key, method, alias, body)

    assert via_v1.status_code == via_alias.status_code == 200, via_alias.text[:300]
    assert via_alias.headers["content-type"] == via_v1.headers["content-type"]
    assert "set-cookie" not in via_alias.headers  # the admin's middleware never saw it
    assert via_alias.headers["x-request-id"] != via_v1.headers["x-request-id"]
    if alias == "/chat/completions":  # its id and timestamp are the call's own
        v1, other = via_v1.json(), via_alias.json()
        assert other["choices"] == v1["choices"] and other["model"] == v1["model"]
    else:
        assert via_alias.content == via_v1.content


def test_an_alias_refuses_a_wrong_key_with_the_envelope_not_a_csrf_page(portal, models):
    response = httpx.post(f"{portal.url}/embeddings", json=EMBED, headers={"Authorization": "Bearer sk-wrong"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-request-id"]


def test_every_gateway_route_is_covered_by_the_prefixes_the_entry_point_uses():
    from gateway import urls

    paths = ["/" + str(entry.pattern).split("<")[0].removeprefix("^").split("(")[0] for entry in urls.urlpatterns]
    assert all(path.startswith(gateway_prefixes()) for path in paths)
    for path in ("/admin/", "/keys/", "/api/keys/", "/static/admin/css/base.css"):
        assert not path.startswith(gateway_prefixes()), path
