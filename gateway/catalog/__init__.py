"""An in-process snapshot of the enabled catalog, so /v1 requests never query it.

Every change to a catalog row (save, delete, a queryset's update or delete, the admin's bulk delete: see
gateway.models.CatalogModel) bumps a version number in the shared cache, and again when its transaction
commits; each worker compares it at most every CATALOG_REFRESH_SECONDS and reloads the snapshot when it
moved. With Redis that reaches every worker on every host; the process that made the change reloads at its
next request.

A request is never refused for a change the worker has not checked yet: one that names a model the snapshot
lacks has the version checked again before its 404 (`recheck`), and requests that arrive while a check or a
reload is under way wait for it (bounded) instead of being served the snapshot it is about to replace.
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

from gateway import db, pricing, redact
from gateway.models import CATALOG_VERSION_KEY, LocalChanges, bump_catalog_version
from gateway.pricing import DeploymentPrice
from gateway.quota import Limit

log = logging.getLogger(__name__)

VERSION_KEY = CATALOG_VERSION_KEY


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
    # The provider's own egress proxy ("" = HTTPS_PROXY/HTTP_PROXY/NO_PROXY decide; see gateway.upstreams.client).
    proxy_url: str = field(default="", repr=False)
    # Seconds for the whole answer, and for a stream's first chunk; calls again after a failure (RouterPolicy
    # fills what the deployment leaves empty).
    timeout: float = 600.0
    stream_timeout: float = 600.0
    num_retries: int = 0
    # How the deployment is charged: what a request counts against a budget.
    price: DeploymentPrice | None = field(default=None, repr=False, compare=False)

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
class RouterPolicy:
    """What an imported LiteLLM config's router_settings / litellm_settings say for every deployment."""

    timeout: float | None = None  # router_settings.timeout, else litellm_settings.request_timeout
    num_retries: int = 0  # router_settings.num_retries, else litellm_settings.num_retries
    cooldown_time: float | None = None  # how long a failing deployment is parked
    allowed_fails: int | None = None  # failures in a row before it is parked
    drop_params: bool = False  # litellm_settings.drop_params: LiteLLM drops what a provider does not take
    # Model -> models tried when the first one's deployments all failed or were refused (fallbacks), or when
    # the provider said the prompt is longer than the model's context window (context_window_fallbacks).
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    context_window_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    by_name: dict[str, tuple[Route, ...]]
    created: int  # unix time, shown as "created" in /v1/models
    # The imported config's router settings: timeouts, retries, cross-name fallbacks ({"a": ["b", "c"]}), ...
    policy: RouterPolicy = field(default_factory=RouterPolicy)

    def routes(self, public_name: str) -> tuple[Route, ...]:
        return self.by_name.get(public_name, ())

    def names(self) -> list[str]:
        return sorted(self.by_name)


def invalidate() -> None:
    """Tell every worker the catalog changed (the catalog's models do it themselves for every write)."""
    bump_catalog_version()
    _state.checked_at = 0.0
    _state.snapshot = None
    _state.generation += 1
    _state.pending = None  # a check under way read the version before this change: the next request begins anew


def build_snapshot() -> Snapshot:
    from gateway.models import Deployment

    by_name: dict[str, list[Route]] = {}
    rows = (
        Deployment.objects.filter(enabled=True, provider__enabled=True)
        .select_related("provider", "pool")
        .order_by("public_name", "priority", "id")
    )
    policy = load_policy()
    for d in rows:
        route = route_for(d, policy)
        by_name.setdefault(d.public_name, []).append(route)
    return Snapshot({k: tuple(v) for k, v in by_name.items()}, created=int(time.time()), policy=policy)


def route_for(d: Any, policy: RouterPolicy | None = None) -> Route:
    """One deployment (with its provider and pool loaded) as a Route; also for the admin's Test action."""
    from gateway.upstreams import providers

    policy = policy or load_policy()
    p = d.provider
    # UPSTREAM_TIMEOUT is the default and the ceiling: the upstream clients bound every call by it too.
    timeout = min(d.timeout or policy.timeout or settings.UPSTREAM_TIMEOUT, settings.UPSTREAM_TIMEOUT)
    params = providers.merge_params(p.extra, d.litellm_params)
    if policy.drop_params:
        params = {"drop_params": True, **params}
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
        params=params,
        model_info=d.model_info,
        rpm=d.rpm,
        tpm=d.tpm,
        rpd=d.rpd,
        priority=d.priority,
        reset_timezone=p.reset_timezone,
        max_wait_seconds=d.max_wait_seconds,
        limits=deployment_limits(d),
        price=pricing.for_deployment(d),
        proxy_url=p.proxy_url,
        timeout=timeout,
        # LiteLLM's rule: a stream without its own stream_timeout starts within the timeout.
        stream_timeout=min(d.stream_timeout, settings.UPSTREAM_TIMEOUT) if d.stream_timeout else timeout,
        num_retries=d.num_retries if d.num_retries is not None else policy.num_retries,
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


