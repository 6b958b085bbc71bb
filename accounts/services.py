"""What accounts uses of the gateway, handed over by the gateway when it starts (gateway.apps.GatewayConfig).

The gateway imports accounts (to authenticate each call and read its key's limits); accounts importing the
gateway back would close a cycle between the two apps. So the key pages, the admin and the management API
depend on these functions' shapes only. A process without the gateway app sees no models and no counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accounts.principal import KeyLimits, Principal


def _no_models() -> list[str]:
    return []


def _no_status(principal: Principal, models: list[str]) -> list[dict[str, Any]]:
    return []


def _no_summary(key_id: int, limits: KeyLimits) -> str:
    return "—"


def _no_budget(key_id: int, limits: KeyLimits) -> dict[str, Any] | None:
    return None


def _no_user_budget(user_id: int, budget: KeyLimits | None) -> dict[str, Any] | None:
    return None


@dataclass
class Gateway:
    # Every enabled public model name, sorted (the key forms' choices).
    enabled_models: Callable[[], list[str]] = _no_models
    # Every public model name, enabled or not (what a key may be limited to).
    all_models: Callable[[], list[str]] = _no_models
    # Per model: the key's live counters, as gateway.quota.key_status reports them.
    key_status: Callable[[Principal, list[str]], list[dict[str, Any]]] = _no_status
    # "3/10 RPM · 41/50 RPD": a key's own limits against its live counters (the admin's key list).
    key_summary: Callable[[int, KeyLimits], str] = _no_summary
    # A key's budget now: {"limit", "spend", "remaining" (Decimal USD), "period", "resets_at" (a datetime or
    # None)}; None without a budget.
    key_budget: Callable[[int, KeyLimits], dict[str, Any] | None] = _no_budget
    # A user's budget now, shared by all their keys (KeyPolicy.user_budget()): the same shape as key_budget's;
    # None without a budget.
    user_budget: Callable[[int, KeyLimits | None], dict[str, Any] | None] = _no_user_budget


gateway = Gateway()
