"""Quotas: exact, atomic check-and-consume of every limit a request is subject to.

A request is admitted on a deployment only if *all* of its limits have room:
the deployment's own (RPM/TPM/RPD/TPD), its shared pool's, and the calling
key's (RPM/RPD/tokens per day or month, optionally per model). All of them are
checked and consumed in one atomic step: a Lua script in Redis (one round trip,
so N workers on M hosts never let more through than the limit), or the same
algorithm on an in-process store when there is no Redis (one worker process).

Per-minute windows slide in one-second steps (no burst at a window boundary). Daily and
monthly windows are fixed, aligned to midnight in the provider's reset time
zone; their counts are also written (in batches, off the request path) to
DailyCounter rows, and read back when the fast store has no value for the
day, so a restart never hands out a fresh day's quota.

Under load (a worker busy on one deployment and key), the Redis store's admission call also reserves a block
of a roomy limit (a lease: at most a 16th of what each limit has left) that the worker admits from by itself
for under a second, giving back what it did not use. The block is counted in Redis when granted, so leases
never let more through than the limit either; they take Redis off the path of most requests at high rates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
import threading
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from gateway import clock, db
from gateway.errors import GatewayError
from gateway.quota import resp

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
# Fixed-window keys outlive their window a little, for late reads of "used".
FIXED_GRACE_MS = 3_600_000


@dataclass(frozen=True)
class Limit:
    """One limit: e.g. 50 requests per day for the deployment gemini/gemini-2.5-pro."""

    scope: str  # deployment | pool | key | key-model
    scope_id: str
    label: str  # for messages: "provider 'gemini'", "pool 'openrouter-free'", "your API key"
    name: str  # rpm | tpm | rpd | tpd | tokens_per_month
    value: int
    tz: str = "UTC"
    # Derived once, read on every request.
    unit: str = field(init=False, repr=False, compare=False)  # requests | tokens
    period: str = field(init=False, repr=False, compare=False)  # minute | day | month
    sliding: bool = field(init=False, repr=False, compare=False)  # per-minute: slides; others: fixed windows
    base_key: str = field(init=False, repr=False, compare=False)
    spec: str = field(init=False, repr=False, compare=False)  # "kind,limit," as the Lua script reads it

    def __post_init__(self) -> None:
        period = {"rpm": "minute", "tpm": "minute", "rpd": "day", "tpd": "day"}.get(self.name, "month")
        derived = {
            "unit": "requests" if self.name in ("rpm", "rpd") else "tokens",
            "period": period,
            "sliding": period == "minute",
            "base_key": f"{self.scope}:{self.scope_id}:{self.name}",
            "spec": f"{'s' if period == 'minute' else 'f'},{self.value},",
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen

    def describe(self) -> str:
        return f"{self.value} {self.unit} per {self.period}"


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

    def cost(self, tokens: int) -> int:
        """What one request of `tokens` (estimated) tokens counts against this limit."""
        return 1 if self.limit.unit == "requests" else tokens


class Plan:
    """Every check one request makes on one deployment (its own limits, its pool's, the key's) in the windows
    of now. Built once and reused by every request until a daily or monthly window rolls over: a request only
    adds its token estimate."""

    __slots__ = ("begins", "checks", "cooldown", "ends", "fixed", "keys", "spec", "tokens")

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
        # What the Lua script reads: the keys, then "cooldown;kind,unit,limit,window,key;..." with 1-based
        # indexes into those keys (cooldown 0: none).
        self.keys = ([cooldown] if cooldown else []) + [c.key for c in checks]
        first = 2 if cooldown else 1
        self.spec = ";".join([str(int(bool(cooldown)))] + [
            f"{'s' if c.limit.sliding else 'f'},{c.limit.unit[0]},{c.limit.value},{c.window_ms},{first + i}"
            for i, c in enumerate(checks)
        ])

    def holds(self, now: float) -> bool:
        return self.begins <= now < self.ends


_HEADER_NAMES = {unit: tuple(f"x-ratelimit-{part}-{unit}".encode() for part in ("limit", "remaining", "reset"))
                 for unit in ("requests", "tokens")}

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


@dataclass
class Outcome:
    """What the store answered. On refusal, `check` is the limit that said no."""

    admitted: bool
    # Admitted: for requests, then tokens, the limit with the least room before this request (the one its
    # x-ratelimit-* headers describe): its index in the plan's checks plus 1 (0: none), what it had used, and
    # the ms until its oldest counted second stops counting (per-minute) or its window ends.
    tightest: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    used: int = 0  # refused: what the refusing limit had used
    check: Check | None = None
    retry_after: float = 0.0
    cooling: bool = False
    missing: int | None = None  # index of a fixed counter the store has no value for (seed and retry)
    at_ms: int = 0  # when it was counted (admitted only): its per-minute buckets are that second's


class Correction(NamedTuple):  # made for every request: a tuple is built several times faster than a dataclass
    """Tokens to give back (negative) or add to one counter, once a call's real usage is known."""

    key: str
    sliding: bool
    bucket: int  # the second the request was counted in (per-minute windows only)
    delta: int


class Store(Protocol):
    async def acquire(self, plan: Plan, tokens: int, now_ms: int) -> Outcome: ...

    async def seed(self, key: str, value: int, expire_at_ms: int) -> None: ...

    def correct(self, corrections: list[Correction]) -> None: ...

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...

    async def park(self, key: str, until_ms: int, now_ms: int) -> None: ...

    def used_sync(self, checks: Sequence[Check], now_ms: int) -> list[tuple[int, int]]: ...

    def clear(self) -> None: ...


# --- Redis store -----------------------------------------------------------------------------------------

