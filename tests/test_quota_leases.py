"""Leases: a busy worker reserves a block of a roomy limit in its admission call and admits from it by itself.

Two RedisStores in one test stand for two workers: each has its own connection, batches and leases, and
they share the counters in Redis, as two gunicorn workers (or hosts) do.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from gateway.quota import LEASE_PACE, Limit, Outcome, Plan, RedisStore
from tests.quota_redis import REDIS_URL, needs_redis, script_calls

NOW_MS = 1_800_000_000_250  # a quarter into second 1_800_000_000
SECOND = NOW_MS // 1000


def window(key: str) -> dict[str, int]:
    """A per-minute window's hash in Redis: its one-second buckets, and 't' (their total)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return {k.decode(): int(v) for k, v in client.hgetall(key).items() if k != b"o"}
    finally:
        client.close()


async def busy(store: RedisStore, plan: Plan, tokens: int = 1) -> Outcome:
    """LEASE_PACE requests within a second, one after another: the last one asks for a lease."""
    for _ in range(LEASE_PACE):
        outcome = await store.acquire(plan, tokens, NOW_MS)
    return outcome


def counter(key: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.get(key) or 0)
    finally:
        client.close()


@needs_redis
def test_a_lease_is_counted_in_the_next_second_and_what_is_left_goes_back(scope: str, settings) -> None:
    """The block is reserved in every counter of the plan at once; the requests admitted from it need no call
    to Redis; the part not used is given back when the worker is done with it."""
    settings.QUOTA_LEASE_SECONDS = 1
    plan = Plan([Limit("deployment", scope, "test", "rpm", 1000), Limit("deployment", scope, "test", "rpd", 10_000)],
                NOW_MS / 1000)
    minute, day = (c.key for c in plan.checks)

    async def main() -> tuple[dict[str, int], int, list[int], int, dict[str, int], int]:
        store = RedisStore(REDIS_URL)
        try:
            await store.seed(day, 0, plan.checks[1].window_ms)
            last = await busy(store, plan, 10)
            assert last.admitted and last.at_ms == NOW_MS
            held, held_day = window(minute), counter(day)
            before = script_calls()
            local = [await store.acquire(plan, 10, NOW_MS + 100 * i) for i in range(1, 4)]
            calls = script_calls() - before
            await store.flush()  # the worker stops: what its lease did not use goes back
            return held, held_day, [o.at_ms for o in local if o.admitted], calls, window(minute), counter(day)
        finally:
            await store.aclose()

    held, held_day, local_at, calls, after, after_day = asyncio.run(main())
    # The first lease asks for 4 requests beside the one asking; a 16th of the room left allows it.
    assert held == {str(SECOND): 8, str(SECOND + 1): 4, "t": 12}
    assert held_day == 12
    assert calls == 0
    assert local_at == [(SECOND + 1) * 1000] * 3  # corrections of these go to the lease's bucket
    assert after == {str(SECOND): 8, str(SECOND + 1): 3, "t": 11}
    assert after_day == 11


