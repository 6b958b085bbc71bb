"""What every upstream path implements, and the settings of one call that all paths share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings

if TYPE_CHECKING:
    from gateway.catalog import Route

# Fields of the client's body that we set ourselves or must not forward.
RESERVED_FIELDS = frozenset({"model", "stream", "api_key", "api_base", "base_url", "num_retries", "max_retries"})


class Upstream(Protocol):
    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


class MediaUpstream(Upstream, Protocol):
    """The calls beyond chat; the views run them through the router via gateway.upstreams.media.Operation."""

    async def speech(self, route: Route, body: dict[str, Any]) -> dict[str, Any]: ...

    async def embeddings(self, route: Route, body: dict[str, Any]) -> dict[str, Any]: ...


def call_timeout(route: Route) -> float:
    """How long one call to this deployment may take, in seconds: the one place every path asks.

    A whole answer must come within it; a stream must start within it and never stay silent longer.
    """
    # Read per call, so a changed setting applies without rebuilding pooled clients.
    return float(settings.UPSTREAM_TIMEOUT)
