"""Read-side of the usage records: the operators' dashboard and the key pages' "today" column.

Every function here is a handful of aggregate queries over an indexed time range, whatever the number of
models, keys or records (percentiles are one OFFSET query each, on the models with the most requests).
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, OuterRef, Q, QuerySet, Subquery, Sum, Value
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


# --- spend (USD) ----------------------------------------------------------------------------------------------
# cost_usd is what a call cost (0 on a free tier, null when no price is known); list_cost_usd what it would have
# cost at the list price. "Free value" is the list price of the calls that cost nothing.

MONEY = DecimalField(max_digits=18, decimal_places=10)
SPEND_PERIODS = ((1, "today"), (7, "7 days"), (30, "30 days"), (None, "all time"))


def _money(expression: Any) -> Coalesce:
    return Coalesce(expression, Value(Decimal(0)), output_field=MONEY)


SPEND_SUMS = {
    "requests": Count("id"),
    "tokens": Coalesce(Sum("total_tokens"), 0),
    "cost": _money(Sum("cost_usd")),
    "list_cost": _money(Sum("list_cost_usd")),
    "free_value": _money(Sum("list_cost_usd", filter=Q(cost_usd=0))),
    # Calls with tokens but no price anywhere: the operator should set one (or a cost map entry).
    "unpriced": Count("id", filter=Q(cost_usd__isnull=True, total_tokens__isnull=False)),
}


def spend_of(rows: QuerySet[UsageRecord]) -> dict[str, Any]:
    """Requests, tokens, cost, list cost, free value and unpriced calls of `rows`, in one query."""
    return rows.aggregate(**SPEND_SUMS)


def spend_by(rows: QuerySet[UsageRecord], *fields: str, limit: int | None = TOP_N) -> list[dict[str, Any]]:
    """The spend of `rows` grouped by `fields`, the most expensive first (then the most list value)."""
    grouped = rows.values(*fields).annotate(**SPEND_SUMS).order_by("-cost", "-list_cost", "-requests", *fields)
    return [dict(row) for row in (grouped[:limit] if limit else grouped)]


def cost_since(since: dt.datetime, *, key_id: int | None = None, user_id: int | None = None) -> Decimal:
    """USD spent since `since` by a key or a user (all calls when neither): what a budget is measured by."""
    rows = UsageRecord.objects.since(since)
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    return Decimal(rows.aggregate(cost=SPEND_SUMS["cost"])["cost"])


def spend_dashboard(days: int) -> dict[str, Any]:
    """The dashboard's spend block: totals, and per day, model, provider, key and user over `days` days."""
    since = start_of_today() - dt.timedelta(days=days - 1)
    rows = UsageRecord.objects.since(since)
    per_day = {
        row["day"]: row
        for row in spend_by(rows.annotate(day=TruncDate("created", tzinfo=dt.UTC)), "day", limit=None)
    }
    daily = [
        per_day.get(day, {"day": day, "requests": 0, "cost": Decimal(0), "list_cost": Decimal(0),
                          "free_value": Decimal(0)})
        for day in (since.date() + dt.timedelta(days=i) for i in range(days - 1, -1, -1))
    ]
    return {
        "totals": spend_of(rows),
        "daily": daily,
        "models": spend_by(rows, "model"),
        "providers": spend_by(rows, "provider"),
        "keys": spend_by(rows, "key_id", "key_name"),
        "users": spend_by(rows, "user_id", "username"),
    }


def spend_periods(*, key_id: int | None = None, user_id: int | None = None) -> list[dict[str, Any]]:
    """A key's or a user's spend today, over 7 and 30 days and in all (UTC days), one query per period."""
    rows = UsageRecord.objects.filter(key_id=key_id) if key_id is not None else UsageRecord.objects.all()
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    out = []
    for days, label in SPEND_PERIODS:
        period = rows if days is None else rows.since(start_of_today() - dt.timedelta(days=days - 1))
        out.append({"label": label, **spend_of(period)})
    return out


def spend_by_model(*, key_id: int | None = None, user_id: int | None = None, days: int = 30) -> list[dict[str, Any]]:
    rows = UsageRecord.objects.since(start_of_today() - dt.timedelta(days=days - 1))
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    return spend_by(rows, "model")


def spend_by_key(key_ids: list[int], days: int = 30) -> dict[int, dict[str, Any]]:
    """{key id: spend over the last `days` UTC days} for the key lists."""
    if not key_ids:
        return {}
    rows = UsageRecord.objects.since(start_of_today() - dt.timedelta(days=days - 1)).filter(key_id__in=key_ids)
    return {row["key_id"]: row for row in spend_by(rows, "key_id", limit=None)}


def cost_subquery(id_field: str, days: int = 30) -> Subquery:
    """USD spent over the last `days` UTC days by the row's key or user (id_field "key_id" or "user_id"), as a
    subquery for a changelist's annotation: one query for the page, not one per row."""
    rows = (
        UsageRecord.objects.since(start_of_today() - dt.timedelta(days=days - 1))
        .filter(**{id_field: OuterRef("pk")}).order_by().values(id_field).annotate(total=Sum("cost_usd"))
        .values("total")
    )
    return Subquery(rows, output_field=MONEY)
