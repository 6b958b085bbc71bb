"""A mock of Google's native Gemini API (generativelanguage.googleapis.com/v1beta), for tests.

A real HTTP server (the machinery of tests/mock_upstream.py, behind Gemini's paths and JSON shapes):

    POST /v1beta/models/{model}:generateContent                  candidates/content/parts + usageMetadata
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse    the same, one GenerateContentResponse per event
    POST /v1beta/models/{model}:embedContent                     {"embedding": {"values": [...]}}
    POST /v1beta/models/{model}:batchEmbedContents               {"embeddings": [{"values": [...]}, ...]}

Text-to-speech models (ids containing "-tts") answer generateContent with responseModalities ["AUDIO"] by
returning inlineData base64 PCM (audio/L16;codec=pcm;rate=24000), as Gemini does. It authenticates like
Gemini (x-goog-api-key header or ?key=), rejects what Gemini rejects (unknown roles, empty parts, a text
request to a TTS model) with Gemini's error bodies ({"error": {"code", "message", "status", "details"}}),
and honours the same ``Behaviour`` knobs as the OpenAI mock (status, error_body, headers, latency,
chunk_delay, reply, fail_times). ``quota_exhausted()`` builds the body of a per-day free-tier 429.

    with MockGemini() as gemini:
        gemini.set_behaviour("gemini-2.5-flash", Behaviour(status=429, error_body=quota_exhausted()))
        ... provider api_base = gemini.base_url, key = gemini.api_key ...
        assert gemini.requests[-1].json["contents"][0]["parts"][0]["text"] == "hi"
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson

from tests.mock_upstream import Behaviour, MockUpstream, RecordedRequest, _Connection, split_reply

API_KEY = "gemini-test-key-0123456789"
DEFAULT_MODELS: tuple[str, ...] = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.5-flash-preview-tts",
    "gemini-embedding-001",
)
SAMPLE_RATE = 24000
AUDIO_MIME = f"audio/L16;codec=pcm;rate={SAMPLE_RATE}"
DEFAULT_EMBEDDING_DIMS = 8
_PATH = re.compile(r"^/v1beta/models/([^/:]+):([A-Za-z]+)$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ROLES = ("user", "model")


def gemini_error(code: int, message: str | None = None, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An error body as the Gemini API writes it."""
    status = _STATUS_NAMES.get(code, "UNKNOWN")
    text = message or {
        429: "Resource has been exhausted (e.g. check quota).",
        500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        503: "The model is overloaded. Please try again later.",
    }.get(code, f"Mock Gemini error {code}")
    error: dict[str, Any] = {"code": code, "message": text, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


# Google's plain answer once a model's free requests of the day are used up (no retry delay): the portal parks
# the deployment until midnight in the provider's time zone.
PER_DAY_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                     "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}],
    }
}


def quota_exhausted(per_day: bool = True, retry_delay: str = "37s", model: str = "gemini-2.5-flash") -> dict[str, Any]:
    """The 429 a free-tier project gets once a per-day (or per-minute) quota is used up."""
    quota_id = (
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier" if per_day
        else "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    )
    metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
    message = (
        f"You exceeded your current quota, please check your plan and billing details. "
        f"* Quota exceeded for metric: {metric}, limit: 250, model: {model}\nPlease retry in {retry_delay}."
    )
    return gemini_error(429, message, [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{
                "quotaMetric": metric,
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": model},
                "quotaValue": "250",
            }],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{"description": "Learn more about Gemini API quotas",
                       "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
    ])


def invalid_key_error() -> dict[str, Any]:
    # Gemini answers a wrong key with 400, not 401.
    return gemini_error(400, "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
    ])


def tone(seconds: float, frequency: float = 440.0) -> bytes:
    """Signed 16-bit little-endian mono PCM at 24 kHz: what Gemini TTS sends as audio/L16."""
    frames = int(SAMPLE_RATE * seconds)
    samples = (int(8000 * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE)) for i in range(frames))
    return struct.pack(f"<{frames}h", *samples)