ACQUIRE_LUA = """
-- A batch of requests, answered in order as if each ran alone at `now`.
-- KEYS: the keys of every plan in the batch. ARGV[1]: now_ms; ARGV[2]: the number of plans P; then P plans,
-- "base|cooldown;kind,unit,limit,window,key;..." (kind "s" sliding / "f" fixed; unit "r" requests / "t"
-- tokens; window: the window's length (sliding) or its reset time in ms (fixed); cooldown and key: indexes
-- into KEYS after `base`, cooldown 0 for none); then one "plan,tokens,lease_requests,lease_tokens" per request.
-- Returns nine integers per request: 1 and the tightest requests and tokens limits (index, used, reset_ms
-- each; index 0 for none), then the requests and tokens of the lease granted (0,0: none) when admitted;
-- 0,index,used,retry_ms when refused by check `index`; 0,0,0,ms_left when the deployment is parked;
-- -1,index when a fixed counter is missing (unused places are 0).
-- A lease is a block reserved for the asking worker to admit from by itself for under a second: counted now
-- like requests, but in the next second's bucket of per-minute windows, so it counts until every request
-- admitted from it has had its full minute (never early). Granted only where every limit has plenty of room.
local now = tonumber(ARGV[1])
local second = math.floor(now / 1000)
-- A per-minute window is a hash of one-second buckets plus two fields: 't', the sum of the live buckets,
-- and 'o', the oldest live bucket. A bucket counts until its end plus the window (never early). Each check
-- drops the buckets that stopped counting since the last one (one or two at a steady pace) instead of
-- reading them all: the cost is the same at 10 requests a minute as at 100,000.
local function rebuild(key, stale)
  local fields = redis.call('HGETALL', key)
  local total, oldest, gone = 0, nil, {}
  for j = 1, #fields, 2 do
    local bucket = tonumber(fields[j])
    if bucket then
      if bucket <= stale then
        gone[#gone + 1] = fields[j]
      else
        total = total + tonumber(fields[j + 1])
        if not oldest or bucket < oldest then oldest = bucket end
      end
    end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  return total, oldest
end
-- A window as this batch sees it: read (and its expired buckets dropped) once, however many requests of the
-- batch count against it; what they add is written once, at the end.
local function load(key, w)
  local stale = math.floor((now - w) / 1000) - 1  -- buckets up to this second no longer count
  local state = redis.call('HMGET', key, 't', 'o')
  local stored_total, stored_oldest = tonumber(state[1]), tonumber(state[2])
  local total, oldest = stored_total, stored_oldest
  if not total or (oldest and stale - oldest > 120) then
    total, oldest = rebuild(key, stale)  -- new, or left long ago (or the clock jumped): read it whole
  elseif oldest and oldest <= stale then
    local gone = {}
    for bucket = oldest, stale do
      local count = redis.call('HGET', key, bucket)
      if count then
        total = total - tonumber(count)
        gone[#gone + 1] = bucket
      end
    end
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
    oldest = nil
    if total > 0 then
      for bucket = stale + 1, second + 1 do
        if redis.call('HEXISTS', key, bucket) == 1 then oldest = bucket break end
      end
    end
  end
  if total <= 0 then total, oldest = 0, nil end
  return {total = total, oldest = oldest, stored_total = stored_total, stored_oldest = stored_oldest,
          w = w, added = 0, ahead = 0, counted = false}
end
local windows, counters, parked = {}, {}, {}
-- When enough of a window's oldest buckets stop counting for `cost` more to fit.
local function retry_in(key, win, cost, limit)
  local need, freed = win.total + cost - limit, 0
  if win.oldest then
    for bucket = win.oldest, second + 1 do
      freed = freed + tonumber(redis.call('HGET', key, bucket) or '0')
      -- Counted by this batch, not written yet.
      if bucket == second then freed = freed + win.added elseif bucket == second + 1 then freed = freed + win.ahead end
      if freed >= need then return (bucket + 1) * 1000 + win.w - now end
    end
  end
  return win.w
end
-- Count `r` against each requests limit of a plan and `t` against each tokens limit: in this second's bucket
-- of per-minute windows (a request), or in the next second's (a lease).
local function count(plan, r, t, ahead)
  local checks = plan[2]
  local bucket = ahead and second + 1 or second
  for i = 1, plan[3] do
    local check = checks[i]
    local k, cost = check[5], check[2] and t or r
    if check[1] then
      local win = windows[k]
      win.total = win.total + cost
      if ahead then win.ahead = win.ahead + cost else win.added = win.added + cost end
      win.counted = true
      if not win.oldest or bucket < win.oldest then win.oldest = bucket end
    else
      local counter = counters[k]
      counter.value = counter.value + cost
      counter.added = counter.added + cost
    end
  end
end
-- One request: seven numbers (see above), returned as values, not a table (the client's reply is built from
-- them directly; a table per request costs as much as the checks).
local function answer(plan, tokens)
  local cool = plan[1]
  if cool then
    if parked[cool] == nil then parked[cool] = tonumber(redis.call('GET', cool) or '0') end
    -- The key holds "until" in our clock (which tests can move), not Redis' own.
    if parked[cool] > now then return 0, 0, 0, parked[cool] - now, 0, 0, 0 end
  end
  local checks, n = plan[2], plan[3]
  -- Per unit, the check with the least room: its number, what it had used, its reset, its room.
  local ri, ru, rr, rroom, ti, tu, tr, troom = 0, 0, 0, 0, 0, 0, 0, 0
  for i = 1, n do
    local check = checks[i]
    local sliding, by_tokens, limit, w, k = check[1], check[2], check[3], check[4], check[5]
    local cost = by_tokens and tokens or 1
    local used, reset
    if sliding then
      local win = windows[k]
      if not win then win = load(k, w) windows[k] = win end
      used = win.total
      if used + cost > limit then return 0, i, used, retry_in(k, win, cost, limit), 0, 0, 0 end
      reset = 0
      if win.oldest then reset = (win.oldest + 1) * 1000 + w - now end
    else
      local counter = counters[k]
      if counter == nil then
        local v = redis.call('GET', k)
        counter = v and {value = tonumber(v), added = 0} or false
        counters[k] = counter
      end
      if not counter then return -1, i, 0, 0, 0, 0, 0 end
      used = counter.value
      if used + cost > limit then return 0, i, used, w - now, 0, 0, 0 end
      reset = w - now
    end
    if by_tokens then
      if ti == 0 or limit - used < troom then ti, tu, tr, troom = i, used, reset, limit - used end
    elseif ri == 0 or limit - used < rroom then
      ri, ru, rr, rroom = i, used, reset, limit - used
    end
  end
  count(plan, 1, tokens, false)  -- every limit has room: count the request in all of them
  return 1, ri, ru, rr, ti, tu, tr
end
-- After a request was counted: reserve up to `want_r` more requests and `want_t` tokens (scaled down together
-- so that each limit gives at most a 16th of the room it has left); nothing if that is under two requests.
-- The 16th keeps what workers hold unused small next to what is left for the others, and a limit nearly used
-- up (or a small one: the free tiers' 2-18 a minute) is always checked request by request.
local function lease(plan, want_r, want_t)
  local checks, n = plan[2], plan[3]
  local share = 1
  for i = 1, n do
    local check = checks[i]
    local k, limit = check[5], check[3]
    local cost = check[2] and want_t or want_r
    if cost > 0 then
      local used = check[1] and windows[k].total or counters[k].value
      local s = (limit - used) / 16 / cost
      if s < share then share = s end
    end
  end
  local r = math.floor(want_r * share)
  if r < 2 then return 0, 0 end
  local t = math.floor(want_t * share)
  count(plan, r, t, true)
  return r, t
end
local plans = {}
local nplans = tonumber(ARGV[2])
for p = 1, nplans do
  local base, cool, rest = string.match(ARGV[2 + p], '^(%d+)|(%d+)(.*)$')
  base, cool = tonumber(base), tonumber(cool)
  local checks = {}
  for kind, unit, limit, w, k in string.gmatch(rest, '(%a),(%a),(%d+),(%d+),(%d+)') do
    -- By name: plans that share a counter (a key's limits, a pool's) share its state within the batch.
    checks[#checks + 1] = {kind == 's', unit == 't', tonumber(limit), tonumber(w), KEYS[base + tonumber(k)]}
  end
  plans[p] = {cool > 0 and KEYS[base + cool] or false, checks, #checks}
end
-- Nine integers per request in one flat array: Redis sends integers as they are, where turning them into
-- text here (or nesting arrays for the client to walk) would cost more than the checks themselves.
local replies, m = {}, 0
for r = 3 + nplans, #ARGV do
  local p, tokens, want_r, want_t = string.match(ARGV[r], '(%d+),(%d+),(%d+),(%d+)')
  local plan = plans[tonumber(p)]
  local a, b, c, d, e, f, g = answer(plan, tonumber(tokens))
  local lr, lt = 0, 0
  if a == 1 and want_r ~= '0' then lr, lt = lease(plan, tonumber(want_r), tonumber(want_t)) end
  replies[m + 1], replies[m + 2], replies[m + 3], replies[m + 4] = a, b, c, d
  replies[m + 5], replies[m + 6], replies[m + 7], replies[m + 8], replies[m + 9] = e, f, g, lr, lt
  m = m + 9
end
for key, win in pairs(windows) do
  if win.counted then
    -- The key outlives its newest bucket's window: refreshed when a second's bucket is started.
    local started = false
    if win.added > 0 or win.ahead == 0 then started = redis.call('HINCRBY', key, second, win.added) == win.added end
    if win.ahead > 0 then
      started = redis.call('HINCRBY', key, second + 1, win.ahead) == win.ahead or started
    end
    if started then redis.call('PEXPIRE', key, win.w + (win.ahead > 0 and 3000 or 2000)) end
    redis.call('HSET', key, 't', win.total, 'o', win.oldest)
  elseif win.total ~= win.stored_total or win.oldest ~= win.stored_oldest then
    -- Expired buckets were dropped but nothing was counted: keep the total and oldest bucket in step.
    if win.oldest then redis.call('HSET', key, 't', win.total, 'o', win.oldest) else
      redis.call('DEL', key)  -- nothing counts any more (and a key is never left without its expiry)
    end
  end
end
for key, counter in pairs(counters) do
  if counter and counter.added > 0 then redis.call('INCRBY', key, counter.added) end
end
return replies
"""

