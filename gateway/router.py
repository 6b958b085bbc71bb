"""Choosing a deployment for a public model name: quotas first, then fallback on failure.

Deployments are tried in priority order. One whose quota is exhausted, or that
is parked (the provider said 429, or it keeps failing), is skipped without
spending a request. A retryable failure (429, 5xx, timeout, connection) moves on
to the next deployment, then to the model's configured fallbacks; a 400 does
not. When every deployment is rate-limited, a request either waits for a slot
(max_wait_seconds, first come first served) or gets a 429 that says which
limit, and when it resets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from gateway import catalog, clock, parking, quota
from gateway.calls import Call
from gateway.catalog import Route
from gateway.errors import GatewayError
from gateway.quota import Admission, Limit, Outcome
from gateway.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)

# Consecutive failures per deployment in this process; reset by a success.
_failures: dict[int, int] = {}
# Per public model: requests waiting for a slot queue here, in arrival order.
_gates: dict[str, asyncio.Lock] = {}


def quota_error(refusal: Outcome, model: str) -> GatewayError:
    """A 429 that tells the truth: which limit, how much, and when it frees up."""
    retry = max(math.ceil(refusal.retry_after), 1)
    headers = {"Retry-After": str(retry)}
    if refusal.cooling or refusal.check is None:
        return GatewayError(
            429,
            f"Every deployment of model '{model}' is paused after provider rate limits or errors. "
            f"Try again in {retry}s.",
            code="rate_limit_exceeded", type="requests", headers=headers,
        )
    limit = refusal.check.limit
    headers |= {
        f"x-ratelimit-limit-{limit.unit}": str(limit.value),
        f"x-ratelimit-remaining-{limit.unit}": "0",
        f"x-ratelimit-reset-{limit.unit}": quota.format_duration(retry),
    }
    if limit.period == "minute":
        return GatewayError(
            429,
            f"Rate limit reached for model '{model}': {limit.label} allows {limit.describe()}. "
            f"Try again in {retry}s.",
            code="rate_limit_exceeded", type=limit.unit, headers=headers,
        )
    resets = dt.datetime.fromtimestamp(clock.now() + refusal.retry_after, dt.UTC)
    return GatewayError(
        429,
        f"{'Daily' if limit.period == 'day' else 'Monthly'} quota exhausted for model '{model}': {limit.label} "
        f"allows {limit.describe()}. It resets at {resets:%Y-%m-%d %H:%M} UTC (midnight {limit.tz}), "
        f"in {quota.format_duration(retry)}.",
        code="insufficient_quota", type="insufficient_quota", headers=headers,
    )


def _earliest(a: Outcome | None, b: Outcome) -> Outcome:
    return b if a is None or b.retry_after < a.retry_after else a


async def _ordered_routes(routes: tuple[Route, ...], call: Call) -> list[Route]:
    """The model's deployments, then those of its configured fallbacks the caller may use."""
    out = list(routes)
    snapshot = await catalog.get()
    for name in snapshot.fallbacks.get(call.model, ()):
        if call.principal is None or call.principal.may_use(name):
            out += [r for r in snapshot.routes(name) if r not in out]
    return out


async def _admit_one(
    candidates: list[Route], tried: set[int], plimits: tuple[Limit, ...], tokens: int, call: Call
) -> tuple[Route, Admission] | Outcome | None:
    """The first deployment with room, or the refusal that frees up soonest (None: nothing left to try)."""
    refusal: Outcome | None = None
    for route in candidates:
        if route.id in tried:
            continue
        result = await quota.try_admit(route.limits, route.id, tokens, plimits)
        if isinstance(result, Admission):
            return route, result
        if result.check is not None and result.check.limit.scope in ("key", "key-model"):
            raise quota_error(result, call.model)  # the caller's own quota: no deployment can help
        refusal = _earliest(refusal, result)
    return refusal