def embedding_values(text: str, dims: int) -> list[float]:
    """Deterministic: equal texts give equal vectors."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=32).digest()
        out.extend(round(byte / 255 - 0.5, 6) for byte in digest)
        counter += 1
    return out[:dims]


def proto_field(mapping: Any, camel: str) -> Any:
    """A field as Gemini's JSON parser reads it: lowerCamelCase or the proto's snake_case name."""
    if not isinstance(mapping, dict):
        return None
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()
    return mapping.get(camel, mapping.get(snake))


def _text_of(contents: Any) -> str:
    texts = []
    for content in contents if isinstance(contents, list) else []:
        for part in content.get("parts") or [] if isinstance(content, dict) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return " ".join(texts)


class _Invalid(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_contents(body: dict[str, Any]) -> None:
    """What Gemini validates in a generateContent body (a wrong translation fails here, as it would for real)."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid(400, "* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise _Invalid(400, f"Invalid value at 'contents[{i}]'")
        role = content.get("role", "user")
        if role not in _ROLES:
            raise _Invalid(400, f"Please use a valid role: {', '.join(_ROLES)}.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Invalid(400, f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        for part in parts:
            inline = proto_field(part, "inlineData")
            if inline is not None:
                data = inline.get("data", "")
                try:
                    base64.b64decode(data, validate=True)
                except ValueError:
                    raise _Invalid(400, f"Invalid value at 'contents[{i}].parts.inline_data.data'") from None
    system = proto_field(body, "systemInstruction")
    if system is not None and not (isinstance(system, dict) and system.get("parts")):
        raise _Invalid(400, "* GenerateContentRequest.system_instruction: parts must not be empty.")


def _modalities(body: dict[str, Any]) -> list[str]:
    modalities = proto_field(proto_field(body, "generationConfig"), "responseModalities") or ["TEXT"]
    return [str(m).upper() for m in modalities]


class MockGemini(MockUpstream):
    """Gemini's REST API on 127.0.0.1; ``base_url`` is what a provider's api_base points at."""

    def __init__(self, *, api_key: str = API_KEY, models: Sequence[str] = DEFAULT_MODELS,
                 audio_seconds: float = 0.25, **kwargs: Any) -> None:
        super().__init__(models=models, **kwargs)
        self.api_key = api_key
        self.audio_seconds = audio_seconds

    @property
    def base_url(self) -> str:
        return self.url + "/v1beta"

    def requests_for(self, path_suffix: str = ":generateContent") -> list[RecordedRequest]:
        return [request for request in self.requests if request.path.endswith(path_suffix)]

    @staticmethod
    def key_of(request: RecordedRequest) -> str:
        """The key as Gemini reads it: the x-goog-api-key header, else the key query parameter."""
        header = request.headers.get("x-goog-api-key")
        if header:
            return str(header)
        return (parse_qs(request.query).get("key") or [""])[0]

    async def _dispatch(self, conn: _Connection, request: RecordedRequest, keep_alive: bool) -> bool:
        match = _PATH.match(request.path)
        if not match:
            return await self._error(conn, 404, f"Unknown request URL: {request.method} {request.path}", keep_alive)
        if request.method != "POST":
            return await self._error(conn, 405, f"Method {request.method} not allowed", keep_alive)
        key = self.key_of(request)
        if not key:
            message = ("Method doesn't allow unregistered callers (callers without established identity). "
                       "Please use API Key or other form of API consumer identity to call this API.")
            return await self._error(conn, 403, message, keep_alive)
        if key != self.api_key:
            return await self._send_json(conn, 400, invalid_key_error(), keep_alive)
        model, action = match.groups()
        if model not in self._model_ids():
            message = (f"models/{model} is not found for API version v1beta, or is not supported for {action}. "
                       "Call ListModels to see the list of available models and their supported methods.")
            return await self._error(conn, 404, message, keep_alive)
        body = request.json
        if not isinstance(body, dict):
            return await self._error(conn, 400, "Invalid JSON payload received.", keep_alive)
        behaviour = self.behaviour_for(model)
        failing, client_left = await self._prelude(conn, behaviour)
        if client_left:
            return self._note_disconnect()
        if failing and behaviour.status >= 400:
            error = behaviour.error_body if behaviour.error_body is not None else gemini_error(behaviour.status)
            if isinstance(error, bytes):
                return await self._send(conn, behaviour.status, error, keep_alive, behaviour.headers)
            return await self._send_json(conn, behaviour.status, error, keep_alive, behaviour.headers)
        try:
            if action in ("generateContent", "streamGenerateContent"):
                return await self._generate(conn, request, model, body, action, behaviour, keep_alive)
            if action in ("embedContent", "batchEmbedContents"):
                return await self._embed(conn, model, body, action, behaviour, keep_alive)
        except _Invalid as e:
            return await self._error(conn, e.code, e.message, keep_alive)
        return await self._error(conn, 404, f"Unknown method {action}", keep_alive)

    async def _error(self, conn: _Connection, code: int, message: str, keep_alive: bool) -> bool:
        return await self._send_json(conn, code, gemini_error(code, message), keep_alive)

    # -- generateContent ------------------------------------------------------------------------------------------

    async def _generate(self, conn: _Connection, request: RecordedRequest, model: str, body: dict[str, Any],
                        action: str, behaviour: Behaviour, keep_alive: bool) -> bool:
        if "embedding" in model:
            raise _Invalid(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                                f"{action}.")
        _check_contents(body)
        prompt_tokens = max(1, len(_text_of(body.get("contents"))) // 4)
        base = {"modelVersion": model, "responseId": f"mock-{next(self._ids)}"}
        if "-tts" in model:
            if _modalities(body) != ["AUDIO"]:
                raise _Invalid(400, "The requested combination of response modalities (TEXT) is not supported "
                                    "by the model. models/" + model + " accepts the following combination of "
                                    "response modalities: * AUDIO")
            return await self._speak(conn, prompt_tokens, base, behaviour, keep_alive)
        if "AUDIO" in _modalities(body):
            raise _Invalid(400, "Multi-modal output is not supported.")
        pieces = list(split_reply(behaviour.reply, behaviour.chunks))
        finish = "STOP"
        limit = proto_field(proto_field(body, "generationConfig"), "maxOutputTokens")
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "MAX_TOKENS"
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": len(pieces),
                 "totalTokenCount": prompt_tokens + len(pieces)}
        if action == "generateContent":
            payload = {"candidates": [self._candidate("".join(pieces), finish)], "usageMetadata": usage, **base}
            return await self._send_json(conn, 200, payload, keep_alive, behaviour.headers)
        if (parse_qs(request.query).get("alt") or [""])[0] != "sse":
            # Without alt=sse Gemini streams one JSON array, which SSE clients cannot read.
            raise _Invalid(400, "This mock only streams server-sent events; add ?alt=sse as LiteLLM does.")
        events = []
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            chunk: dict[str, Any] = {
                "candidates": [self._candidate(piece, finish if last else None)],
                # Gemini repeats the running usage in every chunk; the last one is complete.
                "usageMetadata": usage if last else {"promptTokenCount": prompt_tokens,
                                                     "totalTokenCount": prompt_tokens},
                **base,
            }
            events.append(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        return await self._stream(conn, request, behaviour, events, keep_alive, failing=False)

    @staticmethod
    def _candidate(text: str, finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return candidate

    async def _speak(self, conn: _Connection, prompt_tokens: int, base: dict[str, Any], behaviour: Behaviour,
                     keep_alive: bool) -> bool:
        audio = tone(self.audio_seconds)
        audio_tokens = max(1, int(self.audio_seconds * 25))  # Gemini counts 25 tokens per second of audio
        payload = {
            "candidates": [{
                "content": {"parts": [{"inlineData": {"mimeType": AUDIO_MIME,
                                                      "data": base64.b64encode(audio).decode()}}],
                            "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": audio_tokens,
                "totalTokenCount": prompt_tokens + audio_tokens,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
                "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": audio_tokens}],
            },
            **base,
        }
        return await self._send_json(conn, 200, payload, keep_alive, behaviour.headers)

    # -- embeddings -----------------------------------------------------------------------------------------------

    async def _embed(self, conn: _Connection, model: str, body: dict[str, Any], action: str, behaviour: Behaviour,
                     keep_alive: bool) -> bool:
        if "embedding" not in model:
            raise _Invalid(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                                f"{action}.")
        if action == "embedContent":
            payload: dict[str, Any] = {"embedding": {"values": self._vector(body)}}
        else:
            requests = body.get("requests")
            if not isinstance(requests, list) or not requests:
                raise _Invalid(400, "* BatchEmbedContentsRequest.requests: requests must not be empty.")
            for i, item in enumerate(requests):
                if not isinstance(item, dict) or item.get("model") != f"models/{model}":
                    raise _Invalid(400, f"* BatchEmbedContentsRequest.requests[{i}].model: the model of every "
                                        f"request must be models/{model}.")
            payload = {"embeddings": [{"values": self._vector(item)} for item in requests]}
        payload["usageMetadata"] = {"promptTokenCount": 1, "totalTokenCount": 1}
        return await self._send_json(conn, 200, payload, keep_alive, behaviour.headers)

    @staticmethod
    def _vector(request: dict[str, Any]) -> list[float]:
        content = request.get("content")
        if not isinstance(content, dict) or not content.get("parts"):
            raise _Invalid(400, "* EmbedContentRequest.content: content is not specified")
        dims = proto_field(request, "outputDimensionality") or DEFAULT_EMBEDDING_DIMS
        return embedding_values(_text_of([content]), int(dims))