# KEYS: one per correction (a key may repeat). ARGV: "kind,bucket,delta;..." packed in one argument.
# A per-minute window is corrected in the second it was counted in, if that second still counts.
ADJUST_LUA = """
local i = 0
for kind, bucket, delta in string.gmatch(ARGV[1], '(%a),(%d+),(-?%d+)') do
  i = i + 1
  local key = KEYS[i]
  if kind == 's' then
    if redis.call('HEXISTS', key, bucket) == 1 then
      redis.call('HINCRBY', key, bucket, delta)
      -- The live total includes this bucket until it is dropped (a hash without one is rebuilt when read).
      if redis.call('HEXISTS', key, 't') == 1 then redis.call('HINCRBY', key, 't', delta) end
    end
  elseif redis.call('EXISTS', key) == 1 then
    redis.call('INCRBY', key, delta)
  end
end
return i
"""


class _LoopState:
    """What RedisStore keeps per event loop: its connection, and token corrections waiting to be sent."""

    def __init__(self, url: str) -> None:
        self.client = resp.Client(url, connect_timeout=5, timeout=5)
        self.pending: dict[tuple[str, bool, int], int] = {}
        self.flush_scheduled = False
        self.flushing: asyncio.Task[None] | None = None
        # Admissions waiting to be sent, answered together by one script call; one such call at a time.
        self.waiting: list[Waiting] = []
        self.sending = False
        self.leases: dict[Plan, Lease] = {}  # live ones
        self.demand: dict[Plan, Demand] = {}  # how busy the worker is on a plan, what to ask for next

    def demand_of(self, plan: Plan) -> Demand:
        demand = self.demand.get(plan)
        if demand is None:
            if len(self.demand) > 4096:
                self.demand.clear()  # plans of old catalog snapshots and edited keys
            demand = self.demand[plan] = Demand()
        return demand


