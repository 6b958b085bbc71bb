"""Calling providers: one small interface, implemented with the LiteLLM SDK.

A later passthrough for OpenAI-native upstreams sits beside LiteLLMUpstream
behind the same two methods, so the views and the router never know which
one answered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from asgiref.sync import async_to_sync
from django.conf import settings

from gateway import redact
from gateway.catalog import Route
from gateway.errors import GatewayError
from gateway.upstreams import media, providers

log = logging.getLogger(__name__)

# Fields of the client's body that we set ourselves or must not forward.
RESERVED_FIELDS = frozenset({"model", "stream", "api_key", "api_base", "base_url", "num_retries", "max_retries"})


class UpstreamError(GatewayError):
    """A provider failed; `retryable` says whether another deployment may be tried."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after_seconds: float | None = None,
        per_day: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(status, message, **kwargs)
        self.upstream_status = upstream_status
        # What the provider said about its rate limit: how long to wait, and whether the day is used up.
        self.retry_after_seconds = retry_after_seconds
        self.per_day = per_day

    @property
    def retryable(self) -> bool:
        return self.status in (429, 502, 503, 504) or (self.upstream_status or 0) >= 500


class Upstream(Protocol):
    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


class MediaUpstream(Upstream, Protocol):
    """The calls beyond chat; the views run them through the router via gateway.upstreams.media.Operation."""

    async def speech(self, route: Route, body: dict[str, Any]) -> dict[str, Any]: ...

    async def embeddings(self, route: Route, body: dict[str, Any]) -> dict[str, Any]: ...


def _litellm() -> Any:
    # Imported on first use: `import litellm` costs seconds and ~200 MB, which
    # `gunicorn --preload` pays once in the master instead of per worker.
    import litellm

    # No "Give Feedback / Get Help" banners on stdout for every provider error.
    litellm.suppress_debug_info = True
    return litellm


def litellm_loaded() -> bool:
    return _ready.is_set()


async def aclose() -> None:
    """Close LiteLLM's cached HTTP clients of this event loop (at shutdown)."""
    await _litellm().close_litellm_async_clients()


_ready = threading.Event()


async def ensure_litellm() -> Any:
    """LiteLLM, imported in a worker thread the first time it is needed.

    `import litellm` takes seconds of CPU and ~200 MB. Deployments served by the passthrough never need
    it, so it is not imported at start; when it is needed, the import runs in a thread so the event loop
    keeps serving every other request meanwhile (the interpreter's import lock makes concurrent callers
    wait for the one import).
    """
    if not _ready.is_set():
        await asyncio.to_thread(_litellm)
        _ready.set()
    return _litellm()


async def prewarm() -> None:
    """At start: if any enabled deployment needs LiteLLM, import it now (in the background)."""
    from gateway import catalog
    from gateway.upstreams import passthrough

    try:
        snapshot = await catalog.get()
    except Exception:
        log.warning("could not read the catalog to decide on preloading LiteLLM", exc_info=True)
        return
    if any(not passthrough.eligible(r) for routes in snapshot.by_name.values() for r in routes):
        await ensure_litellm()


