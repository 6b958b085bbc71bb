"""An in-process snapshot of the enabled catalog, so /v1 requests never query it.

Saving a Provider or Deployment bumps a version number in the shared cache;
each worker compares it at most every CATALOG_REFRESH_SECONDS and reloads the
snapshot when it moved. With Redis that reaches every worker on every host;
with the in-process cache (embedded default, one process) it is immediate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache

from gateway import redact

VERSION_KEY = "gateway:catalog-version"


@dataclass(frozen=True)
class Route:
    """A deployment with everything needed to call it, resolved once per snapshot."""

    id: int
    public_name: str
    provider_id: int
    provider_name: str
    kind: str
    upstream_model: str
    litellm_model: str
    api_base: str
    api_key: str = field(repr=False)
    params: dict[str, Any]
    model_info: dict[str, Any]
    rpm: int | None
    tpm: int | None
    rpd: int | None
    priority: int


@dataclass(frozen=True)
class Snapshot:
    by_name: dict[str, tuple[Route, ...]]
    created: int  # unix time, shown as "created" in /v1/models

    def routes(self, public_name: str) -> tuple[Route, ...]:
        return self.by_name.get(public_name, ())

    def names(self) -> list[str]:
        return sorted(self.by_name)


def invalidate() -> None:
    """Tell every worker the catalog changed (call after any write that bypasses save())."""
    try:
        cache.incr(VERSION_KEY)
    except ValueError:
        cache.set(VERSION_KEY, 1, timeout=None)
    _state.checked_at = 0.0
    _state.snapshot = None


def build_snapshot() -> Snapshot:
    from gateway.models import Deployment

    by_name: dict[str, list[Route]] = {}
    rows = (
        Deployment.objects.filter(enabled=True, provider__enabled=True)
        .select_related("provider")
        .order_by("public_name", "priority", "id")
    )
    for d in rows:
        p = d.provider
        try:
            api_key = p.api_key()
        except ValueError:
            api_key = ""
        redact.register(api_key)
        route = Route(
            id=d.id,
            public_name=d.public_name,
            provider_id=p.id,
            provider_name=p.name,
            kind=p.kind,
            upstream_model=d.upstream_model,
            litellm_model=d.litellm_model(),
            api_base=p.resolved_api_base(),
            api_key=api_key,
            params={**p.extra, **d.litellm_params},
            model_info=d.model_info,
            rpm=d.rpm,
            tpm=d.tpm,
            rpd=d.rpd,
            priority=d.priority,
        )
        by_name.setdefault(d.public_name, []).append(route)
    return Snapshot({k: tuple(v) for k, v in by_name.items()}, created=int(time.time()))


class _State:
    snapshot: Snapshot | None = None
    version: object = None
    checked_at: float = 0.0
    lock: asyncio.Lock | None = None


_state = _State()


async def get() -> Snapshot:
    """The current snapshot; costs one cache read per refresh interval, no DB query."""
    now = time.monotonic()
    if _state.snapshot is not None and now - _state.checked_at < settings.CATALOG_REFRESH_SECONDS:
        return _state.snapshot
    version = await cache.aget(VERSION_KEY)
    if _state.snapshot is not None and version == _state.version:
        _state.checked_at = now
        return _state.snapshot
    if _state.lock is None:
        _state.lock = asyncio.Lock()
    async with _state.lock:
        # Another request may have reloaded while we waited for the lock.
        if _state.snapshot is None or _state.version != version:
            _state.snapshot = await sync_to_async(build_snapshot)()
            _state.version = version
        _state.checked_at = time.monotonic()
        return _state.snapshot


def get_sync() -> Snapshot:
    """For management commands and admin pages (outside the event loop)."""
    return build_snapshot()