class Demand:
    """A worker's use of one plan, which decides whether its next call to Redis asks for a lease, and how big:
    only once it sends LEASE_PACE requests within a second (light use, such as someone trying a model and then
    reading /v1/quota, is counted request by request, so what it reads is exact; a lease is for load, where a
    reserved block is soon used), for twice what its last lease served, and not for a while after the script
    refused one (too little room)."""

    __slots__ = ("count", "refused_until", "since_ms", "size")

    def __init__(self) -> None:
        self.since_ms, self.count = 0, 0  # requests sent to Redis since (ms), how many
        self.size = LEASE_FIRST
        self.refused_until = 0

    def wanted(self, now_ms: int) -> int:
        """Requests to reserve beside this one (0: none)."""
        if not 0 <= now_ms - self.since_ms < 1000:
            self.since_ms, self.count = now_ms, 0
        self.count += 1
        return self.size if self.count >= LEASE_PACE and self.refused_until <= now_ms else 0

    def ended(self, lease: Lease, now_ms: int | None) -> None:
        self.size = min(max(lease.taken * 2, LEASE_FIRST), LEASE_MAX)
        if lease.taken >= LEASE_PACE or (now_ms is not None and now_ms < lease.expires_ms):
            # Well used, or used up before it expired: the worker is still busy on the plan, so its next request
            # asks for the next lease at once.
            self.since_ms, self.count = lease.expires_ms if now_ms is None else now_ms, LEASE_PACE - 1


class Waiting(NamedTuple):
    plan: Plan
    tokens: int
    at_ms: int
    lease: int  # requests to reserve beside this one (0: none)
    future: asyncio.Future[Outcome]


