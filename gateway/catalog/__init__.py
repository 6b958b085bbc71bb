"""An in-process snapshot of the enabled catalog, so /v1 requests never query it.

Saving a Provider or Deployment bumps a version number in the shared cache;
each worker compares it at most every CATALOG_REFRESH_SECONDS and reloads the
snapshot when it moved. With Redis that reaches every worker on every host;
with the in-process cache (embedded default, one process) it is immediate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError

from gateway import db, redact
from gateway.quota import Limit

log = logging.getLogger(__name__)

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
    reset_timezone: str = "UTC"
    max_wait_seconds: float = 0.0
    # The provider-side quota this deployment is counted against (its own and its pool's).
    limits: tuple[Limit, ...] = ()

    @property
    def mode(self) -> str:
        """What the model does, as LiteLLM's model_info.mode says: chat, embedding, audio_speech ("" = unsaid)."""
        return str(self.model_info.get("mode") or "")

    @property
    def supports_vision(self) -> bool | None:
        """model_info.supports_vision; None when the catalog does not say (the provider then decides)."""
        value = self.model_info.get("supports_vision")
        return value if isinstance(value, bool) else None


@dataclass(frozen=True)
class Snapshot:
    by_name: dict[str, tuple[Route, ...]]
    created: int  # unix time, shown as "created" in /v1/models
    # Cross-name fallbacks from an imported LiteLLM config: {"a": ["b", "c"]}.
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)

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
        .select_related("provider", "pool")
        .order_by("public_name", "priority", "id")
    )
    for d in rows:
        route = route_for(d)
        by_name.setdefault(d.public_name, []).append(route)
    return Snapshot({k: tuple(v) for k, v in by_name.items()}, created=int(time.time()), fallbacks=load_fallbacks())


def route_for(d: Any) -> Route:
    """One deployment (with its provider and pool loaded) as a Route; also for the admin's Test action."""
    from gateway.upstreams import providers

    p = d.provider
    try:
        api_key = p.api_key()
    except ValueError:
        api_key = ""
    redact.register(api_key)
    return Route(
        id=d.id,
        public_name=d.public_name,
        provider_id=p.id,
        provider_name=p.name,
        kind=p.kind,
        upstream_model=d.upstream_model,
        litellm_model=d.litellm_model(),
        api_base=providers.api_base_for(p),
        api_key=api_key,
        params=providers.merge_params(p.extra, d.litellm_params),
        model_info=d.model_info,
        rpm=d.rpm,
        tpm=d.tpm,
        rpd=d.rpd,
        priority=d.priority,
        reset_timezone=p.reset_timezone,
        max_wait_seconds=d.max_wait_seconds,
        limits=deployment_limits(d),
    )


def deployment_limits(d: Any) -> tuple[Limit, ...]:
    label = f"provider '{d.provider.name}' ({d.upstream_model})"
    limits = [
        Limit("deployment", str(d.id), label, name, value, d.provider.reset_timezone)
        for name in ("rpm", "tpm", "rpd", "tpd")
        if (value := getattr(d, name)) is not None
    ]
    if d.pool is not None:
        limits += [
            Limit("pool", d.pool.name, f"shared pool '{d.pool.name}'", name, value, d.pool.reset_timezone)
            for name in ("rpm", "tpm", "rpd", "tpd")
            if (value := getattr(d.pool, name)) is not None
        ]
    return tuple(limits)


def load_fallbacks() -> dict[str, tuple[str, ...]]:
    """LiteLLM's `fallbacks: [{"a": ["b"]}]`, from router_settings or litellm_settings."""
    from gateway.models import ConfigSetting

    out: dict[str, tuple[str, ...]] = {}
    for row in ConfigSetting.objects.filter(key__in=["router_settings", "litellm_settings"]):
        entries = row.value.get("fallbacks") if isinstance(row.value, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            for name, targets in entry.items():
                if isinstance(targets, list):
                    out[str(name)] = out.get(str(name), ()) + tuple(str(t) for t in targets)
                elif isinstance(targets, str):
                    out[str(name)] = (*out.get(str(name), ()), targets)
    return out


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
    if _state.snapshot is not None:
        # One request checks the version; the others arriving meanwhile keep the snapshot they have instead
        # of each reading the cache (a thread hop apiece) at the same moment.
        _state.checked_at = now
    try:
        version = await cache.aget(VERSION_KEY)
    except Exception:
        # The shared cache is down: keep serving the catalog we have rather than failing every request.
        if _state.snapshot is not None:
            return _state.snapshot
        version = None
    if _state.snapshot is not None and version == _state.version:
        _state.checked_at = now
        return _state.snapshot
    if _state.lock is None:
        _state.lock = asyncio.Lock()
    async with _state.lock:
        # Another request may have reloaded while we waited for the lock.
        if _state.snapshot is None or _state.version != version:
            try:
                _state.snapshot = await sync_to_async(db.managed(build_snapshot))()
            except (OperationalError, InterfaceError):
                if _state.snapshot is None:
                    raise  # nothing to serve: the request gets its 503
                # The database is away: keep serving the catalog we have (as when the cache is away), and try
                # again next interval. (A Redis restart loses the version key, so the first check after it
                # asks for a reload: that must not fail requests if the database is the one away then.)
                log.warning("could not reload the catalog (database unreachable); serving the one held")
                _state.checked_at = time.monotonic()
                return _state.snapshot
            _state.version = version
        _state.checked_at = time.monotonic()
        return _state.snapshot


def get_sync() -> Snapshot:
    """For management commands and admin pages (outside the event loop)."""
    return build_snapshot()
