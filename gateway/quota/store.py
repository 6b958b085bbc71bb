"""What a quota store does and answers, whichever it is: Redis (shared by every worker and host) or the
in-process one (the embedded default, one worker).

Both run the same algorithm: every check of a plan has room, or nothing is counted. They answer an `Outcome`,
and later take `Correction`s once a call's real token usage is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from gateway import clock
from gateway.quota.limits import Check, Plan


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
    # Refused because the request alone is larger than `check`'s limit: waiting never helps.
    beyond_reach: bool = False


class Correction(NamedTuple):  # made for every request: a tuple is cheaper to build than a dataclass
    """Tokens to give back (negative) or add to one counter, once a call's real usage is known."""

    key: str
    sliding: bool
    bucket: int  # the second the request was counted in (per-minute windows only)
    delta: int


class Store(Protocol):
    async def acquire(self, plan: Plan, tokens: int, now_ms: int, usd: int = 0) -> Outcome: ...

    async def seed(self, key: str, value: int, expire_at_ms: int) -> None: ...

    def correct(self, corrections: list[Correction]) -> None: ...

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...

    async def park(self, key: str, until_ms: int, now_ms: int) -> None: ...

    def used_sync(self, checks: Sequence[Check], now_ms: int) -> list[tuple[int, int]]: ...

    def clear(self) -> None: ...


def clock_ms() -> int:
    return int(clock.now() * 1000)


def window_usage(buckets: dict[int, int], now_ms: int, window_ms: int) -> tuple[int, int]:
    """(used, ms until the oldest counted bucket stops counting) of a per-minute window of one-second buckets."""
    live = sorted(b for b in buckets if (b + 1) * 1000 + window_ms > now_ms)
    used = sum(buckets[b] for b in live)
    return used, ((live[0] + 1) * 1000 + window_ms - now_ms) if live else 0