class Lease:
    """A block of requests and tokens the script reserved for this worker on one plan: admitted from here,
    without a call to Redis, until it runs out or expires (within the second after the one it was counted in).
    What is left goes back to Redis as a correction.

    The x-ratelimit-* headers of a request admitted here are worked out from what the script said at the grant
    plus what this worker admitted since: other workers' requests since then are not in them."""

    __slots__ = ("at_ms", "base", "expires_ms", "granted_ms", "plan", "requests", "since_ms", "taken", "taken_tokens",
                 "tokens")

    def __init__(self, plan: Plan, requests: int, tokens: int, now_ms: int, base: tuple[int, ...],
                 first_tokens: int) -> None:
        self.plan = plan
        self.requests, self.granted_ms = requests, now_ms
        self.tokens = tokens if plan.tokens else 1 << 62  # a plan without token limits runs out of requests only
        self.since_ms = now_ms // 1000 * 1000
        self.at_ms = self.since_ms + 1000  # counted in the next second (see ACQUIRE_LUA)
        self.expires_ms = min(now_ms + int(settings.QUOTA_LEASE_SECONDS * 1000), self.at_ms + 999)
        self.base = base  # the tightest limits as the script saw them before the first request
        self.taken, self.taken_tokens = 1, first_tokens  # the request that asked for the lease

    def take(self, tokens: int, now_ms: int) -> Outcome | None:
        if not (self.since_ms <= now_ms < self.expires_ms) or self.requests < 1 or self.tokens < tokens:
            return None
        self.requests -= 1
        self.tokens -= tokens
        ri, ru, rr, ti, tu, tr = self.base
        elapsed = now_ms - self.granted_ms
        tightest = (ri, ru + self.taken, max(rr - elapsed, 1) if rr else 0,
                    ti, tu + self.taken_tokens, max(tr - elapsed, 1) if tr else 0)
        self.taken += 1
        self.taken_tokens += tokens
        return Outcome(True, tightest=tightest, at_ms=self.at_ms)

    def leftovers(self) -> list[Correction]:
        """What was not used, given back (once) to the counters it was counted in."""
        bucket = self.at_ms // 1000
        out = [Correction(c.key, c.limit.sliding, bucket, -(self.requests if c.limit.unit == "requests"
                                                              else self.tokens))
               for c in self.plan.checks]
        self.requests = self.tokens = 0
        return [c for c in out if c.delta]


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._loops: dict[int, _LoopState] = {}
        self._sync: Any = None

    def _state(self) -> _LoopState:
        # A connection belongs to the loop that made it: one per loop (each worker has one; tests have several).
        loop_id = id(asyncio.get_running_loop())
        state = self._loops.get(loop_id)
        if state is None:
            state = self._loops[loop_id] = _LoopState(self.url)
        return state

    def _sync_client(self) -> Any:
        import redis

        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url)
        return self._sync

    async def acquire(self, plan: Plan, tokens: int, now_ms: int) -> Outcome:
        state = self._state()
        lease = state.leases.get(plan)
        if lease is not None:
            outcome = lease.take(tokens, now_ms)
            if outcome is not None:
                return outcome
            self._end_lease(state, lease, now_ms)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if not state.waiting and not state.sending:
            future.get_loop().call_soon(self._send_batch, state)
        want = state.demand_of(plan).wanted(now_ms) if settings.QUOTA_LEASE_SECONDS else 0
        state.waiting.append(Waiting(plan, tokens, now_ms, want, future))
        return await future

    def _end_lease(self, state: _LoopState, lease: Lease, now_ms: int | None = None) -> None:
        if state.leases.get(lease.plan) is lease:
            del state.leases[lease.plan]
            state.demand_of(lease.plan).ended(lease, now_ms)
        leftovers = lease.leftovers()
        if leftovers:
            self.correct(leftovers)

    def _grant(self, state: _LoopState, item: Waiting, outcome: Outcome, requests: int, tokens: int,
               now_ms: int) -> None:
        if not requests:
            state.demand_of(item.plan).refused_until = now_ms + LEASE_RETRY_MS
            return
        held = state.leases.get(item.plan)
        if held is not None:
            self._end_lease(state, held)
        lease = state.leases[item.plan] = Lease(item.plan, requests, tokens, now_ms, outcome.tightest, item.tokens)
        delay = max(lease.expires_ms - now_ms, 0) / 1000
        item.future.get_loop().call_later(delay, self._expire, state, lease)

    def _expire(self, state: _LoopState, lease: Lease) -> None:
        if state.leases.get(lease.plan) is lease:
            self._end_lease(state, lease)

    def _send_batch(self, state: _LoopState) -> None:
        """One script call answers every admission waiting: those asked for in the last turn of the loop, and
        those that came while the previous call was out (it goes as soon as that one is answered; Redis runs
        one script at a time anyway). Under load a worker takes many requests meanwhile, mostly against the
        same deployment and key: the script reads each counter once for all of them and writes it once, and
        each plan's checks are sent and parsed once, so the work per request falls as the load rises (and with
        it the CPU the checks take from a busy machine). An idle worker's request goes at once, alone.
        """
        if not state.waiting:
            return
        batch, state.waiting = state.waiting, []
        state.sending = True
        keys: list[str] = []
        numbers: dict[int, int] = {}  # id(plan) -> its number in this call
        specs: list[str] = []
        requests: list[str] = []
        now_ms = 0  # the batch is counted at one time: the latest asked for
        for i, (plan, tokens, at_ms, want, _) in enumerate(batch):
            number = numbers.get(id(plan))
            if number is None:
                number = numbers[id(plan)] = len(specs) + 1
                specs.append(f"{len(keys)}|{plan.spec}")
                keys += plan.keys
            elif want:  # one lease per plan and call
                batch[i] = batch[i]._replace(lease=0)
                want = 0
            requests.append(f"{number},{tokens},{want},{want * tokens}")
            now_ms = max(now_ms, at_ms)
        state.client.run_now(ACQUIRE_SCRIPT, keys, [now_ms, len(specs), *specs, *requests],
                             functools.partial(self._answered, state, batch, now_ms))

    def _answered(self, state: _LoopState, batch: list[Waiting], now_ms: int, reply: Any) -> None:
        state.sending = False
        failed = isinstance(reply, BaseException)
        for i, item in enumerate(batch):
            if failed:
                if not item.future.done():
                    item.future.set_exception(reply)
                continue
            answer = reply[9 * i : 9 * i + 9]
            outcome = _outcome(item.plan, answer, now_ms)
            if item.lease and outcome.admitted:
                self._grant(state, item, outcome, answer[7], answer[8], now_ms)
            if not item.future.done():  # else its caller gave up (the client left)
                item.future.set_result(outcome)
        if state.leases and state.waiting:
            # Those that came meanwhile on a plan just granted a lease are admitted from it.
            still: list[Waiting] = []
            for item in state.waiting:
                lease = state.leases.get(item.plan)
                taken = lease.take(item.tokens, item.at_ms) if lease is not None else None
                if lease is None or taken is None:
                    still.append(item)
                elif not item.future.done():
                    item.future.set_result(taken)
                else:
                    lease.requests += 1  # its caller gave up: the reservation is not used
                    lease.tokens += item.tokens
            state.waiting = still
        self._send_batch(state)  # those that came meanwhile

    async def seed(self, key: str, value: int, expire_at_ms: int) -> None:
        await self._state().client.call("SET", key, value, "NX", "PXAT", expire_at_ms + FIXED_GRACE_MS)

    def correct(self, corrections: list[Correction]) -> None:
        """Queue corrections; they go out together every QUOTA_SETTLE_SECONDS, so a request costs one Redis call
        (its admission), not two. Until then a counter holds the estimate, which errs on the safe side
        whenever the estimate was high (it includes the whole max_tokens budget)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a management command): nothing was admitted through this process's loop
        state = self._state()
        for c in corrections:
            slot = (c.key, c.sliding, c.bucket if c.sliding else 0)
            state.pending[slot] = state.pending.get(slot, 0) + c.delta
        if not state.flush_scheduled:
            state.flush_scheduled = True
            loop.call_later(settings.QUOTA_SETTLE_SECONDS, self._start_flush, state)

    def _start_flush(self, state: _LoopState) -> None:
        state.flush_scheduled = False
        if state.pending and (state.flushing is None or state.flushing.done()):
            state.flushing = asyncio.get_running_loop().create_task(self._flush(state))

    async def _flush(self, state: _LoopState) -> None:
        batch, state.pending = state.pending, {}
        # A per-minute bucket that no longer counts needs no correction.
        oldest = clock_ms() // 1000 - MINUTE_MS // 1000 - 1
        entries = [(key, sliding, bucket, delta) for (key, sliding, bucket), delta in batch.items()
                   if delta and (not sliding or bucket >= oldest)]
        if not entries:
            return
        packed = ";".join(f"{'s' if sliding else 'f'},{bucket},{delta}" for _, sliding, bucket, delta in entries)
        try:
            await state.client.run(ADJUST_SCRIPT, [key for key, *_ in entries], [packed])
        except Exception as e:
            log.warning("could not send token corrections to the quota store (%s); will retry", type(e).__name__)
            for key, sliding, bucket, delta in entries:
                slot = (key, sliding, bucket)
                state.pending[slot] = state.pending.get(slot, 0) + delta
            if not state.flush_scheduled:
                state.flush_scheduled = True
                asyncio.get_running_loop().call_later(1.0, self._start_flush, state)

    async def flush(self) -> None:
        """Give back what leases left and send queued corrections now (at shutdown)."""
        state = self._state()
        for lease in list(state.leases.values()):
            self._end_lease(state, lease)
        if state.flushing is not None:
            await asyncio.gather(state.flushing, return_exceptions=True)
        if state.pending:
            await self._flush(state)

    async def park(self, key: str, until_ms: int, now_ms: int) -> None:
        state = self._state()
        # This worker stops admitting from its leases on the deployment at once; others when theirs end (within
        # QUOTA_LEASE_SECONDS), and a request they send meanwhile gets the provider's 429 and parks it there too.
        for lease in [lease for plan, lease in state.leases.items() if plan.cooldown == key]:
            self._end_lease(state, lease)
        # The value is the end of the pause; the TTL only cleans up (with a margin for a moved clock).
        await state.client.call("SET", key, until_ms, "PX", max(until_ms - now_ms, 1) + FIXED_GRACE_MS)

    async def aclose(self) -> None:
        state = self._loops.pop(id(asyncio.get_running_loop()), None)
        if state is not None:
            await state.client.aclose()

    def used_sync(self, checks: Sequence[Check], now_ms: int) -> list[tuple[int, int]]:
        client = self._sync_client()
        out = []
        for c in checks:
            if c.limit.sliding:
                # The bucket fields only (not the 't' total and 'o' oldest the script keeps beside them).
                buckets = {int(b): int(v) for b, v in client.hgetall(c.key).items() if b.isdigit()}
                out.append(_window_usage(buckets, now_ms, c.window_ms))
            else:
                out.append((int(client.get(c.key) or 0), c.window_ms - now_ms))
        return out

    def clear(self) -> None:
        for state in self._loops.values():
            state.pending.clear()
            state.leases.clear()
            state.demand.clear()
        client = self._sync_client()
        for key in client.scan_iter("q:*"):
            client.delete(key)


ACQUIRE_SCRIPT = resp.Script(ACQUIRE_LUA)
ADJUST_SCRIPT = resp.Script(ADJUST_LUA)


# Leases: asked for once a worker sends LEASE_PACE requests of one plan within a second; the first for
# LEASE_FIRST requests beside the one asking, later ones for twice what the last one served, up to LEASE_MAX;
# after a refusal (too little room) a plan is not asked a lease for LEASE_RETRY_MS.
LEASE_PACE = 8
LEASE_FIRST = 4
LEASE_MAX = 1024
LEASE_RETRY_MS = 5000


def _outcome(plan: Plan, reply: list[int], at_ms: int) -> Outcome:
    if reply[0] == 1:
        return Outcome(True, tightest=tuple(reply[1:7]), at_ms=at_ms)
    if reply[0] == -1:
        return Outcome(False, missing=reply[1] - 1)
    if reply[1] == 0:
        return Outcome(False, retry_after=max(reply[3], 0) / 1000, cooling=True)
    return Outcome(False, check=plan.checks[reply[1] - 1], used=reply[2], retry_after=max(reply[3], 0) / 1000)


# --- In-process store ------------------------------------------------------------------------------------


class MemoryStore:
    """The same algorithm for one process (the embedded default). Never awaits inside a step, so it is atomic
    within the event loop; a lock covers the admin's reads from other threads."""

    def __init__(self) -> None:
        self.sliding: dict[str, dict[int, int]] = {}  # key -> {second: count}
        self.fixed: dict[str, tuple[int, int]] = {}  # key -> (value, expires_ms)
        self.parked: dict[str, int] = {}
        self.lock = threading.Lock()

    def _buckets(self, key: str, now_ms: int, window_ms: int) -> dict[int, int]:
        buckets = self.sliding.setdefault(key, {})
        for bucket in [b for b in buckets if (b + 1) * 1000 + window_ms <= now_ms]:
            del buckets[bucket]
        return buckets

    def _fixed(self, key: str, now_ms: int) -> int | None:
        entry = self.fixed.get(key)
        if entry is None or entry[1] + FIXED_GRACE_MS < now_ms:
            return None
        return entry[0]

    async def acquire(self, plan: Plan, tokens: int, now_ms: int) -> Outcome:
        with self.lock:
            return self._acquire(plan, tokens, now_ms)

    def _acquire(self, plan: Plan, tokens: int, now_ms: int) -> Outcome:
        cool = plan.cooldown
        if cool and self.parked.get(cool, 0) > now_ms:
            return Outcome(False, retry_after=(self.parked[cool] - now_ms) / 1000, cooling=True)
        best = [0, 0, 0, 0, 0, 0]  # as the Lua script's: per unit, the check with the least room
        room = [0, 0, 0, 0, 0, 0]
        for i, c in enumerate(plan.checks):
            cost = c.cost(tokens)
            if c.limit.sliding:
                buckets = self._buckets(c.key, now_ms, c.window_ms)
                u, reset = _window_usage(buckets, now_ms, c.window_ms)
                if u + cost > c.limit.value:
                    retry = _sliding_retry(buckets, u + cost - c.limit.value, c, now_ms)
                    return Outcome(False, check=c, used=u, retry_after=retry)
            else:
                value = self._fixed(c.key, now_ms)
                if value is None:
                    return Outcome(False, missing=i)
                u, reset = value, c.window_ms - now_ms
                if u + cost > c.limit.value:
                    return Outcome(False, check=c, used=u, retry_after=(c.window_ms - now_ms) / 1000)
            at = 0 if c.limit.unit == "requests" else 3
            if best[at] == 0 or c.limit.value - u < room[at]:
                best[at : at + 3], room[at] = [i + 1, u, reset], c.limit.value - u
        bucket = now_ms // 1000
        for c in plan.checks:
            if c.limit.sliding:
                buckets = self.sliding[c.key]
                buckets[bucket] = buckets.get(bucket, 0) + c.cost(tokens)
            else:
                value, expires = self.fixed[c.key]
                self.fixed[c.key] = (value + c.cost(tokens), expires)
        return Outcome(True, tightest=tuple(best), at_ms=now_ms)

    async def seed(self, key: str, value: int, expire_at_ms: int) -> None:
        with self.lock:
            if self._fixed(key, clock_ms()) is None:
                self.fixed[key] = (value, expire_at_ms)

    def correct(self, corrections: list[Correction]) -> None:
        with self.lock:  # in-process: applied at once
            for c in corrections:
                if c.sliding:
                    buckets = self.sliding.get(c.key, {})
                    if c.bucket in buckets:
                        buckets[c.bucket] = max(buckets[c.bucket] + c.delta, 0)
                elif c.key in self.fixed:
                    value, expires = self.fixed[c.key]
                    self.fixed[c.key] = (value + c.delta, expires)

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def park(self, key: str, until_ms: int, now_ms: int) -> None:
        with self.lock:
            self.parked[key] = until_ms

    def used_sync(self, checks: Sequence[Check], now_ms: int) -> list[tuple[int, int]]:
        out = []
        with self.lock:
            for c in checks:
                if c.limit.sliding:
                    out.append(_window_usage(dict(self.sliding.get(c.key, {})), now_ms, c.window_ms))
                else:
                    out.append((self._fixed(c.key, now_ms) or 0, c.window_ms - now_ms))
        return out

    def clear(self) -> None:
        with self.lock:
            self.sliding.clear()
            self.fixed.clear()
            self.parked.clear()


