"""The Redis quota store: one atomic script call checks and counts a whole batch of admissions, so N workers on
M hosts never let more through than a limit.

Each worker (event loop) keeps one redis-py asyncio client (hiredis parses its replies) and at most one
admission call in flight: requests that arrive meanwhile wait and go together in the next call (group
commit). The script reads each counter once per batch and writes it once, and each plan's checks are sent
once, so the work per request falls as the load rises. Token corrections are queued and sent in batches too.
A busy worker's admission call also reserves a lease (gateway/quota/leases.py) that it admits from by itself.

When Redis is unreachable, an admission fails with the client's exception (try_admit answers 503
quota_store_unavailable); the next batch connects again. No call is retried: a script that timed out may
have run, and running it again would count its requests twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import redis
import redis.asyncio
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.quota.leases import Lease, Leases
from gateway.quota.limits import FIXED_GRACE_MS, MINUTE_MS, Check, Plan
from gateway.quota.store import Correction, Outcome, clock_ms, window_usage

log = logging.getLogger(__name__)

# Read once, at import: they ship in the package beside this module.
ACQUIRE_LUA = (Path(__file__).parent / "acquire.lua").read_text()
ADJUST_LUA = (Path(__file__).parent / "adjust.lua").read_text()

# Seconds to connect, and to wait for a reply, before the call fails (and the request gets a 503).
REDIS_TIMEOUT = 5.0


class Waiting(NamedTuple):
    plan: Plan
    tokens: int
    at_ms: int
    lease: int  # requests to reserve beside this one (0: none)
    future: asyncio.Future[Outcome]
    usd: int = 0  # its estimated cost in micro-dollars, for the plan's budgets


class _LoopState:
    """What RedisStore keeps per event loop: its client, the admissions waiting to be sent, its leases, and
    token corrections waiting to be sent."""

    def __init__(self, url: str, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # retry: none (see the module's docstring); redis-py would otherwise retry with backoff.
        self.client = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        # EVALSHA, and SCRIPT LOAD then EVALSHA again when Redis does not know the script (restarted, flushed).
        self.acquire_script = self.client.register_script(ACQUIRE_LUA)
        self.adjust_script = self.client.register_script(ADJUST_LUA)
        # Admissions waiting to be sent, answered together by one script call; one such call at a time.
        self.waiting: list[Waiting] = []
        self.sending: asyncio.Task[None] | None = None
        self.leases = Leases()
        self.pending: dict[tuple[str, bool, int], int] = {}
        self.flush_scheduled = False
        self.flushing: asyncio.Task[None] | None = None


class RedisStore:
    def __init__(self, url: str, timeout: float = REDIS_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self._loops: dict[int, _LoopState] = {}
        self._sync: redis.Redis | None = None

    def _state(self) -> _LoopState:
        # A connection belongs to the loop that made it: one client per loop (each worker has one; tests have
        # several, and a loop's id may be reused once it is gone).
        loop = asyncio.get_running_loop()
        state = self._loops.get(id(loop))
        if state is None or state.loop is not loop:
            state = self._loops[id(loop)] = _LoopState(self.url, self.timeout, loop)
        return state

    def _sync_client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, socket_connect_timeout=self.timeout,
                                              socket_timeout=self.timeout)
        return self._sync

    async def acquire(self, plan: Plan, tokens: int, now_ms: int, usd: int = 0) -> Outcome:
        state = self._state()
        lease = state.leases.live.get(plan)
        if lease is not None:
            outcome = lease.take(tokens, now_ms)
            if outcome is not None:
                return outcome
            self._end_lease(state, lease, now_ms)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if not state.waiting and state.sending is None:
            # At the end of this turn of the loop, so the requests handled in it go together.
            loop.call_soon(self._send_batch, state)
        # No lease on a plan with a budget: each request's cost differs, so each is checked in Redis (its cost
        # is known only to the worker that asks, and a lease would let two workers overspend together).
        want = state.leases.demand_of(plan).wanted(now_ms) if settings.QUOTA_LEASE_SECONDS and not plan.usd else 0
        state.waiting.append(Waiting(plan, tokens, now_ms, want, future, usd))
        return await future

    def _end_lease(self, state: _LoopState, lease: Lease, now_ms: int | None = None) -> None:
        leftovers = state.leases.drop(lease, now_ms)
        if leftovers:
            self.correct(leftovers)

    def _send_batch(self, state: _LoopState) -> None:
        """One script call answers every admission waiting: those asked for in the last turn of the loop, and
        those that came while the previous call was out (it goes as soon as that one is answered; Redis runs
        one script at a time anyway). Under load a worker takes many requests meanwhile, mostly against the
        same deployment and key: each plan goes once in the call, however many of its requests it carries.
        An idle worker's request goes at once, alone.
        """
        if not state.waiting or state.sending is not None:
            return
        batch, state.waiting = state.waiting, []
        keys: list[str] = []
        numbers: dict[int, int] = {}  # id(plan) -> its number in this call
        specs: list[str] = []
        requests: list[str] = []
        now_ms = 0  # the batch is counted at one time: the latest asked for
        for i, (plan, tokens, at_ms, want, _, usd) in enumerate(batch):
            number = numbers.get(id(plan))
            if number is None:
                number = numbers[id(plan)] = len(specs) + 1
                specs.append(f"{len(keys)}|{plan.spec}")
                keys += plan.keys
            elif want:  # one lease per plan and call
                batch[i] = batch[i]._replace(lease=0)
                want = 0
            requests.append(f"{number},{tokens},{want},{want * tokens},{usd}")
            now_ms = max(now_ms, at_ms)
        state.sending = asyncio.get_running_loop().create_task(
            self._call(state, batch, keys, [now_ms, len(specs), *specs, *requests], now_ms))

    async def _call(self, state: _LoopState, batch: list[Waiting], keys: list[str], args: list[Any],
                    now_ms: int) -> None:
        # A task of its own, not any caller's: a request whose client leaves (cancelled) must not cancel the
        # call the others of its batch wait on, nor leave redis-py's connection half-read.
        try:
            reply: Any = await state.acquire_script(keys, args)
        except Exception as e:
            reply = e
        state.sending = None
        try:
            self._answered(state, batch, now_ms, reply)
        finally:
            self._send_batch(state)  # those that came meanwhile

    def _answered(self, state: _LoopState, batch: list[Waiting], now_ms: int, reply: Any) -> None:
        if isinstance(reply, BaseException):
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(reply)
            return
        for i, item in enumerate(batch):
            answer = reply[9 * i : 9 * i + 9]
            outcome = _outcome(item.plan, answer, now_ms)
            if item.lease and outcome.admitted:
                self._grant(state, item, outcome, answer[7], answer[8], now_ms)
            if not item.future.done():  # else its caller gave up (the client left)
                item.future.set_result(outcome)
        if state.leases.live and state.waiting:
            # Those that came meanwhile on a plan just granted a lease are admitted from it.
            still: list[Waiting] = []
            for item in state.waiting:
                lease = state.leases.live.get(item.plan)
                taken = lease.take(item.tokens, item.at_ms) if lease is not None else None
                if lease is None or taken is None:
                    still.append(item)
                elif not item.future.done():
                    item.future.set_result(taken)
                else:
                    lease.give_back(item.tokens)  # its caller gave up: the reservation is not used
            state.waiting = still

    def _grant(self, state: _LoopState, item: Waiting, outcome: Outcome, requests: int, tokens: int,
               now_ms: int) -> None:
        if not requests:
            state.leases.demand_of(item.plan).refused(now_ms)
            return
        lease, leftovers = state.leases.grant(item.plan, requests, tokens, now_ms, outcome.tightest, item.tokens)
        if leftovers:
            self.correct(leftovers)
        delay = max(lease.expires_ms - now_ms, 0) / 1000
        item.future.get_loop().call_later(delay, self._expire, state, lease)

    def _expire(self, state: _LoopState, lease: Lease) -> None:
        if state.leases.live.get(lease.plan) is lease:
            self._end_lease(state, lease)

    async def seed(self, key: str, value: int, expire_at_ms: int) -> None:
        await self._state().client.set(key, value, nx=True, pxat=expire_at_ms + FIXED_GRACE_MS)

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
            await state.adjust_script([key for key, *_ in entries], [packed])
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
        for lease in list(state.leases.live.values()):
            self._end_lease(state, lease)
        if state.flushing is not None:
            await asyncio.gather(state.flushing, return_exceptions=True)
        if state.pending:
            await self._flush(state)

    async def park(self, key: str, until_ms: int, now_ms: int) -> None:
        state = self._state()
        # This worker stops admitting from its leases on the deployment at once; others when theirs end (within
        # QUOTA_LEASE_SECONDS), and a request they send meanwhile gets the provider's 429 and parks it there too.
        for lease in [lease for plan, lease in state.leases.live.items() if plan.cooldown == key]:
            self._end_lease(state, lease)
        # The value is the end of the pause; the TTL only cleans up (with a margin for a moved clock).
        await state.client.set(key, until_ms, px=max(until_ms - now_ms, 1) + FIXED_GRACE_MS)

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
                out.append(window_usage(buckets, now_ms, c.window_ms))
            else:
                out.append((int(client.get(c.key) or 0), c.window_ms - now_ms))  # type: ignore[arg-type]
        return out

    def clear(self) -> None:
        for state in self._loops.values():
            state.pending.clear()
            state.leases.clear()
        client = self._sync_client()
        for key in client.scan_iter("q:*"):
            client.delete(key)


def _outcome(plan: Plan, reply: list[int], at_ms: int) -> Outcome:
    if reply[0] == 1:
        return Outcome(True, tightest=tuple(reply[1:7]), at_ms=at_ms)
    if reply[0] == -1:
        return Outcome(False, missing=reply[1] - 1)
    if reply[1] == 0:
        return Outcome(False, retry_after=max(reply[3], 0) / 1000, cooling=True)
    return Outcome(False, check=plan.checks[reply[1] - 1], used=reply[2], retry_after=max(reply[3], 0) / 1000)
