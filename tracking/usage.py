"""Read-side of the usage records: the operators' dashboard and the key pages' "today" column.

Every function here is a handful of aggregate queries over an indexed time range, whatever the number of
models, keys or records (percentiles are one OFFSET query each, on the models with the most requests).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from tracking import services
from tracking.models import UsageRecord

log = logging.getLogger(__name__)

TOP_N = 10
# Latency percentiles are computed for the busiest models only (two queries each).
PERCENTILE_MODELS = 15


def start_of_today() -> dt.datetime:
    return timezone.now().astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def usage_today_by_key(key_ids: list[int]) -> dict[int, dict[str, int]]:
    """{key id: {"requests": n, "tokens": n}} since midnight UTC (read by accounts' key pages)."""
    rows = (
        UsageRecord.objects.filter(key_id__in=key_ids, created__gte=start_of_today())
        .values("key_id")
        .annotate(requests=Count("id"), tokens=Coalesce(Sum("total_tokens"), 0))
    )
    return {row["key_id"]: {"requests": row["requests"], "tokens": row["tokens"]} for row in rows}


def today_by_key_annotations() -> dict[str, Any]:
    """Annotations for an ApiKey queryset: `requests_today` and `tokens_today` since midnight UTC, as two
    correlated subqueries (the admin's key list: one query for the page, not one per key)."""
    today = UsageRecord.objects.filter(key_id=OuterRef("pk"), created__gte=start_of_today()).order_by().values("key_id")
    return {
        "requests_today": Subquery(today.annotate(n=Count("id")).values("n")[:1]),
        "tokens_today": Subquery(today.annotate(n=Coalesce(Sum("total_tokens"), 0)).values("n")[:1]),
    }


def recent_by_deployment(deployment_ids: list[int], since: dt.datetime) -> dict[int, dict[str, Any]]:
    """{deployment id: {"requests", "ok", "success_rate", "p50"}} since `since` (the quota board's health
    columns): one grouped query, then one percentile query per deployment that answered."""
    rows = (
        UsageRecord.objects.since(since).filter(deployment_id__in=deployment_ids).values("deployment_id")
        .annotate(requests=Count("id"), ok_count=Count("id", filter=Q(ok=True)), timed=Count("latency_ms"))
    )
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        timed = UsageRecord.objects.since(since).filter(deployment_id=row["deployment_id"], latency_ms__isnull=False)
        out[row["deployment_id"]] = {
            "requests": row["requests"],
            "ok": row["ok_count"],
            "success_rate": _rate(row["ok_count"], row["requests"]),
            "p50": percentile_of(timed, row["timed"], 50),
        }
    return out


def percentile_of(rows: QuerySet[UsageRecord], count: int, pct: int) -> float | None:
    """Nearest-rank percentile of latency_ms over `rows` (`count` of them have a latency)."""
    if count == 0:
        return None
    rank = max(-(-pct * count // 100), 1)
    value = rows.order_by("latency_ms").values_list("latency_ms", flat=True)[rank - 1]
    return None if value is None else round(float(value), 1)


def dashboard(days: int) -> dict[str, Any]:
    since = start_of_today() - dt.timedelta(days=days - 1)
    rows = UsageRecord.objects.since(since)
    totals = rows.aggregate(
        requests=Count("id"), errors=Count("id", filter=Q(ok=False)), tokens=Coalesce(Sum("total_tokens"), 0),
        timed=Count("latency_ms"),
    )
    with_latency = rows.filter(latency_ms__isnull=False)
    totals["error_rate"] = _rate(totals["errors"], totals["requests"])
    totals["p50"] = percentile_of(with_latency, totals["timed"], 50)
    totals["p95"] = percentile_of(with_latency, totals["timed"], 95)
    return {
        "days": days,
        "since": since.date().isoformat(),
        "totals": totals,
        "daily": daily_by_model(rows, since, days),
        "models": by_model(rows),
        "top_keys": top(rows, "key_id", "key_name"),
        "top_users": top(rows, "user_id", "username"),
        "quota": quota_today(),
    }


def _rate(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def daily_by_model(rows: QuerySet[UsageRecord], since: dt.datetime, days: int) -> dict[str, Any]:
    """Requests and tokens per UTC day per model, shaped for the charts (one series per model)."""
    labels = [(since.date() + dt.timedelta(days=i)).isoformat() for i in range(days)]
    index = {day: i for i, day in enumerate(labels)}
    series: dict[str, dict[str, list[int]]] = {}
    per_day = (
        rows.annotate(day=TruncDate("created", tzinfo=dt.UTC)).values("day", "model")
        .annotate(requests=Count("id"), tokens=Coalesce(Sum("total_tokens"), 0)).order_by("model", "day")
    )
    for row in per_day:
        model = row["model"] or "(none)"
        entry = series.setdefault(model, {"requests": [0] * days, "tokens": [0] * days})
        i = index.get(row["day"].isoformat())
        if i is not None:
            entry["requests"][i] = row["requests"]
            entry["tokens"][i] = row["tokens"]
    return {"labels": labels, "series": [{"model": m, **v} for m, v in series.items()]}


def by_model(rows: QuerySet[UsageRecord]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        dict(row)
        for row in rows.values("model")
        .annotate(requests=Count("id"), errors=Count("id", filter=Q(ok=False)),
                  tokens=Coalesce(Sum("total_tokens"), 0), timed=Count("latency_ms"))
        .order_by("-requests", "model")
    ]
    for i, row in enumerate(out):
        row["model"] = row["model"] or "(none)"
        row["error_rate"] = _rate(row["errors"], row["requests"])
        if i < PERCENTILE_MODELS:
            timed = rows.filter(model=row["model"] if row["model"] != "(none)" else "", latency_ms__isnull=False)
            row["p50"] = percentile_of(timed, row["timed"], 50)
            row["p95"] = percentile_of(timed, row["timed"], 95)
    return out


def top(rows: QuerySet[UsageRecord], id_field: str, name_field: str) -> list[dict[str, Any]]:
    return [
        {"id": row[id_field], "name": row[name_field] or "(none)", "requests": row["requests"],
         "tokens": row["tokens"], "errors": row["errors"]}
        for row in rows.values(id_field, name_field)
        .annotate(requests=Count("id"), tokens=Coalesce(Sum("total_tokens"), 0), errors=Count("id", filter=Q(ok=False)))
        .order_by("-requests", name_field)[:TOP_N]
    ]


def quota_today() -> list[dict[str, Any]]:
    """Each limited deployment's daily (and per-minute) limits: used now against the limit (from the gateway,
    see tracking.services)."""
    return services.gateway.deployment_quotas()


def counted_today(deployment_id: int) -> dict[str, int]:
    """{"rpd": requests, "tpd": tokens} a deployment served since midnight UTC, counted from the records (the
    gateway's fallback when its live counters cannot answer)."""
    today = UsageRecord.objects.filter(deployment_id=deployment_id, created__gte=start_of_today())
    counted = today.aggregate(requests=Count("id"), tokens=Coalesce(Sum("total_tokens"), 0))
    return {"rpd": counted["requests"], "tpd": counted["tokens"]}
