"""Choosing a deployment for a public model name: quotas first, then fallback on failure.

Deployments are tried in priority order. One whose quota is exhausted, or that
is parked (the provider said 429, or it keeps failing), is skipped without
spending a request. A retryable failure (429, 5xx, timeout, connection) moves on
to the next deployment, then to the model's configured fallbacks; a 400 does
not, except a prompt too long for the model's context window, which goes to the
model's context_window_fallbacks. Each call has the deployment's timeout (a
stream: for its first chunk), and a failed one is repeated num_retries times
before the next deployment. When every deployment is rate-limited, a request
either waits for a slot (max_wait_seconds, first come first served) or gets a
429 that says which limit, and when it resets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings

from accounts.principal import Principal
from gateway import catalog, clock, parking, quota
from gateway.api.calls import Call
from gateway.catalog import Route, Snapshot
from gateway.errors import GatewayError
from gateway.quota import Admission, Limit, Outcome
from gateway.upstreams import Upstream, UpstreamError

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
    if limit.unit == "usd":
        return budget_error(limit, refusal.retry_after)
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


def budget_error(limit: Limit, retry_after: float) -> GatewayError:
    """A spent budget: 429 insufficient_quota like a daily quota, naming the budget and its reset. A total
    budget never resets, so no Retry-After is sent (no wait would help)."""
    whose = f"{limit.label[:1].upper()}{limit.label[1:]}'s"
    if limit.period == "total":
        return GatewayError(
            429, f"{whose} {limit.describe()} is spent; it does not reset. Ask an "
            "administrator to raise it.", code="insufficient_quota", type="insufficient_quota")
    retry = max(math.ceil(retry_after), 1)
    resets = dt.datetime.fromtimestamp(clock.now() + retry_after, dt.UTC)
    return GatewayError(
        429, f"{whose} {limit.describe()} is spent; it resets at {resets:%Y-%m-%d %H:%M} UTC "
        f"(midnight {limit.tz}), in {quota.format_duration(retry)}.",
        code="insufficient_quota", type="insufficient_quota", headers={"Retry-After": str(retry)})


def _earliest(a: Outcome | None, b: Outcome) -> Outcome:
    return b if a is None or b.retry_after < a.retry_after else a


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request may go, all from one catalog snapshot: the model's deployments (narrowed to those able to
    take it), those of the model's configured fallbacks the caller may use, and those of its
    context_window_fallbacks (tried only when a provider says the prompt is too long for the model)."""

    routes: tuple[Route, ...]
    fallbacks: tuple[Route, ...] = ()
    context_fallbacks: tuple[Route, ...] = field(default=())

    def ordered(self) -> list[Route]:
        return [*self.routes, *(r for r in self.fallbacks if r not in self.routes)]


def plan(snapshot: Snapshot, model: str, routes: tuple[Route, ...], principal: Principal | None) -> Plan:
    policy = snapshot.policy
    return Plan(routes, _of_models(policy.fallbacks.get(model, ()), snapshot, principal),
                _of_models(policy.context_window_fallbacks.get(model, ()), snapshot, principal))


def _of_models(names: tuple[str, ...], snapshot: Snapshot, principal: Principal | None) -> tuple[Route, ...]:
    out: list[Route] = []
    for name in names:
        if principal is None or principal.may_use(name):
            out += [r for r in snapshot.routes(name) if r not in out]
    return tuple(out)


# How providers (and LiteLLM's ContextWindowExceededError) say a prompt does not fit the model.
_CONTEXT_WINDOW = re.compile(
    r"context[_ ](length|window)|maximum context|too many tokens|prompt is too long|input is too long", re.IGNORECASE)


def _context_window_fallback(error: UpstreamError, plan: Plan) -> Plan | None:
    """The deployments of the model's context_window_fallbacks, when the provider refused a prompt as too long."""
    if not plan.context_fallbacks or error.status != 400 or not _CONTEXT_WINDOW.search(f"{error.code} {error.message}"):
        return None
    return Plan(plan.context_fallbacks)


def timed_out(route: Route, seconds: float) -> UpstreamError:
    return UpstreamError(504, f"Provider '{route.provider_name}' (model '{route.public_name}') did not answer within "
                         f"{seconds:g}s (the deployment's timeout).", code="upstream_timeout")


T = TypeVar("T")