async def candidates(routes: tuple[Route, ...], body: dict[str, Any], call: Call) -> AsyncIterator[Route]:
    """Yield admitted deployments in order; raise the 429 when none has room (after waiting, if allowed)."""
    ordered = await _ordered_routes(routes, call)
    tokens = quota.estimate_tokens(body)
    plimits = quota.key_limits(call.principal, call.model)
    max_wait = max((r.max_wait_seconds for r in routes), default=0.0)
    deadline = clock.now() + max_wait
    tried: set[int] = set()
    gate = _gates.setdefault(call.model, asyncio.Lock())
    # Requests already queued for a slot go first: a newcomer does not overtake them.
    result = None if (max_wait > 0 and gate.locked()) else await _admit_one(ordered, tried, plimits, tokens, call)
    while True:
        if isinstance(result, tuple):
            route, admission = result
            tried.add(route.id)
            call.admissions.append(admission)
            plimits = ()  # the key's quota is counted once per request, not per attempt
            yield route
            result = await _admit_one(ordered, tried, plimits, tokens, call)
            continue
        if tried:
            return  # every admitted deployment failed; the caller raises the last upstream error
        if result is not None and clock.now() + result.retry_after > deadline:
            raise quota_error(result, call.model)
        result = await _wait_for_slot(gate, ordered, plimits, tokens, call, deadline)


async def _wait_for_slot(
    gate: asyncio.Lock, ordered: list[Route], plimits: tuple[Limit, ...], tokens: int, call: Call, deadline: float
) -> tuple[Route, Admission] | Outcome | None:
    async with gate:
        while True:
            result = await _admit_one(ordered, set(), plimits, tokens, call)
            if not isinstance(result, Outcome):
                return result
            if clock.now() + result.retry_after > deadline:
                return result
            # Poll rather than sleep the whole wait: another worker may free a slot, and tests move the clock.
            await asyncio.sleep(min(max(result.retry_after, 0.01), settings.QUOTA_WAIT_POLL_SECONDS))


async def note_failure(route: Route, error: UpstreamError) -> None:
    """Park a deployment: until the provider's reset on a per-day 429, for its delay on other 429s, and with
    growing backoff when it keeps failing otherwise (never forever)."""
    if error.status == 429 or error.upstream_status == 429:
        if error.per_day:
            _, reset_at = quota.window(Limit("deployment", str(route.id), "", "rpd", 1, route.reset_timezone),
                                       clock.now())
            seconds = reset_at - clock.now()
        else:
            seconds = error.retry_after_seconds or settings.QUOTA_DEFAULT_COOLDOWN_SECONDS
        await quota.park(route.id, seconds)
        await parking.note(route.id, seconds, error.message)
        log.info("deployment %s parked for %.0fs after a provider 429", route.id, seconds)
        return
    if not error.retryable:
        return
    failures = _failures[route.id] = _failures.get(route.id, 0) + 1
    if failures >= 2:
        seconds = min(2.0 ** (failures - 2), settings.QUOTA_MAX_BACKOFF_SECONDS)
        await quota.park(route.id, seconds)
        await parking.note(route.id, seconds, f"{failures} failures in a row; the last: {error.message}")
        log.info("deployment %s parked for %.0fs after %d failures", route.id, seconds, failures)


def note_success(route: Route) -> None:
    _failures.pop(route.id, None)


async def complete(upstream: Upstream, routes: tuple[Route, ...], body: dict[str, Any], call: Call) -> dict[str, Any]:
    """Try admitted deployments in order; a retryable failure moves on, a client error stops."""
    error: UpstreamError | None = None
    async for route in candidates(routes, body, call):
        call.route, call.attempts = route, call.attempts + 1
        try:
            result = await upstream.complete(route, body)
        except UpstreamError as e:
            await note_failure(route, e)
            if not e.retryable:
                raise
            log.info("deployment %s failed (%s), trying the next", route.id, e.status)
            error = e
            continue
        note_success(route)
        return result
    assert error is not None
    raise error


async def open_stream(
    upstream: Upstream, routes: tuple[Route, ...], body: dict[str, Any], call: Call
) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
    """Start a stream and read its first chunk, so fallback happens before the client sees a byte."""
    error: UpstreamError | None = None
    async for route in candidates(routes, body, call):
        call.route, call.attempts = route, call.attempts + 1
        chunks = upstream.stream(route, body)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            note_success(route)
            return None, chunks
        except UpstreamError as e:
            await chunks.aclose()  # type: ignore[attr-defined]
            await note_failure(route, e)
            if not e.retryable:
                raise
            log.info("deployment %s failed (%s), trying the next", route.id, e.status)
            error = e
            continue
        note_success(route)
        return first, chunks
    assert error is not None
    raise error