def _window_usage(buckets: dict[int, int], now_ms: int, window_ms: int) -> tuple[int, int]:
    """(used, ms until the oldest counted bucket stops counting) of a per-minute window."""
    live = sorted(b for b in buckets if (b + 1) * 1000 + window_ms > now_ms)
    used = sum(buckets[b] for b in live)
    return used, ((live[0] + 1) * 1000 + window_ms - now_ms) if live else 0


def _sliding_retry(buckets: dict[int, int], need: int, c: Check, now_ms: int) -> float:
    """When enough of the oldest buckets stop counting to free `need`."""
    freed = 0
    for bucket in sorted(buckets):
        freed += buckets[bucket]
        if freed >= need:
            return max((bucket + 1) * 1000 + c.window_ms - now_ms, 0) / 1000
    return c.window_ms / 1000


def clock_ms() -> int:
    return int(clock.now() * 1000)


_store: Store | None = None


def store() -> Store:
    global _store
    if _store is None:
        _store = RedisStore(settings.REDIS_URL) if settings.REDIS_URL else MemoryStore()
    return _store


# --- Durable daily counters (write-behind) ---------------------------------------------------------------


class Ledger:
    """Collects daily increments and writes them to DailyCounter in batches, off the request path."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, dt.date], int] = {}
        self.lock = threading.Lock()
        self.task: asyncio.Task[None] | None = None

    def add(self, entries: list[tuple[str, dt.date, int]]) -> None:
        """Add (key, day, delta) entries: one lock for all of a request's daily counters."""
        with self.lock:
            for key, day, delta in entries:
                if delta:
                    self.pending[(key, day)] = self.pending.get((key, day), 0) + delta
        if self.task is None or self.task.done():
            self._ensure_task()

    def unflushed(self, key: str, day: dt.date) -> int:
        with self.lock:
            return self.pending.get((key, day), 0)

    def _ensure_task(self) -> None:
        if self.task is None or self.task.done():
            try:
                self.task = asyncio.get_running_loop().create_task(self._run())
            except RuntimeError:
                pass  # no loop (management command): flush() is called explicitly

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(settings.QUOTA_FLUSH_SECONDS)
            try:
                await sync_to_async(db.managed(self.flush))()
            except Exception:
                log.exception("could not write daily quota counters; will retry")

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, {}
        try:
            for (key, day), delta in batch.items():
                _add_to_counter(key, day, delta)
        except Exception:
            with self.lock:  # put it back: nothing is lost while the DB is away
                for k, v in batch.items():
                    self.pending[k] = self.pending.get(k, 0) + v
            raise


