"""The LiteLLM path: every provider kind that needs translation (Gemini, Anthropic, …), and all embeddings and speech.

LiteLLM is imported only when a deployment needs it (see `ensure_litellm`), its own retries are off (retries and
fallback are the router's), and its exceptions are mapped to our UpstreamError here.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import yarl

from gateway import redact
from gateway.catalog import Route
from gateway.upstreams import client, copilot, media, providers
from gateway.upstreams.errors import UpstreamError, check_size, error_for_status, parse_rate_limit_parts
from gateway.upstreams.interface import RESERVED_FIELDS, call_timeout

log = logging.getLogger(__name__)


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
    """Close LiteLLM's cached HTTP clients of this event loop, and ours (at shutdown)."""
    await _litellm().close_litellm_async_clients()
    for handler in _proxied.pop(asyncio.get_running_loop(), {}).values():
        await handler.close()


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




class LiteLLMUpstream:
    """Calls any provider LiteLLM knows, with LiteLLM's own retries off (retries are the router's)."""

    def _kwargs(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        # The provider kind's base URL, headers and key, LiteLLM's retries off: see gateway.upstreams.providers.
        return providers.call_kwargs(route, {k: v for k, v in body.items() if k not in RESERVED_FIELDS})

    async def _call_kwargs(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._kwargs(route, body)
        if route.kind == "github_copilot":
            # Copilot's key is a short-lived token fetched (async) at call time, with editor headers.
            kwargs = await copilot.call_kwargs(route, body, kwargs)
        return {**kwargs, **await proxied_client(route, kwargs)}

    async def _acompletion(self, route: Route, body: dict[str, Any], **extra: Any) -> Any:
        litellm = await ensure_litellm()
        for attempt in (1, 2):
            kwargs = {**await self._call_kwargs(route, body), **extra}
            try:
                # LiteLLM's own timeout bounds each read; this bounds the whole answer (a stream: its start),
                # so a provider dripping bytes cannot hold the request forever.
                async with asyncio.timeout(call_timeout(route)):
                    return await litellm.acompletion(**kwargs)
            except Exception as e:
                error = translate_error(e, route)
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
        if not large(body.get("input")):
            try:
                async with asyncio.timeout(call_timeout(route)):
                    response = await litellm.aembedding(**kwargs)
            except Exception as e:
                raise translate_error(e, route) from None
            return finish_embeddings(response, body, route)
        # Building the request and reading thousands of vectors back into LiteLLM's objects takes the CPU for
        # a long while: a large request runs whole in a thread (LiteLLM's sync client, bounded by its timeout),
        # so the event loop keeps serving everyone else. A client that leaves does not stop it early.
        kwargs.pop("client", None)  # the proxied client is an async one; the sync client reads the environment
        try:
            async with asyncio.timeout(call_timeout(route)):
                return await asyncio.to_thread(_embed_in_thread, litellm, kwargs, body, route)
        except UpstreamError:
            raise
        except Exception as e:
            raise translate_error(e, route) from None


# Inputs above this many characters in all make an embeddings request "large" (see LiteLLMUpstream.embeddings):
# about the point where LiteLLM's work on it costs the event loop more than a thread hop (~50 µs).
LARGE_INPUT_CHARS = 64 * 1024


def large(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) > LARGE_INPUT_CHARS
    if isinstance(value, list):
        # Token arrays count one character a token: a bound, not an estimate.
        return len(value) > 64 or sum(len(v) if isinstance(v, str | list) else 1 for v in value) > LARGE_INPUT_CHARS
    return False


def _embed_in_thread(litellm: Any, kwargs: dict[str, Any], body: dict[str, Any], route: Route) -> dict[str, Any]:
    return finish_embeddings(litellm.embedding(**kwargs), body, route)


def finish_embeddings(response: Any, body: dict[str, Any], route: Route) -> dict[str, Any]:
    return media.encode_embeddings(check_size(response.model_dump(exclude_none=True), route), body)


# --- proxies --------------------------------------------------------------------------------------------------

# Kinds LiteLLM calls with its own HTTP handler (which takes a `client=`); the others go through the openai SDK.
HANDLER_KINDS = frozenset({"gemini", "anthropic"})
# event loop -> proxy URL ("" = direct) -> LiteLLM handler over an httpx transport with that proxy
_proxied: dict[asyncio.AbstractEventLoop, dict[str, Any]] = {}


async def proxied_client(route: Route, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`client=` for LiteLLM, when a proxy setting applies to this call: the same decision as the passthrough's.

    LiteLLM reads the proxy variables itself too, but caches its answer per host for the life of its clients and
    knows nothing of a provider's own proxy, so where one is set the decision is ours and passed explicitly. Only
    for the kinds LiteLLM calls through its own handler (Gemini, Anthropic); for the others on this path (the
    embeddings of OpenAI-style providers) LiteLLM's own reading of the environment applies.
    """
    if route.kind not in HANDLER_KINDS or not (route.proxy_url or client.environment_proxies()):
        return {}
    base = kwargs.get("api_base") or providers.kind_of(route.kind).api_base or "https://"
    proxy = client.proxy_for(yarl.URL(base), route.proxy_url) or ""
    handlers = _proxied.setdefault(asyncio.get_running_loop(), {})
    if proxy not in handlers:
        await ensure_litellm()
        from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler  # LiteLLM is imported on demand

        transport = httpx.AsyncHTTPTransport(proxy=proxy or None, retries=0)
        handlers[proxy] = AsyncHTTPHandler(timeout=call_timeout(route), transport=transport)
    return {"client": handlers[proxy]}


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



def parse_rate_limit(exc: Exception) -> tuple[float | None, bool]:
    return parse_rate_limit_parts(_headers(exc), str(exc) + str(getattr(exc, "body", "") or ""))



def _is_connection_error(exc: BaseException) -> bool:
    """LiteLLM reports a refused connection as a 500 InternalServerError; look at what caused it."""
    import openai  # comes with LiteLLM: imported with it, on demand

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