class LiteLLMUpstream:
    """Calls any provider LiteLLM knows, with LiteLLM's own retries off (retries are the router's)."""

    def _kwargs(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        # The provider kind's base URL, headers and key, LiteLLM's retries off: see gateway.upstreams.providers.
        return providers.call_kwargs(route, {k: v for k, v in body.items() if k not in RESERVED_FIELDS})

    async def _call_kwargs(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._kwargs(route, body)
        if route.kind == "github_copilot":
            # Copilot's key is a short-lived token fetched (async) at call time, with editor headers.
            from gateway.upstreams import copilot

            kwargs = await copilot.call_kwargs(route, body, kwargs)
        return kwargs

    async def _acompletion(self, route: Route, body: dict[str, Any], **extra: Any) -> Any:
        litellm = await ensure_litellm()
        for attempt in (1, 2):
            kwargs = {**await self._call_kwargs(route, body), **extra}
            try:
                # LiteLLM's own timeout bounds each read; this bounds the whole answer (a stream: its start),
                # so a provider dripping bytes cannot hold the request forever.
                async with asyncio.timeout(settings.UPSTREAM_TIMEOUT):
                    return await litellm.acompletion(**kwargs)
            except Exception as e:
                error = translate_error(e, route)
            from gateway.upstreams import copilot

            await copilot.after_rejection(route, error, attempt)  # raises, unless Copilot's token is to renew
        raise AssertionError("unreachable")

    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._acompletion(route, body)
        result: dict[str, Any] = response.model_dump(exclude_none=True)
        return check_size(result, route)

    async def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        # Always ask for usage so it can be recorded; the view drops the usage
        # chunk when the client did not ask for it.
        stream_options = {**(body.get("stream_options") or {}), "include_usage": True}
        response = await self._acompletion(route, body, stream=True, stream_options=stream_options)
        try:
            async for chunk in response:
                yield chunk.model_dump(exclude_none=True)
        except Exception as e:
            raise translate_error(e, route) from None
        finally:
            # Closes the upstream HTTP response, also when the client went away.
            await response.aclose()

    async def speech(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        """Text to speech with Gemini: a chat call asking for AUDIO, its raw PCM wrapped here.

        Not litellm.aspeech: for Gemini that runs a synchronous completion in a thread (which a client
        disconnect cannot cancel); acompletion with modalities=["audio"] is the same request, async.
        """
        fields = {
            "messages": [{"role": "user", "content": body["input"]}],
            "modalities": ["audio"],
            # LiteLLM maps OpenAI's voice names (alloy, …) to Gemini's prebuilt voices (Kore, …).
            "audio": {"voice": body["voice"], "format": "pcm16"},
        }
        response = await self._acompletion(route, fields)
        audio = response.choices[0].message.audio if response.choices else None
        if audio is None or not audio.data:
            raise UpstreamError(502, f"Provider '{route.provider_name}' (model '{route.public_name}') returned no "
                                "audio.", code="upstream_error", upstream_status=502)
        pcm = base64.b64decode(audio.data)
        fmt = body.get("response_format") or "wav"
        usage = response.usage.model_dump(exclude_none=True) if response.usage else None
        return {
            "audio": media.wav(pcm) if fmt == "wav" else pcm,
            "content_type": media.SPEECH_CONTENT_TYPES[fmt],
            "usage": usage,
        }

    async def embeddings(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        litellm = await ensure_litellm()
        fields = {k: body[k] for k in ("input", "dimensions", "user") if body.get(k) is not None}
        kwargs = await self._call_kwargs(route, fields)
        if route.kind == "github_models":
            # LiteLLM's github/ provider has no embeddings; GitHub Models serves them OpenAI-style.
            kwargs["model"] = f"openai/{route.upstream_model}"
        try:
            async with asyncio.timeout(settings.UPSTREAM_TIMEOUT):
                response = await litellm.aembedding(**kwargs)
        except Exception as e:
            raise translate_error(e, route) from None
        result: dict[str, Any] = check_size(response.model_dump(exclude_none=True), route)
        if body.get("encoding_format") == "base64":
            # Asked of the provider as floats (not every provider, e.g. Gemini, offers base64), encoded here
            # the way OpenAI does: little-endian float32.
            for item in result.get("data") or []:
                vector = item.get("embedding")
                if isinstance(vector, list):
                    item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return result


def too_large(route: Route, cap: int) -> UpstreamError:
    return UpstreamError(502, f"Provider '{route.provider_name}' (model '{route.public_name}') sent a response "
                         f"larger than the limit of {cap} bytes (MAX_UPSTREAM_RESPONSE_BYTES).",
                         code="upstream_response_too_large", upstream_status=502)


def check_size(result: dict[str, Any], route: Route) -> dict[str, Any]:
    """Refuse an answer over MAX_UPSTREAM_RESPONSE_BYTES. On the LiteLLM path this runs after LiteLLM has read
    the whole body (it offers no hook to stop earlier), so it bounds what reaches clients and records, not the
    worker's peak memory; the passthrough stops reading at the cap."""
    cap = settings.MAX_UPSTREAM_RESPONSE_BYTES
    if len(orjson.dumps(result)) > cap:
        raise too_large(route, cap)
    return result


_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+(Error|Exception)?:\s*)+")


def _clean(message: str) -> str:
    message = _LITELLM_PREFIX.sub("", str(message)).strip()
    return message[:1000]


def _headers(exc: BaseException) -> dict[str, str]:
    """The provider's response headers. LiteLLM does not always keep them where one looks first: its
    OpenRouter errors hold them in litellm_response_headers, its OpenAI-like embedding errors only on the
    httpx error they were raised from."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        raw = (
            getattr(getattr(seen, "response", None), "headers", None)
            or getattr(seen, "headers", None)
            or getattr(seen, "litellm_response_headers", None)
        )
        if raw:
            try:
                return {str(k).lower(): str(v) for k, v in raw.items()}
            except AttributeError:
                pass
        seen = seen.__cause__ or seen.__context__
    return {}


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> float | None:
    """Seconds from "37", "37s", "1m30s", "6m0s", "250ms" or "1.5s" (OpenAI, Gemini and Retry-After styles)."""
    text = text.strip().strip('"')
    try:
        return float(text)
    except ValueError:
        pass
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        return None
    h, mins, secs, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + secs + ms / 1000


_QUOTA_ID = re.compile(r'quotaId["\']?\s*[:=]\s*["\']?([A-Za-z0-9_-]+)')
_RETRY_DELAY = re.compile(r'retryDelay["\']?\s*[:=]\s*["\']?([0-9.]+s)')


def parse_rate_limit(exc: Exception) -> tuple[float | None, bool]:
    return parse_rate_limit_parts(_headers(exc), str(exc) + str(getattr(exc, "body", "") or ""))


def parse_rate_limit_parts(headers: dict[str, str], text: str) -> tuple[float | None, bool]:
    """How long the provider wants us to wait, and whether it is the daily quota that ran out.

    Reads Retry-After / retry-after-ms / x-ratelimit-reset-requests headers and Gemini's error body
    (QuotaFailure quotaId such as GenerateRequestsPerDayPerProjectPerModel-FreeTier, RetryInfo retryDelay).
    """
    seconds: float | None = None
    if "retry-after-ms" in headers:
        seconds = (parse_duration(headers["retry-after-ms"]) or 0) / 1000 or None
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if seconds is None and name in headers:
            seconds = parse_duration(headers[name])
    if seconds is None and (m := _RETRY_DELAY.search(text)):
        seconds = parse_duration(m.group(1))
    per_day = any("PerDay" in q or "per_day" in q.lower() for q in _QUOTA_ID.findall(text))
    return seconds, per_day


def _is_connection_error(exc: BaseException) -> bool:
    """LiteLLM reports a refused connection as a 500 InternalServerError; look at what caused it."""
    import httpx
    import openai

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, (httpx.TransportError, openai.APIConnectionError, ConnectionError)) and not isinstance(
            seen, (httpx.TimeoutException, openai.APITimeoutError)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Connection error" in str(exc)


def translate_error(exc: Exception, route: Route) -> UpstreamError:
    """Map a LiteLLM/provider exception to the status and envelope our client gets."""
    litellm = _litellm()
    where = f"provider '{route.provider_name}' (model '{route.public_name}')"
    status = getattr(exc, "status_code", None)
    if isinstance(exc, (litellm.Timeout, TimeoutError)):
        return UpstreamError(504, f"Timed out waiting for {where}.", code="upstream_timeout", upstream_status=status)
    if (isinstance(exc, litellm.APIConnectionError) and status in (None, 500)) or _is_connection_error(exc):
        log.warning("connection to %s failed: %s", where, _clean(str(exc)))
        return UpstreamError(502, f"Could not reach {where}.", code="upstream_connection_error", upstream_status=500)
    if not isinstance(status, int) and isinstance(exc, litellm.APIError):
        # No HTTP status: the provider answered 200 with an error object inside, or a body LiteLLM could not
        # read. Its message says which; it is the provider's failure, not ours (no traceback in the log).
        detail = redact.redact(_clean(str(exc)))
        log.warning("%s returned an error: %s", where, detail)
        return UpstreamError(502, f"{where} returned an error: {detail}", code="upstream_error", upstream_status=502)
    if not isinstance(status, int):
        log.exception("unexpected error calling %s", where)
        return UpstreamError(502, f"Unexpected error from {where}.", code="upstream_error")
    raw = str(exc) + str(getattr(exc, "body", "") or "")
    return error_for_status(route, status, _clean(str(exc)), _headers(exc), raw=raw)


def _detail(text: str) -> str:
    """The provider's own message from an OpenAI-style error body, else the text itself (cut short)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()[:500]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return text.strip()[:500]


def error_for_status(
    route: Route, status: int, text: str, headers: Any, *, raw: str | None = None
) -> UpstreamError:
    """The error our client gets for a provider's HTTP error status (shared by every upstream path)."""
    where = f"provider '{route.provider_name}' (model '{route.public_name}')"
    detail = redact.redact(_detail(text))
    lowered = {str(k).lower(): str(v) for k, v in dict(headers or {}).items()}
    if status == 429:
        seconds, per_day = parse_rate_limit_parts(lowered, raw if raw is not None else text)
        out_headers = {"Retry-After": str(math.ceil(seconds))} if seconds is not None else {}
        return UpstreamError(
            429,
            f"Rate limited by {where}: {detail}",
            code="insufficient_quota" if per_day else "rate_limit_exceeded",
            type="insufficient_quota" if per_day else "requests",
            headers=out_headers,
            upstream_status=status,
            retry_after_seconds=seconds,
            per_day=per_day,
        )
    if status in (401, 403):
        return UpstreamError(
            status,
            f"{where} rejected the portal's credentials ({status}): {detail}. Check the provider's key in the admin.",
            code="upstream_auth_error",
            upstream_status=status,
        )
    if status == 404:
        return UpstreamError(404, f"{where} does not know this model: {detail}", code="model_not_found",
                             upstream_status=status)
    if 400 <= status < 500:
        return UpstreamError(400 if status in (413, 422) else status, f"{where} rejected the request: {detail}",
                             code="upstream_bad_request", upstream_status=status)
    return UpstreamError(502, f"{where} failed ({status}): {detail}", code="upstream_error", upstream_status=status)


def default_upstream() -> MediaUpstream:
    return _dispatch


# The admin's "Test" action: the smallest real request, through the same interface as /v1.
PROBE_TIMEOUT = 30.0
PROBE_MESSAGES = [{"role": "user", "content": "Reply with one word: ok"}]


@dataclass(frozen=True)
class Probe:
    ok: bool
    latency_ms: float
    message: str = ""  # the upstream's error (redacted) when not ok


async def probe(route: Route, upstream: Upstream | None = None) -> Probe:
    started = time.monotonic()

    def elapsed() -> float:
        return (time.monotonic() - started) * 1000

    try:
        body = {"model": route.public_name, "messages": PROBE_MESSAGES, "max_tokens": 1}
        await asyncio.wait_for((upstream or default_upstream()).complete(route, body), PROBE_TIMEOUT)
    except GatewayError as e:
        return Probe(False, elapsed(), f"{e.status}: {e.message}")
    except TimeoutError:
        return Probe(False, elapsed(), f"no answer within {PROBE_TIMEOUT:.0f} seconds")
    except Exception as e:
        log.exception("test call to deployment %s failed", route.id)
        return Probe(False, elapsed(), redact.redact(f"unexpected error: {type(e).__name__}: {e}"))
    return Probe(True, elapsed())


def probe_all(routes: list[Route]) -> list[Probe]:
    """Test several deployments at once (from sync code such as an admin action)."""

    async def run() -> list[Probe]:
        from gateway.upstreams import passthrough

        try:
            return list(await asyncio.gather(*(probe(route) for route in routes)))
        finally:
            # This event loop ends with the action: close the connections it opened.
            await passthrough.instance.aclose()

    return async_to_sync(run)()


_upstream = LiteLLMUpstream()


class Dispatch:
    """Per deployment: the passthrough for OpenAI-native upstreams, LiteLLM for everything else."""

    def _for(self, route: Route) -> Upstream:
        from gateway.upstreams import passthrough

        return passthrough.instance if passthrough.eligible(route) else _upstream

    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        return await self._for(route).complete(route, body)

    def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._for(route).stream(route, body)

    async def speech(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        return await _upstream.speech(route, body)

    async def embeddings(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        return await _upstream.embeddings(route, body)


_dispatch = Dispatch()