async def within(seconds: float, route: Route, work: Awaitable[T]) -> T:
    """The deployment's timeout around one upstream call: a 504 the router treats like a 5xx (next deployment)."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise timed_out(route, seconds) from None


async def _admit_one(
    candidates: list[Route], tried: set[int], plimits: tuple[Limit, ...], tokens: int, call: Call,
    parts: tuple[int, int] | None = None,
) -> tuple[Route, Admission] | Outcome | None:
    """The first deployment with room, or the refusal that frees up soonest (None: nothing left to try). A
    deployment the request can never fit (larger than one of its tokens limits) is skipped; its refusal is
    the answer only when no deployment could ever take the request."""
    refusal: Outcome | None = None
    beyond_reach: Outcome | None = None
    for route in candidates:
        if route.id in tried:
            continue
        # With a budget, the request costs what this deployment charges for it (a free one: nothing).
        usd = quota.micro_usd(route.price.estimate(*parts)) if parts and plimits and route.price else 0
        result = await quota.try_admit(route.limits, route.id, tokens, plimits, usd)
        if isinstance(result, Admission):
            return route, result
        own = result.check is not None and result.check.limit.scope in quota.CALLER_SCOPES
        if result.beyond_reach:
            if own:
                return result  # larger than the caller's own limit: no deployment can help
            beyond_reach = beyond_reach or result
            continue
        if own:
            raise quota_error(result, call.model)  # the caller's own quota: no deployment can help
        refusal = _earliest(refusal, result)
    return refusal or beyond_reach


class Candidates:
    """Admitted deployments in order, one per `next()` (None when every admitted one was tried); raises the 429
    when none has room (after waiting, if allowed).

    A class rather than an async generator: a generator left suspended when its first deployment answers (nearly
    every request) is closed by a task the event loop creates for it, one more task per request.
    """

    __slots__ = ("body", "call", "deadline", "gate", "ordered", "parts", "plimits", "started", "tokens", "tried")

    def __init__(self, plan: Plan, body: dict[str, Any], call: Call, *, key_counted: bool = False) -> None:
        self.ordered = plan.ordered()
        self.body, self.call = body, call
        self.tokens = quota.estimate_tokens(body)
        self.plimits = () if key_counted else quota.key_limits(call.principal, call.model)
        self.parts = quota.estimate_parts(body) if any(limit.unit == "usd" for limit in self.plimits) else None
        max_wait = max((r.max_wait_seconds for r in plan.routes), default=0.0)
        self.deadline = clock.now() + max_wait
        self.tried: set[int] = set()
        self.gate = _gates.setdefault(call.model, asyncio.Lock())
        # Requests already queued for a slot go first: a newcomer does not overtake them.
        self.started = not (max_wait > 0 and self.gate.locked())

    async def next(self) -> Route | None:
        call = self.call
        if self.started:
            result = await _admit_one(self.ordered, self.tried, self.plimits, self.tokens, call, self.parts)
        else:
            self.started, result = True, None
        while True:
            if isinstance(result, tuple):
                route, admission = result
                self.tried.add(route.id)
                call.admissions.append(admission)
                self.plimits = ()  # the key's quota is counted once per request, not per attempt
                return route
            if self.tried:
                return None  # every admitted deployment failed; the caller raises the last upstream error
            if result is not None and result.beyond_reach:
                raise quota.beyond_reach_error(result, call.model, self.body)  # a 400: waiting would never help
            if result is not None and clock.now() + result.retry_after > self.deadline:
                raise quota_error(result, call.model)
            result = await _wait_for_slot(self.gate, self.ordered, self.plimits, self.tokens, call, self.deadline,
                                          self.parts)


async def _wait_for_slot(
    gate: asyncio.Lock, ordered: list[Route], plimits: tuple[Limit, ...], tokens: int, call: Call, deadline: float,
    parts: tuple[int, int] | None = None,
) -> tuple[Route, Admission] | Outcome | None:
    async with gate:
        while True:
            result = await _admit_one(ordered, set(), plimits, tokens, call, parts)
            if not isinstance(result, Outcome) or result.beyond_reach:
                return result
            if clock.now() + result.retry_after > deadline:
                return result
            # Poll rather than sleep the whole wait: another worker may free a slot, and tests move the clock.
            await asyncio.sleep(min(max(result.retry_after, 0.01), settings.QUOTA_WAIT_POLL_SECONDS))


def _rate_limited(error: UpstreamError) -> bool:
    return error.status == 429 or error.upstream_status == 429


async def note_failure(route: Route, error: UpstreamError) -> None:
    """Park a deployment: until the provider's reset on a per-day 429, for its delay on other 429s, and with
    growing backoff when it keeps failing otherwise (never forever). The config's router_settings
    cooldown_time (a fixed pause) and allowed_fails (failures in a row before one) replace the defaults."""
    policy = (await catalog.get()).policy
    if _rate_limited(error):
        if error.per_day:
            _, reset_at = quota.window(Limit("deployment", str(route.id), "", "rpd", 1, route.reset_timezone),
                                       clock.now())
            seconds = reset_at - clock.now()
        else:
            seconds = error.retry_after_seconds or policy.cooldown_time or settings.QUOTA_DEFAULT_COOLDOWN_SECONDS
        await quota.park(route.id, seconds)
        await parking.note(route.id, seconds, error.message)
        log.info("deployment %s parked for %.0fs after a provider 429", route.id, seconds)
        return
    if not error.retryable:
        return
    failures = _failures[route.id] = _failures.get(route.id, 0) + 1
    allowed = 1 if policy.allowed_fails is None else policy.allowed_fails
    if failures > allowed:
        seconds = policy.cooldown_time if policy.cooldown_time is not None else \
            min(2.0 ** (failures - allowed - 1), settings.QUOTA_MAX_BACKOFF_SECONDS)
        await quota.park(route.id, seconds)
        await parking.note(route.id, seconds, f"{failures} failures in a row; the last: {error.message}")
        log.info("deployment %s parked for %.0fs after %d failures", route.id, seconds, failures)


def note_success(route: Route) -> None:
    _failures.pop(route.id, None)


async def _retry(route: Route, error: UpstreamError, attempt: int, body: dict[str, Any], call: Call) -> bool:
    """Whether to call the same deployment again: a retryable failure other than a 429, retries left, and room
    in its quota for one more call (a retry is a request the provider counts)."""
    if not error.retryable or _rate_limited(error) or attempt >= route.num_retries:
        return False
    admission = await quota.try_admit(route.limits, route.id, quota.estimate_tokens(body))
    if not isinstance(admission, Admission):
        return False
    call.admissions.append(admission)
    return True


async def complete(upstream: Upstream, plan: Plan, body: dict[str, Any], call: Call) -> dict[str, Any]:
    """A whole answer from the first deployment that gives one (see _in_order)."""

    async def once(route: Route) -> dict[str, Any]:
        return await within(route.timeout, route, upstream.complete(route, body))

    return await _with_context_fallback(plan, body, call, once)


async def open_stream(
    upstream: Upstream, plan: Plan, body: dict[str, Any], call: Call
) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
    """Start a stream and read its first chunk, so fallback happens before the client sees a byte."""

    async def once(route: Route) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
        chunks = upstream.stream(route, body)
        try:
            # The stream timeout bounds the first chunk only; later silences are STREAM_IDLE_TIMEOUT's.
            return await within(route.stream_timeout, route, anext(chunks)), chunks
        except StopAsyncIteration:
            return None, chunks
        except UpstreamError:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise

    return await _with_context_fallback(plan, body, call, once)


async def _with_context_fallback(plan: Plan, body: dict[str, Any], call: Call,
                                 once: Callable[[Route], Awaitable[T]]) -> T:
    """The plan's deployments in order; when a provider said the prompt is too long for the model, the model's
    context_window_fallbacks (their key limits already counted)."""
    try:
        return await _in_order(plan, body, call, once)
    except UpstreamError as e:
        fallback = _context_window_fallback(e, plan)
        if not fallback:
            raise
        log.info("model %s: prompt too long, trying its context_window_fallbacks", call.model)
        return await _in_order(fallback, body, call, once, key_counted=True)


async def _in_order(plan: Plan, body: dict[str, Any], call: Call, once: Callable[[Route], Awaitable[T]],
                    key_counted: bool = False) -> T:
    """Try admitted deployments in order, each up to its retries; a retryable failure moves on, a client error
    stops."""
    error: UpstreamError | None = None
    routes = Candidates(plan, body, call, key_counted=key_counted)
    while (route := await routes.next()) is not None:
        attempt = 0
        while True:
            call.route, call.attempts = route, call.attempts + 1
            try:
                result = await once(route)
            except UpstreamError as e:
                error = e
                # A request's retries are one failure of the deployment (parking is for the requests after it).
                if e.retryable and await _retry(route, e, attempt, body, call):
                    attempt += 1
                    log.info("deployment %s failed (%s), calling it again", route.id, e.status)
                    continue
                await note_failure(route, e)
                if not e.retryable:
                    raise
                log.info("deployment %s failed (%s), trying the next", route.id, e.status)
                break
            note_success(route)
            return result
    assert error is not None
    raise error
