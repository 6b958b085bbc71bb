"""Limits and their windows, and the plan of checks one request makes.

A `Limit` is one figure an operator set (50 requests per day on a deployment, 1,000 tokens per day on a key).
Per-minute limits slide in one-second steps (no burst at a window boundary); daily and monthly limits are
fixed windows aligned to midnight in the limit's time zone (a provider's reset zone, or KEY_QUOTA_TIMEZONE).
A `Plan` is every check one request makes on one deployment (its own limits, its pool's, the key's), built
once and reused by every request until a fixed window rolls over: a request only adds its token estimate.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

MINUTE_MS = 60_000
# Fixed-window keys outlive their window a little, for late reads of "used".
FIXED_GRACE_MS = 3_600_000


@dataclass(frozen=True)
class Limit:
    """One limit: e.g. 50 requests per day for the deployment gemini/gemini-2.5-pro."""

    scope: str  # deployment | pool | key | key-model | user
    scope_id: str
    label: str  # for messages: "provider 'gemini'", "pool 'openrouter-free'", "your API key", "your account"
    name: str  # rpm | tpm | rpd | tpd | tokens_per_month | usd_day | usd_month | usd_total
    value: int
    tz: str = "UTC"
    # Derived once, read on every request.
    unit: str = field(init=False, repr=False, compare=False)  # requests | tokens | usd (in micro-dollars)
    period: str = field(init=False, repr=False, compare=False)  # minute | day | month | total
    sliding: bool = field(init=False, repr=False, compare=False)  # per-minute: slides; others: fixed windows
    base_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        period = _PERIODS.get(self.name, "month")
        unit = "requests" if self.name in ("rpm", "rpd") else "usd" if self.name.startswith("usd_") else "tokens"
        derived = {
            "unit": unit,
            "period": period,
            "sliding": period == "minute",
            "base_key": f"{self.scope}:{self.scope_id}:{self.name}",
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen

    def describe(self) -> str:
        if self.unit == "usd":
            every = "in total" if self.period == "total" else f"per {self.period}"
            return f"budget of ${self.value / USD:,.2f} {every}"
        return f"{self.value} {self.unit} per {self.period}"


_PERIODS = {"rpm": "minute", "tpm": "minute", "rpd": "day", "tpd": "day", "usd_day": "day", "usd_month": "month",
            "usd_total": "total"}
# Budgets are counted in integer micro-dollars, so the stores stay integer.
USD = 1_000_000
# A "total" budget is one fixed window that never rolls over: it begins here and ends far beyond any key.
TOTAL_START = dt.date(2000, 1, 1)
TOTAL_END = dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()


# (tz, period) -> (window start, reset time, first day): every request needs its windows, which change
# once a day or month.
_windows: dict[tuple[str, str], tuple[float, float, dt.date]] = {}


def window(limit: Limit, now: float) -> tuple[dt.date, float]:
    """The fixed window containing `now`: its first day and the unix time it resets."""
    start, _, reset_at = window_span(limit, now)
    return start, reset_at


def window_span(limit: Limit, now: float) -> tuple[dt.date, float, float]:
    """The fixed window containing `now`: its first day, and the unix times it began and resets."""
    held = _windows.get((limit.tz, limit.period))
    if held is not None and held[0] <= now < held[1]:
        return held[2], held[0], held[1]
    start, reset_at = _window(limit, now)
    tz = zoneinfo.ZoneInfo(limit.tz)
    begins = dt.datetime.combine(start, dt.time(), tz).timestamp()
    if begins <= now < reset_at:  # a moved test clock may go backwards: only remember a consistent window
        _windows[(limit.tz, limit.period)] = (begins, reset_at, start)
    return start, begins, reset_at


def _window(limit: Limit, now: float) -> tuple[dt.date, float]:
    tz = zoneinfo.ZoneInfo(limit.tz)
    local = dt.datetime.fromtimestamp(now, tz)
    if limit.period == "total":
        return TOTAL_START, TOTAL_END
    if limit.period == "day":
        start = local.date()
        nxt = dt.datetime.combine(start + dt.timedelta(days=1), dt.time(), tz)
    else:
        start = local.date().replace(day=1)
        nxt = dt.datetime.combine((start + dt.timedelta(days=32)).replace(day=1), dt.time(), tz)
    return start, nxt.timestamp()


@dataclass(slots=True, frozen=True)
class Check:
    limit: Limit
    key: str
    window_ms: int  # sliding: window length; fixed: reset time (unix ms)
    day: dt.date | None = None

    @property
    def durable_key(self) -> str:
        return self.limit.base_key

    def cost(self, tokens: int, usd: int = 0) -> int:
        """What one request of `tokens` (estimated) tokens and `usd` micro-dollars counts against this limit."""
        unit = self.limit.unit
        return 1 if unit == "requests" else tokens if unit == "tokens" else usd


def cooldown_key(deployment_id: int) -> str:
    """The store's key of a deployment's pause (the provider said 429, or it keeps failing)."""
    return f"q:cool:{deployment_id}"


class Plan:
    """Every check one request makes on one deployment (its own limits, its pool's, the key's) in the windows
    of now. Built once and reused by every request until a daily or monthly window rolls over: a request only
    adds its token estimate."""

    __slots__ = ("begins", "checks", "cooldown", "ends", "fixed", "keys", "most_tokens", "spec", "tokens", "usd")

    def __init__(self, limits: Sequence[Limit], now: float, cooldown: str | None = None) -> None:
        checks = []
        self.begins, self.ends = -math.inf, math.inf  # when the windows of every fixed check hold
        for limit in limits:
            if limit.sliding:
                checks.append(Check(limit, f"q:{limit.base_key}", MINUTE_MS))
            else:
                day, begins, reset_at = window_span(limit, now)
                checks.append(Check(limit, f"q:{limit.base_key}:{day.isoformat()}", int(reset_at * 1000), day))
                self.begins, self.ends = max(self.begins, begins), min(self.ends, reset_at)
        self.checks = tuple(checks)
        self.cooldown = cooldown
        self.fixed = tuple(c for c in checks if c.day is not None)
        self.tokens = tuple(c for c in checks if c.limit.unit == "tokens")
        # Budgets: a plan without one (most) costs nothing more per request.
        self.usd = tuple(c for c in checks if c.limit.unit == "usd")
        # The largest token estimate any window of this plan can ever hold: a request over it can never be
        # admitted, however long it waits.
        self.most_tokens = min((c.limit.value for c in self.tokens), default=math.inf)
        # What the acquire script reads: the keys, then "cooldown;kind,unit,limit,window,key;..." with 1-based
        # indexes into those keys (cooldown 0: none).
        self.keys = ([cooldown] if cooldown else []) + [c.key for c in checks]
        first = 2 if cooldown else 1
        self.spec = ";".join([str(int(bool(cooldown)))] + [
            f"{'s' if c.limit.sliding else 'f'},{c.limit.unit[0]},{c.limit.value},{c.window_ms},{first + i}"
            for i, c in enumerate(checks)
        ])

    def holds(self, now: float) -> bool:
        return self.begins <= now < self.ends

    def beyond_reach(self, tokens: int) -> Check | None:
        """The tokens limit a request of `tokens` exceeds by itself (the smallest), if any."""
        if tokens <= self.most_tokens:
            return None
        return min((c for c in self.tokens if tokens > c.limit.value), key=lambda c: c.limit.value)


# (id of the deployment's limits, id of the key's, deployment) -> (those limits, the plan). The limit tuples
# live in the catalog snapshot and the key cache, so an identity check tells a stale entry from a live one.
_plans: dict[tuple[int, int, int | None], tuple[Sequence[Limit], Sequence[Limit], Plan]] = {}


def plan_for(limits: Sequence[Limit], key_limits: Sequence[Limit], deployment_id: int | None, now: float) -> Plan:
    slot = (id(limits), id(key_limits), deployment_id)
    held = _plans.get(slot)
    if held is not None and held[0] is limits and held[1] is key_limits and held[2].holds(now):
        return held[2]
    if len(_plans) > 4096:
        _plans.clear()  # old catalog snapshots and edited keys
    cooldown = cooldown_key(deployment_id) if deployment_id is not None else None
    plan = Plan([*limits, *key_limits], now, cooldown)
    _plans[slot] = (limits, key_limits, plan)
    return plan


# --- A key's own limits -------------------------------------------------------------------------------------


# Who a limit belongs to when it is the caller's own (a refusal by one of these: no other deployment helps).
CALLER_SCOPES = ("key", "key-model", "user")
USER_LABEL = "your account"


def key_limits(principal: Any, model: str) -> tuple[Limit, ...]:
    """The calling key's own limits for this model (key-wide and per-model), and its owner's budget, which all
    of the owner's keys spend together; none for the master key. The same tuple for the same key and model
    until the key or its owner's policy is edited (the quota plans are cached by it).

    `principal` is read by its attributes only (is_master, key_id, user_id, limits, model_limits,
    user_budget), so whichever app owns the type, quotas need not import it."""
    if principal is None or principal.is_master or principal.key_id is None:
        return ()
    tz = settings.KEY_QUOTA_TIMEZONE
    out = _limits_of(principal.limits, "key", str(principal.key_id), "your API key", tz)
    if model in principal.model_limits:
        label = f"your API key for model '{model}'"
        out = _joined(out, _limits_of(principal.model_limits[model], "key-model", f"{principal.key_id}:{model}",
                                      label, tz))
    user_budget = getattr(principal, "user_budget", None)
    if user_budget is not None and principal.user_id is not None:
        out = _joined(out, user_limits(principal.user_id, user_budget))
    return out


def user_limits(user_id: int, budget: Any) -> tuple[Limit, ...]:
    """A user's own budget (the `budget` and `budget_period` of `budget`): one limit, counted by every key of
    theirs under the same counter."""
    return _key_limits("user", str(user_id), USER_LABEL, settings.KEY_QUOTA_TIMEZONE,
                       f"usd_{getattr(budget, 'budget_period', 'total')}", None, None, None, None,
                       getattr(budget, "budget", None))


def key_wide_limits(key_id: int, limits: Any) -> tuple[Limit, ...]:
    """A key's own limits across all models (for the admin's key list)."""
    return _limits_of(limits, "key", str(key_id), "your API key", settings.KEY_QUOTA_TIMEZONE)


@functools.lru_cache(maxsize=4096)
def _joined(a: tuple[Limit, ...], b: tuple[Limit, ...]) -> tuple[Limit, ...]:
    return a + b


def _limits_of(limits: Any, scope: str, scope_id: str, label: str, tz: str) -> tuple[Limit, ...]:
    budget = getattr(limits, "budget", None)
    return _key_limits(scope, scope_id, label, tz, f"usd_{getattr(limits, 'budget_period', 'total')}", limits.rpm,
                       limits.rpd, limits.tokens_per_day, limits.tokens_per_month, budget)


@functools.lru_cache(maxsize=4096)
def _key_limits(scope: str, scope_id: str, label: str, tz: str, budget_name: str, *values: int | None
                ) -> tuple[Limit, ...]:
    # Asked for on every request of a key; a key's limits change only when an operator edits them.
    names = ("rpm", "rpd", "tpd", "tokens_per_month", budget_name)
    return tuple(Limit(scope, scope_id, label, name, value, tz)
                 for name, value in zip(names, values, strict=True) if value is not None)
