"""POST /v1/audio/speech: OpenAI's text-to-speech shape, spoken by Gemini TTS, answered as playable audio."""

from __future__ import annotations

import io
import wave

import httpx
import openai
import pytest

from gateway.api.validation import parse_speech
from gateway.errors import GatewayError
from tests.catalog_setup import CREDENTIALS, load_builtin_catalog
from tests.mock_gemini import API_KEY, SAMPLE_RATE, proto_field, quota_exhausted, tone
from tests.mock_upstream import Behaviour

TTS = "google/gemini-2.5-flash-tts"


@pytest.fixture
def builtin(portal, gemini, monkeypatch, tmp_path):
    load_builtin_catalog(monkeypatch, tmp_path, env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"]},
                         bases={"gemini": gemini.base_url})


def test_it_returns_a_playable_wav(client, gemini, builtin):
    response = client.audio.speech.create(model=TTS, voice="alloy", input="Hello there!", response_format="wav")

    assert response.response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, SAMPLE_RATE)
        assert audio.getnframes() == int(SAMPLE_RATE * gemini.audio_seconds)
        assert audio.readframes(audio.getnframes()) == tone(gemini.audio_seconds)


def test_it_asks_gemini_for_audio_in_the_requested_voice(client, gemini, builtin):
    client.audio.speech.create(model=TTS, voice="alloy", input="Hello there!")

    sent = gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash-preview-tts:generateContent"
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "Hello there!"}]}]
    config = proto_field(sent.json, "generationConfig")
    assert proto_field(config, "responseModalities") == ["AUDIO"]
    voice = proto_field(proto_field(proto_field(config, "speechConfig"), "voiceConfig"), "prebuiltVoiceConfig")
    # OpenAI's voice names are mapped to Gemini's prebuilt voices.
    assert proto_field(voice, "voiceName") == "Kore"


def test_gemini_voice_names_are_passed_as_they_are(client, gemini, builtin):
    client.audio.speech.create(model=TTS, voice="Puck", input="Hi")
    config = proto_field(gemini.requests[-1].json, "generationConfig")
    voice = proto_field(proto_field(proto_field(config, "speechConfig"), "voiceConfig"), "prebuiltVoiceConfig")
    assert proto_field(voice, "voiceName") == "Puck"


def test_without_a_format_it_answers_wav(portal, master_key, gemini, builtin):
    response = httpx.post(
        f"{portal.url}/v1/audio/speech",
        json={"model": TTS, "voice": "alloy", "input": "Hi"},
        headers={"Authorization": f"Bearer {master_key}"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.content[:4] == b"RIFF" and response.content[8:12] == b"WAVE"


def test_pcm_is_the_raw_24khz_samples(client, gemini, builtin):
    response = client.audio.speech.create(model=TTS, voice="alloy", input="Hi", response_format="pcm")
    assert response.response.headers["content-type"] == "audio/pcm"
    assert response.content == tone(gemini.audio_seconds)


@pytest.mark.parametrize("fmt", ["mp3", "flac"])
def test_a_format_gemini_cannot_produce_is_a_400(client, gemini, builtin, fmt):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model=TTS, voice="alloy", input="Hi", response_format=fmt)
    assert caught.value.code == "unsupported_response_format"
    assert caught.value.param == "response_format"
    assert "wav or pcm" in caught.value.message
    assert gemini.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": TTS, "voice": "alloy"}, "input"),
        ({"model": TTS, "voice": "alloy", "input": "   "}, "input"),
        ({"model": TTS, "voice": "alloy", "input": "x" * 4097}, "input"),
        ({"model": TTS, "input": "Hi"}, "voice"),
        ({"model": TTS, "voice": 7, "input": "Hi"}, "voice"),
        ({"voice": "alloy", "input": "Hi"}, "model"),
        ({"model": TTS, "voice": "alloy", "input": "Hi", "response_format": "ogg"}, "response_format"),
        ({"model": TTS, "voice": "alloy", "input": "Hi", "speed": 1.5}, "speed"),
        ({"model": TTS, "voice": "alloy", "input": "Hi", "instructions": "Whisper"}, "instructions"),
    ],
)
def test_a_malformed_request_names_the_field(body, param):
    with pytest.raises(GatewayError) as caught:
        parse_speech(body)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_a_malformed_request_is_a_400_before_gemini_is_asked(portal, master_key, gemini, builtin):
    response = httpx.post(f"{portal.url}/v1/audio/speech", json={"model": TTS, "input": "Hi"},
                          headers={"Authorization": f"Bearer {master_key}"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "voice"
    assert gemini.requests == []


def test_a_chat_model_cannot_speak(client, gemini, builtin):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="google/gemini-2.5-flash", voice="alloy", input="Hi")
    assert caught.value.code == "wrong_model_mode"
    assert "/v1/chat/completions" in caught.value.message


def test_speech_needs_a_key(portal, builtin):
    response = httpx.post(f"{portal.url}/v1/audio/speech", json={"model": TTS, "voice": "alloy", "input": "Hi"})
    assert response.status_code == 401


def test_geminis_daily_tts_quota_running_out_is_a_429(client, gemini, builtin):
    gemini.behaviour = Behaviour(status=429, error_body=quota_exhausted(model="gemini-2.5-flash-preview-tts"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.audio.speech.create(model=TTS, voice="alloy", input="Hi")
    assert caught.value.code == "insufficient_quota"


def test_the_free_tier_limit_of_the_tts_model_is_enforced(client, gemini, portal, monkeypatch, tmp_path):
    # The catalog's 3 requests per minute, as configured (not lifted for this test).
    load_builtin_catalog(monkeypatch, tmp_path, env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"]},
                         bases={"gemini": gemini.base_url}, unlimited=False)
    for _ in range(3):
        client.audio.speech.create(model=TTS, voice="alloy", input="Hi")
    with pytest.raises(openai.RateLimitError):
        client.audio.speech.create(model=TTS, voice="alloy", input="Hi")
    assert len(gemini.requests) == 3