def _add_to_counter(key: str, day: dt.date, delta: int) -> None:
    from gateway.models import DailyCounter

    if DailyCounter.objects.filter(key=key, day=day).update(value=F("value") + delta):
        return
    try:
        with transaction.atomic():
            DailyCounter.objects.create(key=key, day=day, value=delta)
    except IntegrityError:  # another process created it first
        DailyCounter.objects.filter(key=key, day=day).update(value=F("value") + delta)


def _durable_value(key: str, day: dt.date) -> int:
    from gateway.models import DailyCounter

    row = DailyCounter.objects.filter(key=key, day=day).values_list("value", flat=True).first()
    return int(row or 0)


ledger = Ledger()


async def _seed(check: Check) -> None:
    assert check.day is not None
    value = await sync_to_async(db.managed(_durable_value))(check.durable_key, check.day)
    await store().seed(check.key, value + ledger.unflushed(check.durable_key, check.day), check.window_ms)


# --- Admission ----------------------------------------------------------------------------------------------


@dataclass
class Admission:
    """A request admitted on a deployment: remembers what it consumed so it can be corrected later."""

    bucket: int  # the second it was counted in (per-minute windows are corrected there)
    plan: Plan
    outcome: Outcome
    estimated_tokens: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """x-ratelimit-* (encoded) for the tightest request and token limits this request was counted against."""
        out: list[tuple[bytes, bytes]] = []
        tightest = self.outcome.tightest
        for at, names in ((0, _HEADER_NAMES["requests"]), (3, _HEADER_NAMES["tokens"])):
            index, used, reset_ms = tightest[at : at + 3]
            if not index:
                continue
            check = self.plan.checks[index - 1]
            limit, cost = check.limit, check.cost(self.estimated_tokens)
            reset_ms = reset_ms or (MINUTE_MS if limit.sliding else 0)
            out += ((names[0], b"%d" % limit.value), (names[1], b"%d" % max(limit.value - used - cost, 0)),
                    (names[2], format_duration(reset_ms / 1000).encode()))
        return out


def format_duration(seconds: float) -> str:
    """OpenAI's style: 1s, 6m0s, 2h3m4s."""
    return _duration(max(math.ceil(seconds), 0))


