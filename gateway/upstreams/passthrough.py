"""The fast path for OpenAI-native upstreams: no translation, so no LiteLLM on the request path.

OpenRouter, GitHub Models, GitHub Copilot, LM Studio and any OpenAI-compatible server speak the same
chat API as our clients. For them the request goes out with a shared, pooled async HTTP client, and the
upstream's SSE events are forwarded as they arrive, reading only what the portal needs (usage, errors).
LiteLLM still supplies the provider knowledge (base URLs, headers, keys via gateway.upstreams.providers) and stays
the path for everything that needs translation. Both implement gateway.upstreams.Upstream and pass the
same conformance tests.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp
import orjson
import yarl
from django.conf import settings

from gateway.catalog import Route
from gateway.upstreams import RESERVED_FIELDS, UpstreamError, copilot, error_for_status, http1, providers, too_large

# Kinds whose upstream speaks OpenAI chat natively (Copilot with a short-lived token and editor headers).
NATIVE_KINDS = frozenset({"openai", "openai_compatible", "openrouter", "github_models", "github_copilot", "lm_studio"})
# LiteLLM-only parameters that may sit in a deployment's params; they are not sent upstream.
LITELLM_ONLY = frozenset({"extra_headers", "timeout", "stream_timeout", "drop_params", "api_version",
                          "custom_llm_provider", "input_cost_per_token", "output_cost_per_token", "num_retries",
                          "max_retries", "mock_response", "rpm", "tpm", "rpd", "organization"})
READ_CHUNK = 64 * 1024


def eligible(route: Route) -> bool:
    return settings.PASSTHROUGH and route.kind in NATIVE_KINDS


class PassthroughUpstream:
    def __init__(self) -> None:
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._pools: dict[int, http1.Pool] = {}

    def _pool(self) -> http1.Pool:
        # Whole answers go through the lean client (gateway/upstreams/http1.py), one pool per event loop; streams
        # through aiohttp's session.
        loop_id = id(asyncio.get_running_loop())
        pool = self._pools.get(loop_id)
        if pool is None:
            pool = self._pools[loop_id] = http1.Pool()
        return pool

    def _session(self) -> aiohttp.ClientSession:
        # One pooled session per event loop (each worker has one loop; tests may have several). aiohttp's
        # client costs a fraction of httpx's per request, which is most of this path's own overhead.
        loop_id = id(asyncio.get_running_loop())
        session = self._sessions.get(loop_id)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
            # No cookie jar: one session serves every user, so a provider's Set-Cookie must not follow the next
            # user's request (and filtering a jar costs time on every request).
            session = aiohttp.ClientSession(connector=connector, auto_decompress=True, skip_auto_headers=["User-Agent"],
                                            cookie_jar=aiohttp.DummyCookieJar())
            self._sessions[loop_id] = session
        return session

    async def aclose(self) -> None:
        """Close this loop's pooled connections (at shutdown)."""
        loop_id = id(asyncio.get_running_loop())
        session = self._sessions.pop(loop_id, None)
        if session is not None:
            await session.close()
        pool = self._pools.pop(loop_id, None)
        if pool is not None:
            pool.close()

    async def _request(self, route: Route, body: dict[str, Any], stream: bool) -> tuple[str, dict[str, str], bytes]:
        kwargs = providers.call_kwargs(route, {})
        if route.kind == "github_copilot":
            kwargs = await copilot.call_kwargs(route, body, kwargs)
        base = str(kwargs.get("api_base") or "").rstrip("/")
        if not base:
            raise UpstreamError(502, f"Provider '{route.provider_name}' has no base URL configured.",
                                code="upstream_not_configured")
        headers = {"Authorization": f"Bearer {kwargs['api_key']}", "Content-Type": "application/json",
                   "User-Agent": "llm-portal", **(kwargs.get("extra_headers") or {})}
        payload = {k: v for k, v in body.items() if k not in RESERVED_FIELDS}
        payload.update({k: v for k, v in route.params.items() if k not in LITELLM_ONLY})
        payload["model"] = route.upstream_model
        if stream:
            payload["stream"] = True
            # Always ask for usage so it can be recorded; the view drops it when the client did not ask.
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return f"{base}/chat/completions", headers, orjson.dumps(payload)

    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in (1, 2):
            # Outside the try: failing to get a token (a revoked login) is not a token Copilot rejected.
            request = await self._request(route, body, stream=False)
            try:
                return await self._complete(route, *request)
            except UpstreamError as e:
                await copilot.after_rejection(route, e, attempt)  # raises, unless Copilot's token is to renew
        raise AssertionError("unreachable")

    async def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for attempt in (1, 2):
            request = await self._request(route, body, stream=True)
            started = False
            try:
                async for chunk in self._stream(route, *request):
                    started = True
                    yield chunk
                return
            except UpstreamError as e:
                if started:
                    raise  # a token is only refused before the stream starts
                await copilot.after_rejection(route, e, attempt)

    async def _complete(self, route: Route, url: str, headers: dict[str, str], payload: bytes) -> dict[str, Any]:
        # A whole answer must come within UPSTREAM_TIMEOUT, not each read: a provider dripping bytes would
        # otherwise hold the request forever.
        limit, cap = settings.UPSTREAM_TIMEOUT, settings.MAX_UPSTREAM_RESPONSE_BYTES
        try:
            async with asyncio.timeout(limit):
                response = await self._pool().post(parsed_url(url), headers, payload,
                                                   connect_timeout=min(limit, 10), cap=cap)
        except http1.TooLarge:
            raise too_large(route, cap) from None
        except http1.ConnectionFailed as e:
            raise connection_failed(e, route) from None
        except TimeoutError as e:
            raise transport_error(e, route) from None
        except ValueError as e:  # a header the operator configured cannot be sent (see http1.request_bytes)
            raise UpstreamError(502, f"Provider '{route.provider_name}' has a header that cannot be sent: {e}.",
                                code="upstream_not_configured") from None
        if response.status >= 400:
            raise error_for_status(route, response.status, response.body.decode(errors="replace"), response.headers)
        return parse_completion(response.body, route)

    async def _stream(
        self, route: Route, url: str, headers: dict[str, str], payload: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            response = await self._session().post(parsed_url(url), data=payload, headers=headers, timeout=timeout())
        except (aiohttp.ClientError, TimeoutError) as e:
            raise transport_error(e, route) from None
        finished = False
        try:
            if response.status >= 400:
                text = (await read_capped(response, route)).decode(errors="replace")
                raise error_for_status(route, response.status, text, response.headers)
            async for chunk in sse_chunks(lines(response.content, route), route):
                yield chunk
            finished = True
        except (aiohttp.ClientError, TimeoutError) as e:
            raise transport_error(e, route) from None
        finally:
            if finished:
                response.release()  # back to the pool for the next request
            else:
                # Cut short (client gone, stalled, failed): drop the connection so the upstream stops too.
                response.close()


def timeout() -> aiohttp.ClientTimeout:
    """A stream's timeouts: UPSTREAM_TIMEOUT to connect and for each read (a stream has no total: its silences
    are bounded by STREAM_IDLE_TIMEOUT instead). Whole answers have theirs in `_complete`."""
    # The setting is read per request, so a change applies without rebuilding the pooled session.
    return _timeout(settings.UPSTREAM_TIMEOUT)


@functools.lru_cache(maxsize=64)
def _timeout(limit: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=min(limit, 10), sock_read=limit)


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> yarl.URL:
    """A deployment's URL, parsed once rather than on every request."""
    return yarl.URL(url)


async def read_capped(response: aiohttp.ClientResponse, route: Route) -> bytes:
    """The whole body, read in chunks, refused (and the connection dropped) past MAX_UPSTREAM_RESPONSE_BYTES."""
    cap = settings.MAX_UPSTREAM_RESPONSE_BYTES
    if response.content_length is not None and response.content_length > cap:
        response.close()
        raise too_large(route, cap)
    body = bytearray()
    async for data in response.content.iter_chunked(READ_CHUNK):
        body += data
        if len(body) > cap:
            response.close()
            raise too_large(route, cap)
    return bytes(body)


async def lines(content: aiohttp.StreamReader, route: Route) -> AsyncIterator[bytes]:
    """The body's lines however long each is, up to MAX_UPSTREAM_RESPONSE_BYTES for the whole stream.

    Not aiohttp's own line iterator: it fails on a line over 128 KiB (one big SSE event, e.g. a tool
    call's arguments or an image, is legitimate) with an exception that is not a client error.
    """
    cap = settings.MAX_UPSTREAM_RESPONSE_BYTES
    total = 0
    pending = bytearray()
    async for data in content.iter_any():
        total += len(data)
        if total > cap:
            raise too_large(route, cap)
        pending += data
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            yield bytes(pending[start:end])
            start = end + 1
        del pending[:start]
    if pending:
        yield bytes(pending)


def parse_completion(content: bytes, route: Route) -> dict[str, Any]:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise malformed(route, "a response that is not JSON") from None
    if not isinstance(data, dict):
        raise malformed(route, "a response that is not a JSON object")
    if "error" in data and not data.get("choices"):
        # Some servers answer 200 with an error object inside: never pass that off as a success.
        raise embedded_error(data["error"], route)
    return data


async def sse_chunks(lines: AsyncIterable[bytes], route: Route) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of an OpenAI SSE stream; a malformed line or a stream cut short is an error."""
    async for raw in lines:
        line = raw.strip()
        if not line or line.startswith(b":"):
            continue  # blank separators and SSE comments (keep-alives)
        if not line.startswith(b"data:"):
            if line.startswith((b"event:", b"id:", b"retry:")):
                continue
            raise malformed(route, "a malformed stream line")
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise malformed(route, "a stream event that is not JSON") from None
        if not isinstance(chunk, dict):
            raise malformed(route, "a stream event that is not a JSON object")
        if "error" in chunk and not chunk.get("choices"):
            raise embedded_error(chunk["error"], route)
        yield chunk
    raise UpstreamError(502, f"Provider '{route.provider_name}' ended the stream before it was complete.",
                        code="upstream_stream_incomplete", upstream_status=502)


def malformed(route: Route, what: str) -> UpstreamError:
    return UpstreamError(502, f"Provider '{route.provider_name}' (model '{route.public_name}') sent {what}.",
                         code="upstream_malformed_response", upstream_status=502)


def embedded_error(error: Any, route: Route) -> UpstreamError:
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    status = error.get("code") if isinstance(error, dict) else None
    if isinstance(status, int) and 400 <= status < 600:
        return error_for_status(route, status, orjson.dumps({"error": error}).decode(), {})
    return UpstreamError(502, f"Provider '{route.provider_name}' returned an error: {str(message)[:500]}",
                         code="upstream_error", upstream_status=502)


def connection_failed(e: http1.ConnectionFailed, route: Route) -> UpstreamError:
    where = f"provider '{route.provider_name}' (model '{route.public_name}')"
    if e.refused:
        return UpstreamError(502, f"Could not reach {where}.", code="upstream_connection_error", upstream_status=500)
    return UpstreamError(502, f"{where} closed the connection mid-response.", code="upstream_connection_error",
                         upstream_status=502)


def transport_error(e: BaseException, route: Route) -> UpstreamError:
    where = f"provider '{route.provider_name}' (model '{route.public_name}')"
    if isinstance(e, (TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamError(504, f"Timed out waiting for {where}.", code="upstream_timeout")
    if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return UpstreamError(502, f"{where} closed the connection mid-response.", code="upstream_connection_error",
                             upstream_status=502)
    return UpstreamError(502, f"Could not reach {where}.", code="upstream_connection_error", upstream_status=500)


instance = PassthroughUpstream()
