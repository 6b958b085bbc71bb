"""The fast path for OpenAI-native upstreams: no translation, so no LiteLLM on the request path.

OpenRouter, GitHub Models, GitHub Copilot, LM Studio and any OpenAI-compatible server speak the same
chat API as our clients. For them the request goes out with a shared, pooled async HTTP client, and the
upstream's SSE events are forwarded as they arrive, reading only what the portal needs (usage, errors).
LiteLLM still supplies the provider knowledge (base URLs, headers, keys via gateway.providers) and stays
the path for everything that needs translation. Both implement gateway.upstream.Upstream and pass the
same conformance tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from django.conf import settings

from gateway import providers
from gateway.catalog import Route
from gateway.upstream import RESERVED_FIELDS, UpstreamError, error_for_status

# Kinds whose upstream speaks OpenAI chat natively. (GitHub Copilot does too, but its short-lived token
# refresh-and-retry lives in the LiteLLM path for now.)
NATIVE_KINDS = frozenset({"openai", "openai_compatible", "openrouter", "github_models", "lm_studio"})
# LiteLLM-only parameters that may sit in a deployment's params; they are not sent upstream.
LITELLM_ONLY = frozenset({"extra_headers", "timeout", "stream_timeout", "drop_params", "api_version",
                          "custom_llm_provider", "input_cost_per_token", "output_cost_per_token", "num_retries",
                          "max_retries", "mock_response", "rpm", "tpm", "rpd", "organization"})


def eligible(route: Route) -> bool:
    return settings.PASSTHROUGH and route.kind in NATIVE_KINDS


class PassthroughUpstream:
    def __init__(self) -> None:
        self._clients: dict[int, httpx.AsyncClient] = {}

    def _client(self) -> httpx.AsyncClient:
        # One pooled client per event loop (each worker has one loop; tests may have several).
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(settings.UPSTREAM_TIMEOUT, connect=min(settings.UPSTREAM_TIMEOUT, 10)),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60),
                follow_redirects=False,
            )
            self._clients[loop_id] = client
        return client

    async def _request(self, route: Route, body: dict[str, Any], stream: bool) -> tuple[str, dict[str, str], bytes]:
        kwargs = providers.call_kwargs(route, {})
        if route.kind == "github_copilot":
            from gateway import copilot

            kwargs = await copilot.call_kwargs(route, body, kwargs)
        base = str(kwargs.get("api_base") or "").rstrip("/")
        if not base:
            raise UpstreamError(502, f"Provider '{route.provider_name}' has no base URL configured.",
                                code="upstream_not_configured")
        headers = {"Authorization": f"Bearer {kwargs['api_key']}", "Content-Type": "application/json",
                   **(kwargs.get("extra_headers") or {})}
        payload = {k: v for k, v in body.items() if k not in RESERVED_FIELDS}
        payload.update({k: v for k, v in route.params.items() if k not in LITELLM_ONLY})
        payload["model"] = route.upstream_model
        if stream:
            payload["stream"] = True
            # Always ask for usage so it can be recorded; the view drops it when the client did not ask.
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return f"{base}/chat/completions", headers, orjson.dumps(payload)

    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        url, headers, payload = await self._request(route, body, stream=False)
        try:
            response = await self._client().post(url, content=payload, headers=headers, timeout=timeout())
        except httpx.HTTPError as e:
            raise transport_error(e, route) from None
        if response.status_code >= 400:
            raise error_for_status(route, response.status_code, response.text, response.headers)
        return parse_completion(response.content, route)

    async def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        url, headers, payload = await self._request(route, body, stream=True)
        client = self._client()
        try:
            request = client.build_request("POST", url, content=payload, headers=headers, timeout=timeout())
            response = await client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise transport_error(e, route) from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise error_for_status(route, response.status_code, response.text, response.headers)
            async for chunk in sse_chunks(response, route):
                yield chunk
        except httpx.HTTPError as e:
            raise transport_error(e, route) from None
        finally:
            # Also runs when the client went away: closing the response drops the upstream connection.
            await response.aclose()


def timeout() -> httpx.Timeout:
    # Read per request, so a changed setting applies without rebuilding the pooled client.
    return httpx.Timeout(settings.UPSTREAM_TIMEOUT, connect=min(settings.UPSTREAM_TIMEOUT, 10))


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


async def sse_chunks(response: httpx.Response, route: Route) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of an OpenAI SSE stream; a malformed line or a stream cut short is an error."""
    async for line in response.aiter_lines():
        if not line or line.startswith(":"):
            continue  # blank separators and SSE comments (keep-alives)
        if not line.startswith("data:"):
            if line.startswith(("event:", "id:", "retry:")):
                continue
            raise malformed(route, "a malformed stream line")
        data = line[5:].strip()
        if data == "[DONE]":
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


def transport_error(e: httpx.HTTPError, route: Route) -> UpstreamError:
    where = f"provider '{route.provider_name}' (model '{route.public_name}')"
    if isinstance(e, httpx.TimeoutException):
        return UpstreamError(504, f"Timed out waiting for {where}.", code="upstream_timeout")
    if isinstance(e, httpx.RemoteProtocolError):
        return UpstreamError(502, f"{where} closed the connection mid-response.", code="upstream_connection_error",
                             upstream_status=502)
    return UpstreamError(502, f"Could not reach {where}.", code="upstream_connection_error", upstream_status=500)


instance = PassthroughUpstream()
