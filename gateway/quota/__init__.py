"""Quotas: exact, atomic check-and-consume of every limit a request is subject to.

The rest of the portal uses this package's names (`from gateway import quota; await quota.try_admit(...)`);
the modules behind them:

- limits.py: `Limit`, fixed and sliding windows, the `Plan` of checks one request makes, a key's limits and
  its owner's budget.
- admission.py: what the request path calls: `try_admit`, `settle`, `park`, `estimate_tokens`, the
  x-ratelimit-* headers, the 400 for a request larger than a limit, and `store()` (this process's store).
- store.py: what every store does and answers (`Outcome`, `Correction`).
- redis_store.py (+ acquire.lua, adjust.lua): the store shared by every worker and host, through redis-py:
  batched admissions, one script call in flight per worker.
- leases.py: blocks of a roomy limit a busy worker reserves in Redis and admits from by itself.
- memory_store.py: the same algorithm in process, for the embedded default (one worker, no Redis).
- ledger.py: daily and monthly counts written behind to the database, read back after a restart.
- reporting.py: used / remaining / reset of limits for /v1/quota, the admin and the key pages.
"""

from gateway.quota.admission import (
    Admission,
    beyond_reach_error,
    estimate_parts,
    estimate_tokens,
    format_duration,
    micro_usd,
    park,
    settle,
    store,
    try_admit,
)
from gateway.quota.leases import LEASE_FIRST, LEASE_MAX, LEASE_PACE, LEASE_RETRY_MS, Lease
from gateway.quota.ledger import Ledger, ledger, reset_daily_counters
from gateway.quota.limits import (
    CALLER_SCOPES,
    USD,
    Check,
    Limit,
    Plan,
    cooldown_key,
    key_limits,
    key_wide_limits,
    plan_for,
    user_limits,
    window,
)
from gateway.quota.memory_store import MemoryStore
from gateway.quota.redis_store import RedisStore
from gateway.quota.reporting import key_status, summary, usage_of
from gateway.quota.store import Correction, Outcome, Store

__all__ = [
    "CALLER_SCOPES",
    "LEASE_FIRST",
    "LEASE_MAX",
    "LEASE_PACE",
    "LEASE_RETRY_MS",
    "USD",
    "Admission",
    "Check",
    "Correction",
    "Lease",
    "Ledger",
    "Limit",
    "MemoryStore",
    "Outcome",
    "Plan",
    "RedisStore",
    "Store",
    "beyond_reach_error",
    "cooldown_key",
    "estimate_parts",
    "estimate_tokens",
    "format_duration",
    "key_limits",
    "key_status",
    "key_wide_limits",
    "ledger",
    "micro_usd",
    "park",
    "plan_for",
    "reset_daily_counters",
    "settle",
    "store",
    "summary",
    "try_admit",
    "usage_of",
    "user_limits",
    "window",
]
