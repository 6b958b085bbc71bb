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
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import yarl
from django.conf import settings

from gateway.catalog import Route
from gateway.upstreams import client, copilot, http1, media, providers
from gateway.upstreams.errors import UpstreamError, error_for_status, too_large
from gateway.upstreams.interface import RESERVED_FIELDS, call_timeout

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
    async def aclose(self) -> None:
        """Close this loop's pooled connections (at shutdown)."""
        await client.aclose()

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

    async def embeddings(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's embeddings call, forwarded as is and read with orjson.

        Not through LiteLLM: the openai SDK it uses builds a typed object per number of the answer, about a
        second of the event loop's time for 2,048 inputs. Vectors are asked for as floats (not every server
        offers base64) and encoded here when the client asked (see gateway.upstreams.media.encode_embeddings).
        """
        fields = {k: body[k] for k in ("input", "dimensions", "user") if body.get(k) is not None}
        for attempt in (1, 2):
            url, headers, _ = await self._request(route, {}, stream=False)
            payload = orjson.dumps({**fields, "model": route.upstream_model, "encoding_format": "float"})
            try:
                result = await self._complete(route, url.removesuffix("/chat/completions") + "/embeddings",
                                              headers, payload, parse=parse_embeddings)
            except UpstreamError as e:
                await copilot.after_rejection(route, e, attempt)
                continue
            return media.encode_embeddings(result, body)
        raise AssertionError("unreachable")

    async def _complete(self, route: Route, url: str, headers: dict[str, str], payload: bytes, *,
                        parse: Callable[[bytes, Route], dict[str, Any]] | None = None) -> dict[str, Any]:
        # A whole answer must come within the call's timeout, not each read: a provider dripping bytes would
        # otherwise hold the request forever.
        limit = call_timeout(route)
        target = parsed_url(url)
        proxy = client.proxy_for(target, route.proxy_url)
        try:
            async with asyncio.timeout(limit):
                if proxy is None:
                    # The commonest call, on the lean client; through a proxy, aiohttp.
                    answer = await client.lean_pool().post(target, headers, payload, connect_timeout=min(limit, 10),
                                                     cap=settings.MAX_UPSTREAM_RESPONSE_BYTES)
                    status, body, answer_headers = answer.status, answer.body, answer.headers
                else:
                    status, body, answer_headers = await _via_session(target, headers, payload, proxy, limit,
                                                                      route)
        except http1.TooLarge:
            raise too_large(route, settings.MAX_UPSTREAM_RESPONSE_BYTES) from None
        except http1.ConnectionFailed as e:
            raise connection_failed(e, route) from None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise transport_error(e, route) from None
        except ValueError as e:  # a header the operator configured cannot be sent (a CR or LF in it)
            raise UpstreamError(502, f"Provider '{route.provider_name}' has a header that cannot be sent: {e}.",
                                code="upstream_not_configured") from None
        if status >= 400:
            raise error_for_status(route, status, body.decode(errors="replace"), answer_headers)
        return (parse or parse_completion)(body, route)

    async def _stream(
        self, route: Route, url: str, headers: dict[str, str], payload: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            target = parsed_url(url)
            response = await post(target, headers, payload, proxy=client.proxy_for(target, route.proxy_url),
                                  timeout=_timeout(call_timeout(route)))
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


async def _via_session(target: yarl.URL, headers: dict[str, str], payload: bytes, proxy: str, limit: float,
                       route: Route) -> tuple[int, bytes, Any]:
    """A whole answer through aiohttp's session (the way through a proxy)."""
    response = await post(target, headers, payload, proxy=proxy, timeout=_timeout(limit))
    try:
        body = await read_capped(response, route)
    except BaseException:
        response.close()  # timed out, cancelled, cut: the answer is abandoned with its connection
        raise
    response.release()
    return response.status, body, response.headers


async def post(url: yarl.URL, headers: dict[str, str], payload: bytes, *, proxy: str | None,
               timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
    """POST through the shared session; a connection dropped before any answer came is retried once.

    The common cause is the race of an idle timeout: the upstream closes a kept-alive connection just as the
    request goes out on it, unread. aiohttp retries that itself only for idempotent methods, and does not say
    whether the connection was a reused one, so the first such failure gets one fresh attempt (a server that
    read a request and then hung up without answering gets it twice, at most). A connection that could not be
    made at all (ClientConnectorError: refused, DNS, TLS) is not retried.
    """
    for attempt in (1, 2):
        try:
            return await client.session().post(url, data=payload, headers=headers, proxy=proxy, timeout=timeout)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            if attempt == 2 or isinstance(e, aiohttp.ClientConnectorError):
                raise
    raise AssertionError("unreachable")


@functools.lru_cache(maxsize=64)
def _timeout(limit: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for a call bounded by `limit`: connect within it (10 s at most) and no read silence
    longer than it. A stream has no total (its silences are bounded by STREAM_IDLE_TIMEOUT instead); a whole
    answer's total is the asyncio.timeout around it."""
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
    if response.content_length is not None:
        return await response.read()  # the length is known and under the cap: one read
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
    return _answer_object(content, route, "a response")


def _answer_object(content: bytes, route: Route, what: str) -> dict[str, Any]:
    """A whole answer's or a stream event's JSON object; an error object in it is the provider's error."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise malformed(route, f"{what} that is not JSON") from None
    if not isinstance(data, dict):
        raise malformed(route, f"{what} that is not a JSON object")
    if "error" in data and not data.get("choices"):
        # Some servers answer 200 with an error object inside: never pass that off as a success.
        raise embedded_error(data["error"], route)
    return data


def parse_embeddings(content: bytes, route: Route) -> dict[str, Any]:
    data = parse_completion(content, route)
    if not isinstance(data.get("data"), list):
        raise malformed(route, "an embeddings response without a data list")
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
        yield _answer_object(data, route, "a stream event")
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
