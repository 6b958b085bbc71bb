"""A LiteLLM config's timeouts, retries and fallbacks, honoured: per deployment (`timeout`, `stream_timeout`,
`num_retries` / `max_retries`) and for all (`router_settings`, `litellm_settings`).

Each test imports a config.yaml as an operator would (`import_config`), then calls the portal over HTTP; the
providers are the real mock upstream server, which can hang, answer late or fail.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.test import Client

from gateway.catalog.litellm_export import dump_yaml, export_config
from gateway.catalog.litellm_import import import_config, load_config
from gateway.catalog.litellm_keys import ConfigError
from gateway.models import Deployment
from tests.mock_upstream import Behaviour
from tests.personas import PASSWORD

HELLO = [{"role": "user", "content": "hi"}]


def import_yaml(text: str) -> None:
    import_config(load_config(text))


def entry(name: str, model: str, base: str, **params: Any) -> str:
    extra = "".join(f"\n      {key}: {value}" for key, value in params.items())
    return f"""
  - model_name: {name}
    litellm_params:
      model: openai/{model}
      api_base: {base}
      api_key: sk-test-upstream-key{extra}"""


def config(*entries: str, settings: str = "") -> str:
    return "model_list:" + "".join(entries) + "\n" + settings


def post(portal: Any, key: str, model: str = "test-model", *, stream: bool = False, timeout: float = 30,
         **body: Any) -> httpx.Response:
    return httpx.post(f"{portal.url}/v1/chat/completions",
                      json={"model": model, "messages": HELLO, **({"stream": True} if stream else {}), **body},
                      headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def chat_calls(upstream: Any) -> list[str]:
    return [request.json["model"] for request in upstream.requests_for("/chat/completions")]


# --- timeouts -------------------------------------------------------------------------------------------------


@pytest.fixture
def upstream_path(upstream_path, portal, master_key, upstream):
    """Both paths, with LiteLLM imported before the clock starts: its first import takes seconds (in a thread,
    which a timeout cannot stop) and would be charged to whichever timed call came first."""
    if upstream_path == "litellm":
        import_yaml(config(entry("warm-up", "warm-up", upstream.base_url)))
        assert post(portal, master_key, model="warm-up").status_code == 200
        upstream.reset()
    return upstream_path


@pytest.mark.usefixtures("upstream_path")
def test_a_deployment_with_timeout_2_whose_provider_hangs_gets_504_within_4_seconds(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "hangs", upstream.base_url, timeout=2)))
    upstream.set_behaviour("hangs", Behaviour(latency=60))
    started = time.monotonic()
    response = post(portal, master_key)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert "2s" in response.json()["error"]["message"]
    assert 1.9 <= elapsed < 4


@pytest.mark.usefixtures("upstream_path")
def test_a_timed_out_deployment_falls_back_to_the_next_like_a_5xx(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "hangs", upstream.base_url, timeout=1),
                       entry("test-model", "answers", upstream.base_url)))
    upstream.set_behaviour("hangs", Behaviour(latency=60))
    started = time.monotonic()
    response = post(portal, master_key)
    assert response.status_code == 200
    assert time.monotonic() - started < 4
    assert chat_calls(upstream) == ["hangs", "answers"]


def test_a_whole_answer_that_drips_in_slower_than_the_timeout_is_cut(portal, master_key, upstream):
    # The head comes at once; the body takes ~3 s: the timeout bounds the whole answer, not the first byte.
    import_yaml(config(entry("test-model", "drips", upstream.base_url, timeout=1.5)))
    upstream.set_behaviour("drips", Behaviour(body_delay=0.4, body_pieces=8))
    started = time.monotonic()
    response = post(portal, master_key)
    assert response.status_code == 504
    assert time.monotonic() - started < 3


@pytest.mark.usefixtures("upstream_path")
def test_a_stream_timeout_bounds_the_first_chunk_only(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "slow-start", upstream.base_url, stream_timeout=1),
                       entry("long-stream", "long-stream", upstream.base_url, stream_timeout=1)))
    upstream.set_behaviour("slow-start", Behaviour(latency=60))
    started = time.monotonic()
    late = post(portal, master_key, stream=True)
    assert late.status_code == 504 and time.monotonic() - started < 3
    assert late.json()["error"]["code"] == "upstream_timeout"

    # First chunk at once, then ~2.5 s of chunks: longer than the stream timeout, and complete.
    upstream.set_behaviour("long-stream", Behaviour(chunk_delay=0.5, chunks=5, reply="one two three four five"))
    started = time.monotonic()
    long = post(portal, master_key, model="long-stream", stream=True)
    assert long.status_code == 200
    assert time.monotonic() - started >= 2
    assert long.text.rstrip().endswith("data: [DONE]")


def test_router_settings_timeout_applies_to_deployments_without_their_own(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "hangs", upstream.base_url),
                       settings="router_settings:\n  timeout: 1\n"))
    upstream.set_behaviour("hangs", Behaviour(latency=60))
    started = time.monotonic()
    assert post(portal, master_key).status_code == 504
    assert time.monotonic() - started < 3


def test_litellm_settings_request_timeout_is_the_default_too(transactional_db, upstream):
    import_yaml(config(entry("a", "a", upstream.base_url), entry("b", "b", upstream.base_url, timeout=7),
                       settings="litellm_settings:\n  request_timeout: 3\n"))
    from gateway import catalog

    snapshot = catalog.build_snapshot()
    assert snapshot.routes("a")[0].timeout == 3 and snapshot.routes("a")[0].stream_timeout == 3
    assert snapshot.routes("b")[0].timeout == 7


# --- retries --------------------------------------------------------------------------------------------------


def test_num_retries_0_sends_exactly_one_upstream_call(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "fails", upstream.base_url, num_retries=0)))
    upstream.set_behaviour("fails", Behaviour(status=500))
    assert post(portal, master_key).status_code == 502
    assert chat_calls(upstream) == ["fails"]


def test_num_retries_calls_a_failing_deployment_again_before_giving_up(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "flaky", upstream.base_url, max_retries=2)))
    upstream.set_behaviour("flaky", Behaviour(status=503, fail_times=2))
    response = post(portal, master_key)
    assert response.status_code == 200
    assert chat_calls(upstream) == ["flaky", "flaky", "flaky"]


def test_router_settings_num_retries_applies_and_a_429_is_never_retried(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "limited", upstream.base_url),
                       settings="router_settings:\n  num_retries: 3\n"))
    upstream.set_behaviour("limited", Behaviour(status=429, headers={"Retry-After": "30"}))
    assert post(portal, master_key).status_code == 429
    assert chat_calls(upstream) == ["limited"]


def test_a_retry_counts_against_the_deployments_quota(portal, master_key, upstream):
    # rpm 2: the first call and one retry fit; the second retry would be a third request this minute.
    import_yaml(config(entry("test-model", "fails", upstream.base_url, num_retries=5, rpm=2)))
    upstream.set_behaviour("fails", Behaviour(status=500))
    assert post(portal, master_key).status_code == 502
    assert chat_calls(upstream) == ["fails", "fails"]


# --- fallbacks --------------------------------------------------------------------------------------------------


def test_router_settings_fallbacks_move_a_request_when_all_of_a_models_deployments_fail(portal, master_key,
                                                                                          upstream):
    import_yaml(config(entry("big", "big-1", upstream.base_url), entry("big", "big-2", upstream.base_url, timeout=1),
                       entry("small", "small", upstream.base_url),
                       settings="router_settings:\n  fallbacks:\n    - big: [small]\n"))
    upstream.set_behaviour("big-1", Behaviour(status=500))
    upstream.set_behaviour("big-2", Behaviour(latency=60))
    response = post(portal, master_key, model="big")
    assert response.status_code == 200
    assert chat_calls(upstream) == ["big-1", "big-2", "small"]


def test_context_window_fallbacks_take_a_prompt_too_long_for_the_model(portal, master_key, upstream):
    import_yaml(config(entry("short", "short", upstream.base_url), entry("long", "long", upstream.base_url),
                       settings="litellm_settings:\n  context_window_fallbacks: [{short: [long]}]\n"))
    too_long = {"error": {"message": "This model's maximum context length is 8192 tokens.", "type":
                          "invalid_request_error", "code": "context_length_exceeded"}}
    upstream.set_behaviour("short", Behaviour(status=400, error_body=too_long))
    response = post(portal, master_key, model="short")
    assert response.status_code == 200
    assert chat_calls(upstream) == ["short", "long"]
    # Any other 400 stays the client's error: no fallback.
    upstream.reset()
    upstream.set_behaviour("short", Behaviour(status=400))
    assert post(portal, master_key, model="short").status_code == 400
    assert chat_calls(upstream) == ["short"]


def test_allowed_fails_and_cooldown_time_park_a_failing_deployment(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "broken", upstream.base_url), entry("test-model", "ok", upstream.base_url),
                       settings="router_settings:\n  allowed_fails: 0\n  cooldown_time: 120\n"))
    upstream.set_behaviour("broken", Behaviour(status=500))
    assert post(portal, master_key).status_code == 200
    assert post(portal, master_key).status_code == 200
    # Parked for cooldown_time after its first failure: the second request went straight to "ok".
    assert chat_calls(upstream) == ["broken", "ok", "ok"]


# --- litellm_settings.drop_params ---------------------------------------------------------------------------------


def test_drop_params_reaches_litellm_and_never_the_provider(portal, master_key, upstream):
    import_yaml(config(entry("test-model", "m", upstream.base_url),
                       settings="litellm_settings:\n  drop_params: true\n"))
    from gateway import catalog

    assert catalog.build_snapshot().routes("test-model")[0].params["drop_params"] is True
    assert post(portal, master_key).status_code == 200
    assert "drop_params" not in upstream.requests_for("/chat/completions")[-1].json


# --- import, export, admin ------------------------------------------------------------------------------------


def test_timeouts_and_retries_are_columns_written_back_on_export(transactional_db, upstream):
    import_yaml(config(entry("test-model", "m", upstream.base_url, timeout=2, stream_timeout=0.5, max_retries=1)))
    deployment = Deployment.objects.get()
    assert (deployment.timeout, deployment.stream_timeout, deployment.num_retries) == (2, 0.5, 1)
    assert deployment.litellm_params == {}
    [exported] = export_config()["model_list"]
    assert exported["litellm_params"]["timeout"] == 2
    assert exported["litellm_params"]["stream_timeout"] == 0.5
    assert exported["litellm_params"]["num_retries"] == 1
    # Exported (with the literal key, so the provider is recognised) and imported again: the same row, unchanged.
    again = import_config(load_config(dump_yaml(export_config(include_secrets=True))))
    assert again.deployments.unchanged == 1


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      timeout: soon\n", 5,
     "model_list[0].litellm_params.timeout must be a positive number of seconds, got 'soon'"),
    ("model_list: []\nrouter_settings:\n  num_retries: -1\n", 3,
     "router_settings.num_retries must be a non-negative integer (at most 100), got -1"),
    ("model_list: []\nrouter_settings:\n  fallbacks: {big: small}\n", 3,
     "router_settings.fallbacks must be a list of {model: [fallback models]}"),
    ("model_list: []\nlitellm_settings:\n  drop_params: sometimes\n", 3,
     "litellm_settings.drop_params must be true or false, got 'sometimes'"),
    ("model_list: []\ninclude:\n  - models.yaml\n", 2, "include is not supported: the portal imports one file"),
    ("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n"
     "      litellm_credential_name: azure-creds\n", 5,
     "model_list[0].litellm_params.litellm_credential_name is not supported: give the key as api_key"),
])
def test_a_wrong_value_for_an_honoured_key_is_refused_with_its_line(db, text, line, reason):
    with pytest.raises(ConfigError) as refused:
        load_config(text)
    assert refused.value.line == line
    assert f"config.yaml line {line}: {reason}" in str(refused.value)


def test_operators_see_and_edit_the_timeouts_in_the_admin(personas, upstream):
    from tests.conftest import make_deployment, make_provider

    deployment = make_deployment(make_provider(upstream))
    client = Client()
    client.force_login(personas.operator.__class__.objects.create_superuser("root", "", PASSWORD))
    url = f"/admin/gateway/deployment/{deployment.pk}/change/"
    page = client.get(url).content.decode()
    assert 'name="timeout"' in page and 'name="stream_timeout"' in page and 'name="num_retries"' in page
    form = {"public_name": "test-model", "provider": deployment.provider_id, "upstream_model": "mock-1",
            "priority": 0, "enabled": "on", "max_wait_seconds": 0, "litellm_params": "{}", "model_info": "{}",
            "extra": "{}", "timeout": "2.5", "stream_timeout": "", "num_retries": "1", "billing": "auto"}
    assert client.post(url, form).status_code == 302
    deployment.refresh_from_db()
    assert (deployment.timeout, deployment.stream_timeout, deployment.num_retries) == (2.5, None, 1)