@functools.lru_cache(maxsize=1024)
def _duration(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def cooldown_key(deployment_id: int) -> str:
    return f"q:cool:{deployment_id}"


async def try_admit(
    limits: Sequence[Limit], deployment_id: int | None, tokens: int, key_limits: Sequence[Limit] = ()
) -> Admission | Outcome:
    """Check and consume every limit at once (the deployment's and the key's); returns an Admission, or the
    refusing Outcome."""
    for _ in range(len(limits) + len(key_limits) + 1):
        now = clock.now()
        plan = plan_for(limits, key_limits, deployment_id, now)
        try:
            outcome = await store().acquire(plan, tokens, int(now * 1000))
        except Exception as e:
            log.error("quota store unavailable: %s", type(e).__name__)
            raise GatewayError(503, "The quota store is unavailable, so no request can be admitted safely. "
                               "Try again shortly.", code="quota_store_unavailable",
                               headers={"Retry-After": "5"}) from None
        if outcome.missing is None:
            break
        await _seed(plan.checks[outcome.missing])
    if not outcome.admitted:
        return outcome
    return Admission(outcome.at_ms // 1000, plan, outcome, tokens)


def settle(admission: Admission, actual_tokens: int | None) -> None:
    """Once the call is over: correct the token estimate with the real usage (queued, never awaited), and hand
    what it consumed of daily and monthly windows to the durable counters. Those get it here rather than at
    admission: one write per request, and a request still in flight lives in the fast store meanwhile."""
    plan, estimate = admission.plan, admission.estimated_tokens
    delta = 0 if actual_tokens is None else actual_tokens - estimate
    if delta and plan.tokens:
        store().correct([Correction(c.key, c.limit.sliding, admission.bucket, delta) for c in plan.tokens])
    if plan.fixed:
        ledger.add([(c.durable_key, c.day, c.cost(estimate + delta)) for c in plan.fixed if c.day is not None])


async def park(deployment_id: int, seconds: float) -> None:
    """Take a deployment out of rotation for a while (provider said 429, or it keeps failing)."""
    now_ms = clock_ms()
    await store().park(cooldown_key(deployment_id), now_ms + int(seconds * 1000), now_ms)


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt size (about 4 characters a token) plus the completion budget the client allows."""
    prompt = len(orjson.dumps(body.get("messages") or body.get("input") or "")) // 4 + 1
    completion = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(completion, int) or isinstance(completion, bool):
        completion = settings.QUOTA_DEFAULT_COMPLETION_TOKENS
    return prompt + completion


def usage_of(limits: Sequence[Limit]) -> list[dict[str, Any]]:
    """Used, remaining and reset time of each limit now (for the admin and /v1/quota)."""
    now = clock.now()
    checks = Plan(limits, now).checks
    states = store().used_sync(checks, int(now * 1000))
    out = []
    for c, (used, reset_ms) in zip(checks, states, strict=True):
        if c.day is not None and used == 0:
            used = _durable_value(c.durable_key, c.day) + ledger.unflushed(c.durable_key, c.day)
        out.append(
            {
                "scope": c.limit.scope,
                "limit_name": c.limit.name,
                "limit": c.limit.value,
                "unit": c.limit.unit,
                "period": c.limit.period,
                "used": used,
                "remaining": max(c.limit.value - used, 0),
                "resets_at": dt.datetime.fromtimestamp(now + max(reset_ms, 0) / 1000, dt.UTC).isoformat(
                    timespec="seconds"
                )
                if reset_ms
                else None,
                "reset_timezone": c.limit.tz if c.day is not None else None,
            }
        )
    return out


def key_limits(principal: Any, model: str) -> tuple[Limit, ...]:
    """The calling key's own limits for this model (key-wide and per-model); none for the master key.
    The same tuple for the same key and model until the key is edited (the quota plans are cached by it)."""
    if principal is None or principal.is_master or principal.key_id is None:
        return ()
    tz = settings.KEY_QUOTA_TIMEZONE
    out = _limits_of(principal.limits, "key", str(principal.key_id), "your API key", tz)
    if model in principal.model_limits:
        label = f"your API key for model '{model}'"
        out = _joined(out, _limits_of(principal.model_limits[model], "key-model", f"{principal.key_id}:{model}",
                                      label, tz))
    return out


@functools.lru_cache(maxsize=4096)
def _joined(a: tuple[Limit, ...], b: tuple[Limit, ...]) -> tuple[Limit, ...]:
    return a + b


def _limits_of(limits: Any, scope: str, scope_id: str, label: str, tz: str) -> tuple[Limit, ...]:
    return _key_limits(scope, scope_id, label, tz, limits.rpm, limits.rpd, limits.tokens_per_day,
                       limits.tokens_per_month)


@functools.lru_cache(maxsize=4096)
def _key_limits(scope: str, scope_id: str, label: str, tz: str, *values: int | None) -> tuple[Limit, ...]:
    # Asked for on every request of a key; a key's limits change only when an operator edits them.
    names = ("rpm", "rpd", "tpd", "tokens_per_month")
    return tuple(Limit(scope, scope_id, label, name, value, tz)
                 for name, value in zip(names, values, strict=True) if value is not None)


def summary(limits: Sequence[Limit]) -> str:
    """"3/10 RPM · 41/50 RPD (resets 07:00 UTC)": used against each limit, from the live counters (admin lists)."""
    parts = []
    for state in usage_of(limits):
        text = f"{state['used']}/{state['limit']} {state['limit_name'].upper().replace('TOKENS_PER_MONTH', 'TPMo')}"
        if state["period"] != "minute" and state["resets_at"]:
            text += f" (resets {state['resets_at'][5:16].replace('T', ' ')} UTC)"
        parts.append(text)
    return " · ".join(parts) or "—"


def key_wide_limits(key_id: int, limits: Any) -> tuple[Limit, ...]:
    """A key's own limits across all models (for the admin's key list)."""
    return _limits_of(limits, "key", str(key_id), "your API key", settings.KEY_QUOTA_TIMEZONE)


def key_status(principal: Any, models: list[str] | None = None) -> list[dict[str, Any]]:
    """Per model the key may use: its remaining requests/tokens and when they reset (sync; for pages)."""
    from gateway import catalog

    snapshot = catalog.get_sync()
    names = models if models is not None else [n for n in snapshot.names() if principal.may_use(n)]
    return [{"model": name, "limits": usage_of(key_limits(principal, name))} for name in names]


def reset_daily_counters(keep_days: int = 7) -> int:
    """Drop durable counters of windows long past (live windows roll over by themselves at midnight)."""
    from gateway.models import DailyCounter

    cutoff = dt.date.fromtimestamp(clock.now()) - dt.timedelta(days=keep_days + 31)
    deleted, _ = DailyCounter.objects.filter(day__lt=cutoff).delete()
    return deleted
