"""The in-process quota store: the embedded default (one worker process, no Redis).

The same algorithm as the Redis store's acquire script, answer for answer (tests/test_quota_store_redis.py
runs both side by side), so a deployment behaves the same with and without Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from gateway.quota.limits import FIXED_GRACE_MS, Check, Plan
from gateway.quota.store import Correction, Outcome, clock_ms, window_usage


class MemoryStore:
    """Never awaits inside a step, so it is atomic within the event loop; a lock covers the admin's reads from
    other threads."""

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

    async def acquire(self, plan: Plan, tokens: int, now_ms: int, usd: int = 0) -> Outcome:
        with self.lock:
            return self._acquire(plan, tokens, now_ms, usd)

    def _acquire(self, plan: Plan, tokens: int, now_ms: int, usd: int) -> Outcome:
        cool = plan.cooldown
        if cool and self.parked.get(cool, 0) > now_ms:
            return Outcome(False, retry_after=(self.parked[cool] - now_ms) / 1000, cooling=True)
        best = [0, 0, 0, 0, 0, 0]  # as the Lua script's: per unit, the check with the least room
        room = [0, 0, 0, 0, 0, 0]
        for i, c in enumerate(plan.checks):
            cost = c.cost(tokens, usd)
            if c.limit.sliding:
                buckets = self._buckets(c.key, now_ms, c.window_ms)
                u, reset = window_usage(buckets, now_ms, c.window_ms)
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
            if c.limit.unit == "usd":
                continue  # budgets have no x-ratelimit-* header
            at = 0 if c.limit.unit == "requests" else 3
            if best[at] == 0 or c.limit.value - u < room[at]:
                best[at : at + 3], room[at] = [i + 1, u, reset], c.limit.value - u
        bucket = now_ms // 1000
        for c in plan.checks:
            if c.limit.sliding:
                buckets = self.sliding[c.key]
                buckets[bucket] = buckets.get(bucket, 0) + c.cost(tokens, usd)
            else:
                value, expires = self.fixed[c.key]
                self.fixed[c.key] = (value + c.cost(tokens, usd), expires)
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
                    out.append(window_usage(dict(self.sliding.get(c.key, {})), now_ms, c.window_ms))
                else:
                    out.append((self._fixed(c.key, now_ms) or 0, c.window_ms - now_ms))
        return out

    def clear(self) -> None:
        with self.lock:
            self.sliding.clear()
            self.fixed.clear()
            self.parked.clear()


def _sliding_retry(buckets: dict[int, int], need: int, c: Check, now_ms: int) -> float:
    """When enough of the oldest buckets stop counting to free `need`."""
    freed = 0
    for bucket in sorted(buckets):
        freed += buckets[bucket]
        if freed >= need:
            return max((bucket + 1) * 1000 + c.window_ms - now_ms, 0) / 1000
    return c.window_ms / 1000
