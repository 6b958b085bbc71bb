"""Who is calling /v1, as the gateway sees it: the master key, or one user's API key with its limits; or the
refusal when it is neither.

Plain values built by accounts (from an ApiKey row) and read by the gateway; they live here so the gateway
depends on accounts, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KeyLimits:
    """A key's own quota (None = unlimited); enforced by the gateway's quota, never for the master key."""

    rpm: int | None = None
    rpd: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    # A USD budget in micro-dollars, spent per day, month or in total.
    budget: int | None = None
    budget_period: str = "total"

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.rpd, self.tokens_per_day, self.tokens_per_month,
                                           self.budget))


@dataclass(frozen=True)
class Principal:
    is_master: bool
    key_id: int | None = None
    key_name: str = ""
    user_id: int | None = None
    username: str = ""
    # Empty means every enabled model.
    allowed_models: frozenset[str] = field(default_factory=frozenset)
    limits: KeyLimits = field(default_factory=KeyLimits)
    # Per public model name, overriding `limits` for that model.
    model_limits: dict[str, KeyLimits] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # The owner's USD budget (budget and budget_period only), which every key of theirs spends together; None
    # without one.
    user_budget: KeyLimits | None = None

    def limits_for(self, public_name: str) -> KeyLimits:
        return self.model_limits.get(public_name, self.limits)

    def may_use(self, public_name: str) -> bool:
        return self.is_master or not self.allowed_models or public_name in self.allowed_models


MASTER = Principal(is_master=True, key_name="master")


class AuthRefused(Exception):
    """The caller is not let in: `status` 401 (no key, a wrong key) or 429 (too many wrong keys)."""

    def __init__(self, status: int, message: str, code: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
