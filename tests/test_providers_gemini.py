"""Google Gemini through its native API (generateContent / streamGenerateContent), against tests/mock_gemini.py."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from gateway import catalog
from gateway.models import Provider
from tests.catalog_setup import CREDENTIALS, load_builtin_catalog
from tests.mock_gemini import API_KEY, gemini_error, proto_field, quota_exhausted
from tests.mock_upstream import Behaviour

CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Colour of the sky?"},
]


@pytest.fixture
def builtin(portal, gemini, monkeypatch, tmp_path):
    """The built-in catalog with only GEMINI_API_KEY set, Gemini pointed at the mock."""
    load_builtin_catalog(monkeypatch, tmp_path, env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"]},
                         bases={"gemini": gemini.base_url})


def test_a_chat_completion_is_a_generate_content_call(client, gemini, builtin):
    gemini.behaviour = Behaviour(reply="Blue")
    result = client.chat.completions.create(
        model="google/gemini-2.5-flash", messages=CONVERSATION, max_tokens=50, temperature=0.3
    )

    assert result.choices[0].message.content == "Blue"
    assert result.choices[0].finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6, 1)  # as Gemini counted them
    sent = gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert "authorization" not in sent.headers
    body = sent.json
    # The system message becomes systemInstruction; the assistant turn becomes role "model".
    assert proto_field(body, "systemInstruction") == {"parts": [{"text": "Answer in one word."}]}
    assert [(c["role"], c["parts"]) for c in body["contents"]] == [
        ("user", [{"text": "Hi"}]),
        ("model", [{"text": "Hello"}]),
        ("user", [{"text": "Colour of the sky?"}]),
    ]
    config = proto_field(body, "generationConfig")
    assert proto_field(config, "maxOutputTokens") == 50
    assert config["temperature"] == 0.3


def test_a_stream_is_stream_generate_content_with_sse(client, gemini, builtin):
    gemini.behaviour = Behaviour(reply="The sky is blue")
    chunks = list(client.chat.completions.create(
        model="google/gemini-2.5-pro", messages=CONVERSATION, stream=True, stream_options={"include_usage": True}
    ))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The sky is blue"
    assert chunks[-1].usage.completion_tokens == 4
    sent = gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert sent.query == "alt=sse"
    assert sent.headers["x-goog-api-key"] == API_KEY


def test_max_tokens_cut_is_reported_as_length(client, gemini, builtin):
    gemini.behaviour = Behaviour(reply="one two three four five")
    result = client.chat.completions.create(model="google/gemini-2.5-flash-lite", messages=CONVERSATION, max_tokens=2)
    assert result.choices[0].message.content == "one two"
    assert result.choices[0].finish_reason == "length"


def test_a_used_up_daily_quota_is_a_429_that_says_so(client, gemini, builtin):
    gemini.set_behaviour("gemini-2.5-flash", Behaviour(status=429, error_body=quota_exhausted(retry_delay="37s")))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="google/gemini-2.5-flash", messages=CONVERSATION)
    assert caught.value.code == "insufficient_quota"
    assert "exceeded your current quota" in caught.value.message
    assert caught.value.response.headers["retry-after"] == "37"


def test_a_per_minute_limit_is_a_plain_rate_limit(client, gemini, builtin):
    gemini.set_behaviour("gemini-2.0-flash", Behaviour(status=429, error_body=quota_exhausted(per_day=False,
                                                                                                retry_delay="9s")))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="google/gemini-2.0-flash", messages=CONVERSATION)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "9"


def test_a_stream_that_hits_the_quota_fails_before_its_first_byte(portal, master_key, gemini, builtin):
    gemini.set_behaviour("gemini-2.5-flash", Behaviour(status=429, error_body=quota_exhausted()))
    response = httpx.post(
        f"{portal.url}/v1/chat/completions",
        json={"model": "google/gemini-2.5-flash", "messages": CONVERSATION, "stream": True},
        headers={"Authorization": f"Bearer {master_key}"},
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"


def test_an_invalid_gemini_key_is_an_upstream_auth_error_not_a_bad_request(client, gemini, builtin, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-not-the-right-key")
    catalog.invalidate()
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="google/gemini-2.5-flash", messages=CONVERSATION)
    assert caught.value.code == "upstream_auth_error"
    assert "AIza-not-the-right-key" not in caught.value.message


def test_a_model_gemini_does_not_know_is_a_404(client, gemini, builtin):
    flash = Provider.objects.get(name="gemini").deployments.get(public_name="google/gemini-2.5-flash")
    flash.upstream_model = "gemini-9-ultra"
    flash.save()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="google/gemini-2.5-flash", messages=CONVERSATION)
    assert "gemini-9-ultra is not found" in caught.value.message


@pytest.mark.parametrize("status", [500, 503])
def test_gemini_failing_or_overloaded_is_a_502(client, gemini, builtin, status):
    gemini.behaviour = Behaviour(status=status)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="google/gemini-2.5-flash", messages=CONVERSATION)
    assert caught.value.status_code == 502


def test_a_chat_request_to_the_tts_model_is_refused_before_reaching_gemini(client, gemini, builtin):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="google/gemini-2.5-flash-tts", messages=CONVERSATION)
    assert caught.value.code == "wrong_model_mode"
    assert "/v1/audio/speech" in caught.value.message
    assert gemini.requests == []


# --- the mock itself behaves like Gemini (or the tests above would prove little) ---------------------------------


def post(gemini, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{gemini.url}{path}", content=orjson.dumps(body), headers=headers)


HI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_the_mock_refuses_a_call_without_a_key(gemini):
    response = post(gemini, "/v1beta/models/gemini-2.5-flash:generateContent", HI)
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"


def test_the_mock_answers_a_wrong_key_with_gemini_s_400(gemini):
    response = post(gemini, "/v1beta/models/gemini-2.5-flash:generateContent", HI, **{"x-goog-api-key": "nope"})
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_the_mock_takes_the_key_as_a_query_parameter_too(gemini):
    response = post(gemini, f"/v1beta/models/gemini-2.5-flash:generateContent?key={API_KEY}", HI)
    assert response.status_code == 200
    assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == "Hello from mock"


def test_the_mock_rejects_openai_roles_and_empty_parts(gemini):
    headers = {"x-goog-api-key": API_KEY}
    system = {"contents": [{"role": "system", "parts": [{"text": "x"}]}]}
    response = post(gemini, "/v1beta/models/gemini-2.5-flash:generateContent", system, **headers)
    assert response.status_code == 400
    assert "valid role" in response.json()["error"]["message"]
    empty = {"contents": [{"role": "user", "parts": []}]}
    assert post(gemini, "/v1beta/models/gemini-2.5-flash:generateContent", empty, **headers).status_code == 400


def test_the_mock_serves_its_error_bodies_verbatim(gemini):
    gemini.behaviour = Behaviour(status=503)
    response = post(gemini, "/v1beta/models/gemini-2.5-flash:generateContent", HI, **{"x-goog-api-key": API_KEY})
    assert response.status_code == 503
    assert response.json() == gemini_error(503)
