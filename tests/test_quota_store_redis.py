"""The Redis quota store (gateway/quota/redis_store.py): answers in order, reconnects, timeouts, scripts, and the
same answers as the in-process store."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.exceptions

from gateway.quota import Correction, Limit, MemoryStore, Plan, RedisStore
from tests.processes import free_port
from tests.quota_redis import REDIS_URL, needs_redis, script_calls


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


NOW_MS = 1_800_000_000_000


@needs_redis
def test_concurrent_admissions_each_get_their_own_answer(scope: str) -> None:
    """A burst on several deployments, answered by one script call: each request gets the answer of its own
    plan, in its own place."""
    plans = [Plan([Limit("deployment", f"{scope}-{i}", "test", "rpm", 2 + i)], NOW_MS / 1000) for i in range(5)]

    async def main() -> list[bool]:
        store = RedisStore(REDIS_URL)
        try:
            outcomes = await asyncio.gather(*(store.acquire(plan, 1, NOW_MS) for plan in plans for _ in range(6)))
            return [o.admitted for o in outcomes]
        finally:
            await store.aclose()

    admitted = run(main())
    assert [sum(admitted[6 * i : 6 * i + 6]) for i in range(5)] == [2, 3, 4, 5, 6]


@needs_redis
def test_a_request_that_gives_up_while_its_admission_is_out_does_not_disturb_the_others(scope: str) -> None:
    """Its client left (the request is cancelled) while the script call holding it was out: the others of that
    call get their answers, and the store goes on answering."""
    plan = Plan([Limit("deployment", scope, "test", "rpm", 20)], NOW_MS / 1000)

    async def main() -> tuple[list[bool], bool]:
        store = RedisStore(REDIS_URL)
        try:
            await store.acquire(plan, 1, NOW_MS)  # connected
            abandoned = asyncio.ensure_future(store.acquire(plan, 1, NOW_MS))
            others = [asyncio.ensure_future(store.acquire(plan, 1, NOW_MS)) for _ in range(5)]
            await asyncio.sleep(0)
            abandoned.cancel()
            outcomes = await asyncio.gather(*others)
            after = await store.acquire(plan, 1, NOW_MS)
            return [o.admitted for o in outcomes], after.admitted
        finally:
            await store.aclose()

    assert run(main()) == ([True] * 5, True)


@needs_redis
def test_the_store_reconnects_after_redis_drops_its_connection(scope: str) -> None:
    plan = Plan([Limit("deployment", scope, "test", "rpm", 10)], NOW_MS / 1000)

    async def main() -> list[bool]:
        store = RedisStore(REDIS_URL)
        try:
            first = await store.acquire(plan, 1, NOW_MS)
            own_id = await store._state().client.client_id()
            killer = redis.Redis.from_url(REDIS_URL)
            killer.execute_command("CLIENT", "KILL", "ID", own_id)
            killer.close()
            await asyncio.sleep(0.2)  # the close reaches the client
            answers = []
            for _ in range(3):  # the first may fail on the dead connection; the next connects again
                try:
                    answers.append((await store.acquire(plan, 1, NOW_MS)).admitted)
                except redis.exceptions.ConnectionError:
                    answers.append(False)
            return [first.admitted, *answers]
        finally:
            await store.aclose()

    answers = run(main())
    assert answers[0] and answers[-2:] == [True, True]


@needs_redis
def test_the_counters_live_in_the_database_the_url_names(scope: str) -> None:
    url = REDIS_URL.rsplit("/", 1)[0] + "/12"
    key = f"q:test:{scope}"

    async def main() -> None:
        store = RedisStore(url)
        try:
            await store.seed(key, 7, NOW_MS)
        finally:
            await store.aclose()

    run(main())
    check = redis.Redis.from_url(url)
    try:
        assert check.get(key) == b"7"
    finally:
        check.delete(key)
        check.close()


def test_a_redis_that_never_answers_fails_the_admission_with_a_timeout(silent_server: int) -> None:
    plan = Plan([Limit("deployment", "silent", "test", "rpm", 10)], NOW_MS / 1000)

    async def main() -> None:
        store = RedisStore(f"redis://127.0.0.1:{silent_server}/0", timeout=0.3)
        try:
            await asyncio.wait_for(store.acquire(plan, 1, NOW_MS), timeout=5)
        finally:
            await store.aclose()

    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        run(main())
    assert time.monotonic() - started < 2  # its own timeout, not the test's


def test_an_unreachable_redis_is_a_connection_error_at_once() -> None:
    plan = Plan([Limit("deployment", "unreachable", "test", "rpm", 10)], NOW_MS / 1000)

    async def main() -> None:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=2)
        try:
            await store.acquire(plan, 1, NOW_MS)
        finally:
            await store.aclose()

    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        run(main())
    assert time.monotonic() - started < 2


STEPS = [0, 100, 300, 700, 1000, 1500, 2500, 5000, 30_000, 59_700, 60_300, 61_000, 200_000]


@needs_redis
def test_the_redis_store_and_the_in_process_store_agree_step_by_step(scope: str) -> None:
    """The same random sequence of checks, corrections and clock steps gives the same answers from the Lua
    script and from the in-process store (the embedded default): used, reset times, refusals, retry delays.
    Requests come one at a time and in bursts: a burst is answered by one script call on Redis, request
    after request on the in-process store, and the answers must still be the same."""
    import random

    key_limits = [Limit("key", scope, "test", "rpd", 150), Limit("key", scope, "test", "rpm", 20)]
    plans = [  # two deployments behind one key: a burst mixes requests that share some counters, not all
        [Limit("deployment", scope, "test", "rpm", 12), Limit("deployment", scope, "test", "tpm", 900), *key_limits],
        [Limit("deployment", scope + "b", "test", "rpm", 7), *key_limits],
    ]
    cooldowns = [f"q:cool:{scope}", f"q:cool:{scope}b"]
    rng = random.Random(20261127)

    async def main() -> tuple[list[tuple[object, ...]], int, int]:
        stores = [RedisStore(REDIS_URL), MemoryStore()]
        now_ms = 1_800_000_000_000
        answers = []
        bursts = calls = 0
        try:
            for store in stores:
                for limits in plans:
                    for check in Plan(limits, now_ms / 1000).fixed:
                        await store.seed(check.key, 0, check.window_ms)
            for _ in range(1500):
                # Mostly small steps, so the minute fills and its oldest buckets expire one by one; now and
                # then a jump to just before, at or after a window's end, or far beyond it.
                step = rng.choices(STEPS, weights=[len(STEPS) if s < 10_000 else 1 for s in STEPS])[0]
                now_ms += step
                if rng.random() < 0.02:  # a deployment is parked for a few seconds
                    for store in stores:
                        await store.park(cooldowns[1], now_ms + 3000, now_ms)
                burst = []
                same = rng.randrange(len(plans)) if rng.random() < 0.3 else None  # a burst on one deployment
                for _ in range(rng.choice([1, 1, 1, 2, 3, 6, 10])):
                    which = rng.randrange(len(plans)) if same is None else same
                    tokens = rng.randint(1, 160)
                    burst.append((which, tokens, Plan(plans[which], now_ms / 1000, cooldowns[which])))
                bursts += 1
                before = script_calls()
                redis_outcomes = await asyncio.gather(
                    *(stores[0].acquire(plan, tokens, now_ms) for _, tokens, plan in burst))
                calls += script_calls() - before
                memory_outcomes = [await stores[1].acquire(plan, tokens, now_ms) for _, tokens, plan in burst]
                for (_, tokens, plan), *outcomes in zip(burst, redis_outcomes, memory_outcomes, strict=True):
                    answers.append(tuple((o.admitted, o.tightest, o.used, round(o.retry_after, 3), o.cooling,
                                          o.check.limit.name if o.check else None, o.at_ms) for o in outcomes))
                    if outcomes[0].admitted and rng.random() < 0.6:
                        delta = rng.randint(-tokens + 1, 40)
                        corrections = [Correction(c.key, c.limit.sliding, now_ms // 1000, delta) for c in plan.tokens]
                        for store in stores:
                            store.correct(corrections)
                            await store.flush()
            # Every counter the script left behind expires by itself.
            check = redis.Redis.from_url(REDIS_URL)
            answers.append(tuple(sorted({check.pttl(key) > 0 for key in check.scan_iter(f"q:*{scope}*")})))
            check.close()
        finally:
            await stores[0].aclose()
        return answers, bursts, calls

    answers, bursts, calls = run(main())
    assert answers.pop() == (True,)
    assert sum(1 for redis_answer, _ in answers if not redis_answer[0]) > 20  # refusals were exercised too
    assert sum(1 for redis_answer, _ in answers if redis_answer[4]) > 5  # and parked deployments
    mismatches = [(i, a, b) for i, (a, b) in enumerate(answers) if a != b]
    assert mismatches == []
    # One script call per burst, however many requests it held (one more when Redis had to be sent the script).
    assert len(answers) > bursts * 1.5
    assert bursts <= calls <= bursts + 1


@needs_redis
def test_a_request_refused_in_the_burst_that_filled_the_window_waits_for_that_burst_to_expire(scope: str) -> None:
    """The burst's own requests are not in Redis yet when the script works out the refused one's retry delay."""
    limits = [Limit("deployment", scope, "test", "rpm", 3)]
    now_ms = 1_800_000_000_400

    async def main() -> tuple[list[tuple[bool, float]], list[tuple[bool, float]]]:
        redis_store, memory_store = RedisStore(REDIS_URL), MemoryStore()
        plan = Plan(limits, now_ms / 1000)
        try:
            together = await asyncio.gather(*(redis_store.acquire(plan, 1, now_ms) for _ in range(5)))
        finally:
            await redis_store.aclose()
        one_by_one = [await memory_store.acquire(plan, 1, now_ms) for _ in range(5)]
        return ([(o.admitted, o.retry_after) for o in together], [(o.admitted, o.retry_after) for o in one_by_one])

    together, one_by_one = run(main())
    # Counted in second 1_800_000_000, which stops counting a minute after it ends: 60.6 s from now.
    assert together == one_by_one == [(True, 0.0)] * 3 + [(False, 60.6)] * 2


@needs_redis
def test_requests_that_arrive_while_a_quota_call_is_out_go_together_in_the_next(scope: str) -> None:
    """At most one admission call per worker is out at a time: the next carries everyone who came meanwhile.
    (A limit of 20 a minute is too small for a lease: every request is checked in Redis.)"""
    plan = Plan([Limit("deployment", scope, "test", "rpm", 20)], 1_800_000_000.0)
    admin = redis.Redis.from_url(REDIS_URL)

    async def main() -> tuple[int, list[bool]]:
        store = RedisStore(REDIS_URL)
        try:
            await store.acquire(plan, 1, 1_800_000_000_000)  # connected, and the script known to Redis
            before = script_calls()
            admin.client_pause(300, all=False)  # Redis holds scripts (writes) back: the first call stays out
            first = asyncio.ensure_future(store.acquire(plan, 1, 1_800_000_000_000))
            later = []
            for _ in range(5):  # each in a turn of the loop of its own
                await asyncio.sleep(0.01)
                later.append(asyncio.ensure_future(store.acquire(plan, 1, 1_800_000_000_000)))
            outcomes = await asyncio.gather(first, *later)
            return script_calls() - before, [o.admitted for o in outcomes]
        finally:
            await store.aclose()

    calls, admitted = run(main())
    admin.close()
    assert admitted == [True] * 6
    assert calls == 2


@needs_redis
def test_the_quota_store_sends_its_script_again_when_redis_has_forgotten_it(scope: str) -> None:
    """As after a Redis restart: EVALSHA says NOSCRIPT, the batch goes again with EVAL and is answered."""
    plan = Plan([Limit("deployment", scope, "test", "rpm", 2)], 1_800_000_000.0)
    admin = redis.Redis.from_url(REDIS_URL)

    async def main() -> list[bool]:
        store = RedisStore(REDIS_URL)
        try:
            first = await store.acquire(plan, 1, 1_800_000_000_000)  # connected, script known
            admin.script_flush()
            later = await asyncio.gather(*(store.acquire(plan, 1, 1_800_000_000_000) for _ in range(2)))
            return [first.admitted, *(o.admitted for o in later)]
        finally:
            await store.aclose()

    assert run(main()) == [True, True, False]  # the limit of 2 still holds across the resend
    admin.close()
