"""Leases: a busy worker reserves a block of a roomy limit and admits from it by itself, for under a second.

Under load (a worker busy on one deployment and key) the Redis store's admission call also asks for a block
(at most a 16th of what each limit has left). The acquire script counts the block in Redis when it grants
it, so leases never let more through than the limit; what the worker does not use goes back as a correction.
They take Redis off the path of most requests at high rates, while light use (someone trying a model, then
reading /v1/quota) is still counted request by request, so what it reads is exact.
"""

from __future__ import annotations

from django.conf import settings

from gateway.quota.limits import Plan
from gateway.quota.store import Correction, Outcome

# Leases: asked for once a worker sends LEASE_PACE requests of one plan within a second; the first for
# LEASE_FIRST requests beside the one asking, later ones for twice what the last one served, up to LEASE_MAX;
# after a refusal (too little room) a plan is not asked a lease for LEASE_RETRY_MS.
LEASE_PACE = 8
LEASE_FIRST = 4
LEASE_MAX = 1024
LEASE_RETRY_MS = 5000


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
        self.at_ms = self.since_ms + 1000  # counted in the next second (see acquire.lua)
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

    def give_back(self, tokens: int) -> None:
        """A request taken from the lease whose caller gave up before it was told: its place is free again."""
        self.requests += 1
        self.tokens += tokens

    def leftovers(self) -> list[Correction]:
        """What was not used, given back (once) to the counters it was counted in."""
        bucket = self.at_ms // 1000
        out = [Correction(c.key, c.limit.sliding, bucket, -(self.requests if c.limit.unit == "requests"
                                                              else self.tokens))
               for c in self.plan.checks]
        self.requests = self.tokens = 0
        return [c for c in out if c.delta]


class Demand:
    """A worker's use of one plan, which decides whether its next call to Redis asks for a lease, and how big:
    only once it sends LEASE_PACE requests within a second (light use is counted request by request; a lease
    is for load, where a reserved block is soon used), for twice what its last lease served, and not for a
    while after the script refused one (too little room)."""

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

    def refused(self, now_ms: int) -> None:
        self.refused_until = now_ms + LEASE_RETRY_MS

    def ended(self, lease: Lease, now_ms: int | None) -> None:
        self.size = min(max(lease.taken * 2, LEASE_FIRST), LEASE_MAX)
        if lease.taken >= LEASE_PACE or (now_ms is not None and now_ms < lease.expires_ms):
            # Well used, or used up before it expired: the worker is still busy on the plan, so its next request
            # asks for the next lease at once.
            self.since_ms, self.count = lease.expires_ms if now_ms is None else now_ms, LEASE_PACE - 1


class Leases:
    """A worker's live leases (one per plan) and its demand on each plan, within one event loop."""

    def __init__(self) -> None:
        self.live: dict[Plan, Lease] = {}
        self.demand: dict[Plan, Demand] = {}

    def demand_of(self, plan: Plan) -> Demand:
        demand = self.demand.get(plan)
        if demand is None:
            if len(self.demand) > 4096:
                self.demand.clear()  # plans of old catalog snapshots and edited keys
            demand = self.demand[plan] = Demand()
        return demand

    def grant(self, plan: Plan, requests: int, tokens: int, now_ms: int, tightest: tuple[int, ...],
              first_tokens: int) -> tuple[Lease, list[Correction]]:
        """Hold a new lease on `plan` (ending the one it replaces): returns it, and what the old one left."""
        held = self.live.get(plan)
        leftovers = self.drop(held) if held is not None else []
        lease = self.live[plan] = Lease(plan, requests, tokens, now_ms, tightest, first_tokens)
        return lease, leftovers

    def drop(self, lease: Lease, now_ms: int | None = None) -> list[Correction]:
        """Stop admitting from `lease`: what it left, to give back to Redis."""
        if self.live.get(lease.plan) is lease:
            del self.live[lease.plan]
            self.demand_of(lease.plan).ended(lease, now_ms)
        return lease.leftovers()

    def clear(self) -> None:
        self.live.clear()
        self.demand.clear()