def load_policy() -> RouterPolicy:
    """The router's settings from the imported config (values were type-checked at import)."""
    from gateway.models import ConfigSetting

    sections = {row.key: row.value for row in ConfigSetting.objects.filter(key__in=["router_settings",
                                                                                 "litellm_settings"])}
    router, general = (value if isinstance(value := sections.get(key), dict) else {}
                       for key in ("router_settings", "litellm_settings"))

    def first(*values: Any) -> Any:
        return next((v for v in values if v is not None and not isinstance(v, bool)), None)

    timeout = first(router.get("timeout"), general.get("request_timeout"))
    retries = first(router.get("num_retries"), general.get("num_retries"))
    cooldown, fails = first(router.get("cooldown_time")), first(router.get("allowed_fails"))
    return RouterPolicy(
        timeout=float(timeout) if timeout else None,
        num_retries=int(retries or 0),
        cooldown_time=float(cooldown) if cooldown is not None else None,
        allowed_fails=int(fails) if fails is not None else None,
        drop_params=general.get("drop_params") is True,
        fallbacks=_fallbacks(router.get("fallbacks"), general.get("fallbacks")),
        context_window_fallbacks=_fallbacks(router.get("context_window_fallbacks"),
                                            general.get("context_window_fallbacks")),
    )


def _fallbacks(*sections: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for entries in sections:
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
    # The version check (and reload) under way, and when it began; every request that needs it waits for it.
    pending: asyncio.Future[Snapshot] | None = None
    pending_since: float = 0.0
    # Bumped by invalidate(): a check begun before it must not store what it read.
    generation: int = 0
    local_changes: int = 0  # LocalChanges.count when the snapshot was built


_state = _State()

# How long a request waits for a version check or reload under way before it is served the catalog held.
REFRESH_WAIT_SECONDS = 5.0


async def get() -> Snapshot:
    """The current snapshot; costs one cache read per refresh interval, no DB query.

    While a version check (or the reload it leads to) is under way, requests wait for it (up to
    REFRESH_WAIT_SECONDS) rather than being served the snapshot it may be about to replace.
    """
    if _state.local_changes != LocalChanges.count:
        # This process changed the catalog itself: drop its snapshot now, not a refresh interval later.
        _state.local_changes = LocalChanges.count
        _state.snapshot, _state.checked_at, _state.pending = None, 0.0, None
        _state.generation += 1
    snapshot = _state.snapshot
    if (snapshot is not None and _state.pending is None
            and time.monotonic() - _state.checked_at < settings.CATALOG_REFRESH_SECONDS):
        return snapshot
    return await _checked(0.0)


async def recheck(since: float) -> Snapshot:
    """The snapshot as of a version check begun at or after `since` (time.monotonic()), whatever the interval.

    For a request that found no model: it may have been created a moment ago. A check under way that began
    earlier may have read the old version, so it is waited for and another one made.
    """
    return await _checked(since)


async def _checked(since: float) -> Snapshot:
    pending = _state.pending
    if pending is not None and _state.pending_since < since:
        await _wait(pending)
        pending = _state.pending if _state.pending_since >= since else None
    if pending is None:
        pending = _begin_check()
    return await _wait(pending)


def _begin_check() -> asyncio.Future[Snapshot]:
    pending = asyncio.ensure_future(_check(_state.generation))
    _state.pending, _state.pending_since = pending, time.monotonic()
    pending.add_done_callback(_check_done)
    return pending


def _check_done(pending: asyncio.Future[Snapshot]) -> None:
    if _state.pending is pending:
        _state.pending = None
    if not pending.cancelled():
        pending.exception()  # retrieved: a failure is the waiting requests' to report, not the loop's


async def _wait(pending: asyncio.Future[Snapshot]) -> Snapshot:
    """The check's snapshot; one that takes too long, or fails, leaves the request the snapshot held (if any)."""
    if _state.snapshot is None:
        return await asyncio.shield(pending)  # nothing to serve meanwhile: the request waits (or gets its 503)
    try:
        return await asyncio.wait_for(asyncio.shield(pending), REFRESH_WAIT_SECONDS)
    except TimeoutError:
        log.warning("the catalog check took over %gs; serving the catalog held", REFRESH_WAIT_SECONDS)
    except (OperationalError, InterfaceError):
        pass  # logged by the check
    return _state.snapshot or await asyncio.shield(pending)


async def _check(generation: int) -> Snapshot:
    """Read the shared version; reload the snapshot if it moved."""
    held = _state.snapshot
    try:
        version = await cache.aget(VERSION_KEY)
    except Exception:
        # The shared cache is down: keep serving the catalog we have rather than failing every request.
        if held is not None:
            _state.checked_at = time.monotonic()
            return held
        version = None
    if held is not None and version == _state.version:
        _state.checked_at = time.monotonic()
        return held
    try:
        snapshot = await sync_to_async(db.managed(build_snapshot))()
    except (OperationalError, InterfaceError):
        if held is None:
            raise  # nothing to serve: the request gets its 503
        # The database is away: keep serving the catalog we have (as when the cache is away), and try again
        # next interval. (A Redis restart loses the version key, so the first check after it asks for a
        # reload: that must not fail requests if the database is the one away then.)
        log.warning("could not reload the catalog (database unreachable); serving the one held")
        _state.checked_at = time.monotonic()
        return held
    if generation == _state.generation:
        _state.snapshot, _state.version, _state.checked_at = snapshot, version, time.monotonic()
    return snapshot


def get_sync() -> Snapshot:
    """For management commands and admin pages (outside the event loop)."""
    return build_snapshot()
