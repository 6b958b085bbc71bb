"""The live quota board: every deployment in rotation, each of its limits as used/limit, its pause, its health.

Read by the admin's quota page (which polls it as JSON) and by `/api/quota/` for scripts. Counters come from
the quota store through `quota.usage_of`, pauses from `gateway.parking`, health from the usage records.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from django.urls import reverse

from gateway import catalog, clock, parking, quota

# "Recent" for success rate and latency: long enough to mean something on a 2-requests-a-minute free tier.
RECENT_MINUTES = 60
NAMES = {"rpm": "RPM", "tpm": "TPM", "rpd": "RPD", "tpd": "TPD"}


def board() -> dict[str, Any]:
    """The board, most pressed deployments first (parked, then by their fullest limit)."""
    from gateway.models import Deployment
    from tracking import usage

    now = clock.now()
    deployments = list(
        Deployment.objects.filter(enabled=True, provider__enabled=True)
        .select_related("provider", "pool")
        .order_by("public_name", "priority", "id")
    )
    ids = [d.pk for d in deployments]
    since = dt.datetime.fromtimestamp(now, dt.UTC) - dt.timedelta(minutes=RECENT_MINUTES)
    health = usage.recent_by_deployment(ids, since)
    paused = parking.current(ids)
    rows = [_row(d, health.get(d.pk), paused.get(d.pk), now) for d in deployments]
    rows.sort(key=lambda r: (-r["pressure"], r["model"], r["priority"]))
    return {
        "generated_at": _iso(now),
        "recent_minutes": RECENT_MINUTES,
        "deployments": rows,
    }


def limit_states(d: Any) -> list[dict[str, Any]]:
    """Each limit of a deployment (its own and its pool's) as used/limit now."""
    return [_limit(state, d) for state in quota.usage_of(catalog.deployment_limits(d))]


def _row(d: Any, health: dict[str, Any] | None, paused: dict[str, Any] | None, now: float) -> dict[str, Any]:
    limits = limit_states(d)
    parked = None
    if paused is not None:
        parked = {
            "until": _iso(paused["until"]),
            "until_provider_tz": _local(paused["until"], d.provider.reset_timezone),
            "seconds_left": max(int(paused["until"] - now), 0),
            "reason": paused["reason"],
        }
    fullest = max((limit["percent"] for limit in limits), default=0.0)
    return {
        "id": d.pk,
        "model": d.public_name,
        "provider": d.provider.name,
        "upstream_model": d.upstream_model,
        "priority": d.priority,
        "timezone": d.provider.reset_timezone,
        "admin_url": reverse("admin:gateway_deployment_change", args=[d.pk]),
        "limits": limits,
        "parked": parked,
        # Closest to exhaustion: a parked deployment serves nothing, so it counts as full.
        "pressure": 100.0 if parked else fullest,
        "requests": health["requests"] if health else 0,
        "success_rate": health["success_rate"] if health else None,
        "p50_ms": health["p50"] if health else None,
    }


def _limit(state: dict[str, Any], d: Any) -> dict[str, Any]:
    limit, used = state["limit"], state["used"]
    pool = state["scope"] == "pool"
    tz = (d.pool.reset_timezone if pool and d.pool is not None else d.provider.reset_timezone)
    resets_at = state["resets_at"]
    return {
        "name": NAMES.get(state["limit_name"], state["limit_name"].upper()),
        "scope": state["scope"],
        "pool": d.pool.name if pool and d.pool is not None else None,
        "used": used,
        "limit": limit,
        "text": f"{used:,} / {limit:,}",
        "unit": state["unit"],
        "period": state["period"],
        # Of THIS limit (RPM and TPM are never on one axis); capped: a late token correction can overshoot.
        "percent": round(min(100 * used / limit, 100.0), 1) if limit else 100.0,
        "resets_at": resets_at,
        "resets_provider_tz": (
            _local(dt.datetime.fromisoformat(resets_at).timestamp(), tz) if resets_at and state["period"] != "minute"
            else None
        ),
        "timezone": tz,
    }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _local(ts: float, tz: str) -> str:
    """"2026-12-05 00:00 PST": a moment as the provider counts its days."""
    return dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")
