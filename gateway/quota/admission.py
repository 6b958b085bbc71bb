"""Admission: what the request path calls. Check and consume every limit of a request at once, correct the
token estimate when the call is over, park a deployment that the provider refused.

A request is admitted on a deployment only if *all* of its limits have room: the deployment's own
(RPM/TPM/RPD/TPD), its shared pool's, and the calling key's (RPM/RPD/tokens per day or month, optionally per
model). The store checks and counts them in one atomic step; a request whose own estimate is larger than a
tokens limit is refused without asking the store, since no wait would ever make it fit.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from gateway import clock, db
from gateway.errors import GatewayError
from gateway.quota.ledger import ledger
from gateway.quota.limits import MINUTE_MS, USD, Check, Limit, Plan, cooldown_key, plan_for
from gateway.quota.memory_store import MemoryStore
from gateway.quota.redis_store import RedisStore
from gateway.quota.store import Correction, Outcome, Store, clock_ms

log = logging.getLogger(__name__)

_store: Store | None = None


def store() -> Store:
    """This process's quota store: Redis when REDIS_URL is set (shared by every worker), else in-process."""
    global _store
    if _store is None:
        _store = RedisStore(settings.REDIS_URL) if settings.REDIS_URL else MemoryStore()
    return _store


_HEADER_NAMES = {unit: tuple(f"x-ratelimit-{part}-{unit}".encode() for part in ("limit", "remaining", "reset"))
                 for unit in ("requests", "tokens")}


@dataclass
class Admission:
    """A request admitted on a deployment: remembers what it consumed so it can be corrected later."""

    bucket: int  # the second it was counted in (per-minute windows are corrected there)
    plan: Plan
    outcome: Outcome
    estimated_tokens: int
    estimated_usd: int = 0  # micro-dollars, counted against the plan's budgets (if any)

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


async def try_admit(
    limits: Sequence[Limit], deployment_id: int | None, tokens: int, key_limits: Sequence[Limit] = (),
    usd: int = 0,
) -> Admission | Outcome:
    """Check and consume every limit at once (the deployment's and the key's, budgets included: `usd` is the
    request's estimated cost in micro-dollars); returns an Admission, or the refusing Outcome (`beyond_reach`
    when the request alone is larger than one of the tokens limits)."""
    for _ in range(len(limits) + len(key_limits) + 1):
        now = clock.now()
        plan = plan_for(limits, key_limits, deployment_id, now)
        if tokens > plan.most_tokens:
            return Outcome(False, check=plan.beyond_reach(tokens), beyond_reach=True)
        try:
            outcome = await store().acquire(plan, tokens, int(now * 1000), usd if plan.usd else 0)
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
    return Admission(outcome.at_ms // 1000, plan, outcome, tokens, usd if plan.usd else 0)


async def _seed(check: Check) -> None:
    """Give the fast store a daily or monthly counter it has no value for, from the durable ledger."""
    assert check.day is not None
    value = await sync_to_async(db.managed(ledger.durable))(check.durable_key, check.day)
    await store().seed(check.key, value, check.window_ms)


def settle(admission: Admission, actual_tokens: int | None, actual_usd: int | None = None) -> None:
    """Once the call is over: correct the token and cost estimates with the real usage (queued, never awaited),
    and hand what it consumed of daily, monthly and total windows to the durable counters. Those get it here
    rather than at admission: one write per request, and a request still in flight lives in the fast store
    meanwhile."""
    plan, estimate = admission.plan, admission.estimated_tokens
    delta = 0 if actual_tokens is None else actual_tokens - estimate
    corrections = [Correction(c.key, c.limit.sliding, admission.bucket, delta) for c in plan.tokens] if delta else []
    usd = admission.estimated_usd
    if plan.usd and actual_usd is not None and actual_usd != usd:
        corrections += [Correction(c.key, c.limit.sliding, admission.bucket, actual_usd - usd) for c in plan.usd]
        usd = actual_usd
    if corrections:
        store().correct(corrections)
    if plan.fixed:
        ledger.add([(c.durable_key, c.day, c.cost(estimate + delta, usd)) for c in plan.fixed if c.day is not None])


async def park(deployment_id: int, seconds: float) -> None:
    """Take a deployment out of rotation for a while (provider said 429, or it keeps failing)."""
    now_ms = clock_ms()
    await store().park(cooldown_key(deployment_id), now_ms + int(seconds * 1000), now_ms)


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt size (about 4 characters a token) plus the completion budget the client allows."""
    prompt, completion = estimate_parts(body)
    return prompt + completion


def estimate_parts(body: dict[str, Any]) -> tuple[int, int]:
    """The prompt's estimated tokens and the completion budget, apart (they are priced apart)."""
    prompt = len(orjson.dumps(body.get("messages") or body.get("input") or "")) // 4 + 1
    completion = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(completion, int) or isinstance(completion, bool):
        completion = settings.QUOTA_DEFAULT_COMPLETION_TOKENS
    return prompt, completion


def micro_usd(amount: Decimal | None) -> int:
    """Dollars as the stores count budgets: integer micro-dollars, rounded up (a budget never undercounts)."""
    return math.ceil(amount * USD) if amount else 0


def beyond_reach_error(refusal: Outcome, model: str, body: dict[str, Any]) -> GatewayError:
    """A 400, not a 429: the request alone is larger than a tokens limit, so waiting would never help. Like
    OpenAI's context_length_exceeded, it names the field to change: the completion budget when that is what
    tips it over, else the prompt."""
    assert refusal.check is not None
    limit = refusal.check.limit
    tokens = estimate_tokens(body)
    field = next((name for name in ("max_completion_tokens", "max_tokens") if body.get(name)), None)
    budget = body.get(field) if field else None
    if not isinstance(budget, int) or isinstance(budget, bool):
        field, budget = None, settings.QUOTA_DEFAULT_COMPLETION_TOKENS  # as estimate_tokens counts it
    prompt = tokens - budget
    if prompt <= limit.value:
        param = field or "max_tokens"
        advice = f"Lower {param} to at most {limit.value - prompt}." if field else (
            f"Set max_tokens to at most {limit.value - prompt} (without it, {budget} completion tokens are "
            "assumed).")
    else:
        param = "messages" if "messages" in body else "input"
        advice = "Send a shorter prompt."
    return GatewayError(
        400,
        f"This request can never be admitted on model '{model}': with its prompt and completion budget it "
        f"counts about {tokens} tokens, more than the {limit.describe()} that {limit.label} allows. {advice}",
        code="context_length_exceeded", param=param,
    )
