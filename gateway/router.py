"""Choosing a deployment for a public model name, and falling back between them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from gateway.calls import Call
from gateway.catalog import Route
from gateway.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)


async def complete(
    upstream: Upstream, routes: tuple[Route, ...], body: dict[str, Any], call: Call
) -> dict[str, Any]:
    """Try deployments in priority order; a retryable failure moves on, a client error stops."""
    error: UpstreamError | None = None
    for route in routes:
        call.route, call.attempts = route, call.attempts + 1
        try:
            return await upstream.complete(route, body)
        except UpstreamError as e:
            if not e.retryable:
                raise
            log.info("deployment %s failed (%s), trying the next", route.id, e.status)
            error = e
    assert error is not None, "complete() needs at least one route"
    raise error


async def open_stream(
    upstream: Upstream, routes: tuple[Route, ...], body: dict[str, Any], call: Call
) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
    """Start a stream and read its first chunk, so fallback happens before the client sees a byte."""
    error: UpstreamError | None = None
    for route in routes:
        call.route, call.attempts = route, call.attempts + 1
        chunks = upstream.stream(route, body)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return None, chunks
        except UpstreamError as e:
            await chunks.aclose()  # type: ignore[attr-defined]
            if not e.retryable:
                raise
            log.info("deployment %s failed (%s), trying the next", route.id, e.status)
            error = e
            continue
        return first, chunks
    assert error is not None, "open_stream() needs at least one route"
    raise error
