"""Calling providers: one small interface, implemented with the LiteLLM SDK.

A later passthrough for OpenAI-native upstreams sits beside LiteLLMUpstream
behind the same two methods, so the views and the router never know which
one answered.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Protocol

from django.conf import settings

from gateway.catalog import Route
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

# Fields of the client's body that we set ourselves or must not forward.
RESERVED_FIELDS = frozenset({"model", "stream", "api_key", "api_base", "base_url", "num_retries", "max_retries"})


class UpstreamError(GatewayError):
    """A provider failed; `retryable` says whether another deployment may be tried."""

    def __init__(self, status: int, message: str, *, upstream_status: int | None = None, **kwargs: Any) -> None:
        super().__init__(status, message, **kwargs)
        self.upstream_status = upstream_status

    @property
    def retryable(self) -> bool:
        return self.status in (429, 502, 503, 504) or (self.upstream_status or 0) >= 500


class Upstream(Protocol):
    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


def _litellm() -> Any:
    # Imported on first use: `import litellm` costs seconds and ~200 MB, which
    # `gunicorn --preload` pays once in the master instead of per worker.
    import litellm

    # No "Give Feedback / Get Help" banners on stdout for every provider error.
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMUpstream:
    """Calls any provider LiteLLM knows, with LiteLLM's own retries off (retries are the router's)."""

    def _kwargs(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in body.items() if k not in RESERVED_FIELDS}
        kwargs.update(route.params)
        kwargs.update(
            model=route.litellm_model,
            num_retries=0,
            max_retries=0,
            timeout=settings.UPSTREAM_TIMEOUT,
        )
        # Passing api_base explicitly keeps LiteLLM from looking anything up (synchronously) itself.
        if route.api_base:
            kwargs["api_base"] = route.api_base
        # Local servers (LM Studio, vLLM) often need no key, but the OpenAI client insists on one.
        kwargs["api_key"] = route.api_key or "no-key"
        return kwargs

    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        litellm = _litellm()
        try:
            response = await litellm.acompletion(**self._kwargs(route, body))
        except Exception as e:
            raise translate_error(e, route) from None
        result: dict[str, Any] = response.model_dump(exclude_none=True)
        return result

    async def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        litellm = _litellm()
        kwargs = self._kwargs(route, body)
        # Always ask for usage so it can be recorded; the view drops the usage
        # chunk when the client did not ask for it.
        kwargs["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            response = await litellm.acompletion(stream=True, **kwargs)
        except Exception as e:
            raise translate_error(e, route) from None
        try:
            async for chunk in response:
                yield chunk.model_dump(exclude_none=True)
        except Exception as e:
            raise translate_error(e, route) from None
        finally:
            # Closes the upstream HTTP response, also when the client went away.
            await response.aclose()


_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+(Error|Exception)?:\s*)+")


def _clean(message: str) -> str:
    message = _LITELLM_PREFIX.sub("", str(message)).strip()
    return message[:1000]


def _retry_after(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None) or {}
    try:
        value = headers.get("retry-after")
    except AttributeError:
        return None
    return str(value) if value else None


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
    if isinstance(exc, litellm.Timeout):
        return UpstreamError(504, f"Timed out waiting for {where}.", code="upstream_timeout", upstream_status=status)
    if isinstance(exc, litellm.APIConnectionError) and status in (None, 500) or _is_connection_error(exc):
        log.warning("connection to %s failed: %s", where, _clean(str(exc)))
        return UpstreamError(502, f"Could not reach {where}.", code="upstream_connection_error", upstream_status=500)
    if not isinstance(status, int):
        log.exception("unexpected error calling %s", where)
        return UpstreamError(502, f"Unexpected error from {where}.", code="upstream_error")
    detail = _clean(str(exc))
    if status == 429:
        headers = {"Retry-After": ra} if (ra := _retry_after(exc)) else {}
        return UpstreamError(
            429,
            f"Rate limited by {where}: {detail}",
            code="rate_limit_exceeded",
            type="rate_limit_error",
            headers=headers,
            upstream_status=status,
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
        return UpstreamError(400 if status == 422 else status, f"{where} rejected the request: {detail}",
                             code="upstream_bad_request", upstream_status=status)
    return UpstreamError(502, f"{where} failed ({status}): {detail}", code="upstream_error", upstream_status=status)


def default_upstream() -> Upstream:
    return _upstream


_upstream = LiteLLMUpstream()
