"""What the gateway lends accounts and tracking, which may not import it (it imports them): model names and
live quota counters for their pages. Handed over by GatewayConfig.ready() (gateway/apps.py)."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from accounts import services as accounts_services
from accounts import throttle
from accounts.principal import KeyLimits
from gateway import catalog, clock, pricing, quota
from gateway.models import Deployment
from tracking import services as tracking_services
from tracking.usage import counted_today

log = logging.getLogger(__name__)


def enabled_models() -> list[str]:
    """Every enabled public model name, sorted (one query: these are page requests, not /v1)."""
    rows = Deployment.objects.filter(enabled=True, provider__enabled=True).values_list("public_name", flat=True)
    return sorted(set(rows))


def all_models() -> list[str]:
    return sorted(set(Deployment.objects.values_list("public_name", flat=True)))


def key_summary(key_id: int, limits: KeyLimits) -> str:
    return quota.summary(quota.key_wide_limits(key_id, limits))


def key_budget(key_id: int, limits: KeyLimits) -> dict[str, Any] | None:
    if limits.budget is None:
        return None
    return _budget_state(quota.key_wide_limits(key_id, limits))


def user_budget(user_id: int, budget: KeyLimits | None) -> dict[str, Any] | None:
    """What is left of a user's budget, shared by all their keys (None without one)."""
    if budget is None or budget.budget is None:
        return None
    return _budget_state(quota.user_limits(user_id, budget))


def _budget_state(limits: tuple[quota.Limit, ...]) -> dict[str, Any]:
    state = next(s for s in quota.usage_of(limits) if s["unit"] == "usd")
    usd = Decimal(quota.USD)
    return {"limit": state["limit"] / usd, "spend": state["used"] / usd, "remaining": state["remaining"] / usd,
            "period": state["period"],
            "resets_at": dt.datetime.fromisoformat(state["resets_at"]) if state["resets_at"] else None}


def deployment_quotas() -> list[dict[str, Any]]:
    """Each limited deployment's daily (and per-minute) limits: used now against the limit.

    `used` comes from the quota (Redis, or this process's store, backed by its durable daily counters); when
    it cannot answer, today's usage records are counted instead.
    """
    # A deployment of a disabled provider serves nothing: its quota is not news.
    deployments = Deployment.objects.filter(enabled=True, provider__enabled=True).select_related(
        "provider", "pool").order_by(
        "public_name", "priority", "id"
    )
    out = []
    for d in deployments:
        limits = list(catalog.deployment_limits(d))
        if not limits:
            continue
        for entry in _limit_usage(d, limits):
            out.append({
                "label": f"{d.public_name} ({d.provider.name}) {entry['limit_name'].upper()} "
                f"{entry['used']:,}/{entry['limit']:,}",
                "deployment": d.pk,
                "limit_name": entry["limit_name"],
                "scope": entry.get("scope", "deployment"),
                "used": entry["used"],
                "limit": entry["limit"],
                "percent": round(100 * min(entry["used"], entry["limit"]) / entry["limit"], 1)
                if entry["limit"] else 0.0,
            })
    return out


def _limit_usage(d: Deployment, limits: list[quota.Limit]) -> list[dict[str, Any]]:
    try:
        return quota.usage_of(limits)
    except Exception:
        log.warning("quota usage unavailable for deployment %s; counting today's records", d.pk, exc_info=True)
    counted = counted_today(d.pk)
    return [
        {"limit_name": limit.name, "limit": limit.value, "used": counted[limit.name], "scope": limit.scope}
        for limit in limits
        if limit.name in counted
    ]


def prices() -> dict[int, pricing.DeploymentPrice]:
    """Every deployment's price, for the usage writer (one query)."""
    return {d.pk: pricing.for_deployment(d) for d in Deployment.objects.select_related("provider")}


def register() -> None:
    accounts_services.gateway = accounts_services.Gateway(
        enabled_models=enabled_models, all_models=all_models, key_status=quota.key_status, key_summary=key_summary,
        key_budget=key_budget, user_budget=user_budget,
    )
    tracking_services.gateway = tracking_services.Gateway(deployment_quotas=deployment_quotas, prices=prices)
    # The throttles read the portal's clock, which tests move forward instead of sleeping.
    throttle.now = clock.now
