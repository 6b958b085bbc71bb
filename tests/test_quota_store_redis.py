"""The quota store's own Redis client (gateway/quota/resp.py): ordered replies, reconnects, timeouts, scripts."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
import redis
import redis.exceptions

from gateway.quota import Correction, Limit, MemoryStore, Plan, RedisStore, resp
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


@needs_redis
def test_concurrent_calls_each_get_their_own_reply() -> None:
    async def main() -> list[bytes]:
        client = resp.Client(REDIS_URL)
        try:
            return await asyncio.gather(*(client.call("ECHO", f"call-{i}") for i in range(300)))
        finally:
            await client.aclose()

    assert run(main()) == [f"call-{i}".encode() for i in range(300)]


@needs_redis
def test_a_caller_that_gives_up_does_not_shift_the_replies_of_the_others() -> None:
    async def main() -> tuple[list[bytes], bytes]:
        client = resp.Client(REDIS_URL)
        try:
            await client.call("PING")
            # The first caller stops waiting while its command is in flight (its client left, say).
            abandoned = asyncio.ensure_future(client.call("ECHO", "abandoned"))
            others = [asyncio.ensure_future(client.call("ECHO", f"other-{i}")) for i in range(5)]
            await asyncio.sleep(0)
            abandoned.cancel()
            replies = await asyncio.gather(*others)
            return replies, await client.call("ECHO", "after")
        finally:
            await client.aclose()

    replies, after = run(main())
    assert replies == [f"other-{i}".encode() for i in range(5)]
    assert after == b"after"


@needs_redis
def test_a_script_redis_has_forgotten_is_sent_again() -> None:
    script = resp.Script("return {tonumber(ARGV[1]) + 1, KEYS[1]}")

    async def main() -> tuple[list[object], list[object]]:
        client = resp.Client(REDIS_URL)
        try:
            first = await client.run(script, ["some-key"], [41])
            await client.call("SCRIPT", "FLUSH")  # what a Redis restart does to the script cache
            return first, await client.run(script, ["some-key"], [1])
        finally:
            await client.aclose()

    assert run(main()) == ([42, b"some-key"], [2, b"some-key"])


@needs_redis
def test_it_reconnects_after_redis_drops_the_connection() -> None:
    async def main() -> bytes:
        client = resp.Client(REDIS_URL)
        try:
            own_id = await client.call("CLIENT", "ID")
            killer = redis.Redis.from_url(REDIS_URL)
            killer.execute_command("CLIENT", "KILL", "ID", own_id)
            killer.close()
            await asyncio.sleep(0.2)  # the close reaches the client
            return await client.call("ECHO", "back")
        finally:
            await client.aclose()

    assert run(main()) == b"back"


@needs_redis
def test_the_database_comes_from_the_url() -> None:
    url = REDIS_URL.rsplit("/", 1)[0] + "/12"

    async def main() -> None:
        client = resp.Client(url)
        try:
            await client.call("SET", "resp-test:db", "twelve", "PX", 10_000)
        finally:
            await client.aclose()

    run(main())
    check = redis.Redis.from_url(url)
    try:
        assert check.get("resp-test:db") == b"twelve"
    finally:
        check.delete("resp-test:db")
        check.close()


@needs_redis
def test_an_error_reply_is_raised_in_the_caller_that_sent_the_command() -> None:
    async def main() -> list[object]:
        client = resp.Client(REDIS_URL)
        try:
            return list(await asyncio.gather(client.call("ECHO", "before"), client.call("INCR"),
                                              client.call("ECHO", "after"), return_exceptions=True))
        finally:
            await client.aclose()

    before, failed, after = run(main())
    assert (before, after) == (b"before", b"after")
    assert isinstance(failed, redis.exceptions.ResponseError) and "wrong number of arguments" in str(failed)


def test_an_error_reply_is_kept_apart_from_the_values_after_it() -> None:
    buffer = bytearray(b"-ERR wrong number of arguments\r\n:7\r\n")
    error, pos = resp.parse(buffer, 0)
    value, end = resp.parse(buffer, pos)
    assert isinstance(error, resp._Error) and error.message == "ERR wrong number of arguments"
    assert (value, end) == (7, len(buffer))


def test_a_reply_split_across_reads_waits_for_the_rest() -> None:
    whole = b"*3\r\n:1\r\n$5\r\nhello\r\n*-1\r\n"
    for cut in range(1, len(whole)):
        with pytest.raises(resp._Incomplete):
            resp.parse(bytearray(whole[:cut]), 0)
    assert resp.parse(bytearray(whole), 0) == ([1, b"hello", None], len(whole))


def test_a_server_that_never_answers_fails_the_call_with_a_timeout(silent_server: int) -> None:
    async def main() -> None:
        client = resp.Client(f"redis://127.0.0.1:{silent_server}/0", timeout=0.3)
        try:
            await asyncio.wait_for(client.call("PING"), timeout=5)
        finally:
            await client.aclose()

    with pytest.raises(redis.exceptions.TimeoutError):
        run(main())


def test_an_unreachable_server_is_a_connection_error() -> None:
    async def main() -> None:
        await resp.Client(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=2).call("PING")

    with pytest.raises(redis.exceptions.ConnectionError):
        run(main())


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
