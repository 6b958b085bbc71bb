"""Calling providers: one small interface, two ways to implement it.

    interface.py     the Upstream protocol every path implements, and call_timeout(route)
    errors.py        UpstreamError, and how a provider's HTTP error becomes the client's
    client.py        the one pooled aiohttp session per worker, and which proxy a call goes through
    passthrough.py   OpenAI-native providers: the request forwarded as is, no LiteLLM on the path
    litellm_path.py  every provider that needs translation (Gemini, Anthropic), embeddings and speech
    providers.py     provider kinds: base URLs, keys, headers
    media.py         images, speech and embeddings: checks and conversions
    copilot/         GitHub Copilot: device login, token exchange and cache, editor headers

The views and the router see only `default_upstream()`, which picks the path per deployment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync

from gateway import catalog, redact
from gateway.catalog import Route
from gateway.errors import GatewayError
from gateway.upstreams import client, litellm_path, passthrough
from gateway.upstreams.errors import (
    UpstreamError,
    check_size,
    error_for_status,
    parse_duration,
    parse_rate_limit_parts,
    too_large,
)
from gateway.upstreams.interface import RESERVED_FIELDS, MediaUpstream, Upstream, call_timeout
from gateway.upstreams.litellm_path import LiteLLMUpstream, ensure_litellm, litellm_loaded, translate_error

__all__ = [
    "RESERVED_FIELDS", "Dispatch", "LiteLLMUpstream", "MediaUpstream", "Probe", "Upstream", "UpstreamError",
    "aclose", "call_timeout", "check_size", "default_upstream", "error_for_status", "litellm_loaded",
    "parse_duration", "parse_rate_limit_parts", "prewarm", "probe", "probe_all", "too_large", "translate_error",
]

log = logging.getLogger(__name__)


async def prewarm() -> None:
    """At start: if any enabled deployment needs LiteLLM, import it now (in the background)."""
    try:
        snapshot = await catalog.get()
    except Exception:
        log.warning("could not read the catalog to decide on preloading LiteLLM", exc_info=True)
        return
    if any(not passthrough.eligible(r) for routes in snapshot.by_name.values() for r in routes):
        await ensure_litellm()


async def aclose() -> None:
    """Close this worker's upstream connections: the shared session, and LiteLLM's clients if it was loaded."""
    await client.aclose()
    if litellm_loaded():
        await litellm_path.aclose()


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
        return list(await asyncio.gather(*(probe(route) for route in routes)))

    # The connections opened for the action are closed with it, unless they are a worker's own.
    return async_to_sync(client.run_closing(run))()


_upstream = LiteLLMUpstream()


class Dispatch:
    """Per deployment: the passthrough for OpenAI-native upstreams, LiteLLM for everything else."""

    def _for(self, route: Route) -> Upstream:
        return passthrough.instance if passthrough.eligible(route) else _upstream

    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        return await self._for(route).complete(route, body)

    def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._for(route).stream(route, body)

    async def speech(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        return await _upstream.speech(route, body)

    async def embeddings(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        if passthrough.eligible(route):
            return await passthrough.instance.embeddings(route, body)
        return await _upstream.embeddings(route, body)


_dispatch = Dispatch()