@needs_redis
def test_light_use_is_counted_request_by_request(scope: str, settings) -> None:
    """Fewer than LEASE_PACE requests a second on a plan: no block is reserved, so what /v1/quota and the
    admin read is exact."""
    settings.QUOTA_LEASE_SECONDS = 1
    plan = Plan([Limit("deployment", scope, "test", "rpm", 100_000)], NOW_MS / 1000)

    async def main() -> dict[str, int]:
        store = RedisStore(REDIS_URL)
        try:
            for i in range(3 * (LEASE_PACE - 1)):  # a second apart after every LEASE_PACE - 1
                await store.acquire(plan, 1, NOW_MS + i // (LEASE_PACE - 1) * 1000)
            return window(plan.checks[0].key)
        finally:
            await store.aclose()

    held = asyncio.run(main())
    assert held.pop("t") == 3 * (LEASE_PACE - 1)
    assert held == {str(SECOND + i): LEASE_PACE - 1 for i in range(3)}


@needs_redis
def test_a_small_limit_is_checked_in_redis_request_by_request(scope: str, settings) -> None:
    """The free tiers' 2-18 requests a minute never go into a lease: a worker holding one would refuse others
    a request it may not use."""
    settings.QUOTA_LEASE_SECONDS = 1
    plan = Plan([Limit("deployment", scope, "test", "rpm", 18)], NOW_MS / 1000)

    async def main() -> tuple[int, list[bool], dict[str, int]]:
        store = RedisStore(REDIS_URL)
        try:
            await store.acquire(plan, 1, NOW_MS)  # connected, and the script known to Redis
            before = script_calls()
            admitted = [(await store.acquire(plan, 1, NOW_MS)).admitted for _ in range(3 * LEASE_PACE)]
            return script_calls() - before, admitted, window(plan.checks[0].key)
        finally:
            await store.aclose()

    calls, admitted, held = asyncio.run(main())
    assert admitted == [True] * 17 + [False] * (3 * LEASE_PACE - 17)
    assert calls == 3 * LEASE_PACE
    assert held == {str(SECOND): 18, "t": 18}


@needs_redis
def test_two_workers_with_leases_never_admit_more_than_the_limit_between_them(scope: str, settings) -> None:
    """Both keep asking until the limit is spent: leases serve most requests, the last ones are checked one by
    one, and the total is the limit exactly, with Redis' counters agreeing once the leases are given back."""
    settings.QUOTA_LEASE_SECONDS = 1
    key_limits = [Limit("key", scope, "test", "rpd", 100_000)]
    plan = Plan([Limit("deployment", scope, "test", "rpm", 400), Limit("deployment", scope, "test", "tpm", 10**6),
                 *key_limits], NOW_MS / 1000, f"q:cool:{scope}")

    async def worker(store: RedisStore, stop: asyncio.Event) -> int:
        admitted = 0
        while not stop.is_set():
            outcomes = await asyncio.gather(*(store.acquire(plan, 7, NOW_MS) for _ in range(5)))
            admitted += sum(o.admitted for o in outcomes)
            if not any(o.admitted for o in outcomes):
                return admitted
            await asyncio.sleep(0)  # the other worker's turn
        return admitted

    async def main() -> tuple[list[int], int, dict[str, int], int]:
        stores = [RedisStore(REDIS_URL), RedisStore(REDIS_URL)]
        try:
            await stores[0].seed(plan.checks[2].key, 0, plan.checks[2].window_ms)
            before = script_calls()
            stop = asyncio.Event()
            # A worker stops once Redis refuses it (its lease spent); the other then spends its own.
            counts = await asyncio.gather(*(worker(store, stop) for store in stores))
            calls = script_calls() - before
            for store in stores:
                await store.flush()
            return counts, calls, window(plan.checks[0].key), counter(plan.checks[2].key)
        finally:
            for store in stores:
                await store.aclose()

    counts, calls, minute, day = asyncio.run(main())
    assert sum(counts) == 400
    assert all(count > 0 for count in counts)
    # Without leases each burst of five is one call: 80 at least. Leases serve many; the last ~30 requests
    # (too little room left for a lease) are checked in Redis.
    assert calls < 60
    assert minute["t"] == 400 == sum(v for k, v in minute.items() if k != "t")
    assert day == 400


@needs_redis
def test_a_lease_ends_when_it_expires_and_the_next_request_asks_redis(scope: str, settings) -> None:
    settings.QUOTA_LEASE_SECONDS = 0.2
    plan = Plan([Limit("deployment", scope, "test", "rpm", 1000)], NOW_MS / 1000)

    async def main() -> tuple[int, int, dict[str, int]]:
        store = RedisStore(REDIS_URL)
        try:
            await busy(store, plan)
            before = script_calls()
            await store.acquire(plan, 1, NOW_MS + 100)  # from the lease
            within = script_calls() - before
            await store.acquire(plan, 1, NOW_MS + 250)  # expired by the clock: to Redis, with a new lease
            after = script_calls() - before
            await store.flush()
            return within, after, window(plan.checks[0].key)
        finally:
            await store.aclose()

    within, after, held = asyncio.run(main())
    assert (within, after) == (0, 1)
    assert held["t"] == LEASE_PACE + 2  # the rest of both leases given back


@needs_redis
def test_parking_a_deployment_ends_this_workers_lease_on_it_at_once(scope: str, settings) -> None:
    settings.QUOTA_LEASE_SECONDS = 1
    cooldown = f"q:cool:{scope}"
    plan = Plan([Limit("deployment", scope, "test", "rpm", 1000)], NOW_MS / 1000, cooldown)

    async def main() -> tuple[bool, int, bool, float, int]:
        store = RedisStore(REDIS_URL)
        try:
            first = await busy(store, plan)
            held = window(plan.checks[0].key)["t"]
            await store.park(cooldown, NOW_MS + 30_000, NOW_MS)
            refused = await store.acquire(plan, 1, NOW_MS + 10)
            await store.flush()
            return first.admitted, held, refused.cooling, refused.retry_after, window(plan.checks[0].key)["t"]
        finally:
            await store.aclose()

    admitted, held, cooling, retry_after, used = asyncio.run(main())
    assert admitted and held == LEASE_PACE + 4
    assert cooling
    assert retry_after == pytest.approx(29.99)
    assert used == LEASE_PACE  # the lease's four given back


@needs_redis
def test_with_leases_off_every_request_is_a_script_call(scope: str, settings) -> None:
    settings.QUOTA_LEASE_SECONDS = 0
    plan = Plan([Limit("deployment", scope, "test", "rpm", 1000)], NOW_MS / 1000)

    async def main() -> int:
        store = RedisStore(REDIS_URL)
        try:
            await store.acquire(plan, 1, NOW_MS)
            before = script_calls()
            for _ in range(3 * LEASE_PACE):
                await store.acquire(plan, 1, NOW_MS)
            return script_calls() - before
        finally:
            await store.aclose()

    assert asyncio.run(main()) == 3 * LEASE_PACE
