"""What the key pages show about use and quota: read from tracking (usage records) and the gateway's live
counters (through accounts.services); this module only reads them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from accounts import services
from accounts.forms import catalog_names
from accounts.keys import load_entry
from accounts.models import ApiKey
from accounts.principal import KeyLimits
from tracking import usage as tracking_usage
from tracking.usage import today_by_key_annotations, usage_today_by_key

# The limits of a key, in the order of the page's columns: (the quota's name, KeyLimits field).
KINDS = [("rpm", "rpm"), ("rpd", "rpd"), ("tpd", "tokens_per_day"), ("tokens_per_month", "tokens_per_month")]


def today_by_key(key_ids: list[int]) -> dict[int, dict[str, int]]:
    """{key id: {"requests": n, "tokens": n}} since midnight UTC; keys without use are absent."""
    return usage_today_by_key(key_ids) if key_ids else {}


def today_annotations() -> dict[str, Any]:
    """`requests_today` and `tokens_today` on an ApiKey queryset (the admin's key list)."""
    return today_by_key_annotations()


def today_by_user(user_ids: list[int]) -> dict[int, dict[str, int]]:
    """{user id: {"requests": n, "tokens": n}} today, summed over each user's keys."""
    owners = dict(ApiKey.objects.filter(owner_id__in=user_ids).values_list("id", "owner_id"))
    totals: dict[int, dict[str, int]] = {}
    for key_id, used in today_by_key(list(owners)).items():
        total = totals.setdefault(owners[key_id], {"requests": 0, "tokens": 0})
        total["requests"] += used["requests"]
        total["tokens"] += used["tokens"]
    return totals


def key_spend(key_id: int) -> dict[str, Any]:
    """A key's spend for its pages: per period, and per model over 30 days."""
    return {"periods": tracking_usage.spend_periods(key_id=key_id),
            "models": tracking_usage.spend_by_model(key_id=key_id), "table_id": "key-spend"}


def user_spend(user_id: int) -> dict[str, Any]:
    """A user's spend over all their keys (records carry the user, so deleted keys still count)."""
    return {"periods": tracking_usage.spend_periods(user_id=user_id),
            "models": tracking_usage.spend_by_model(user_id=user_id), "table_id": "user-spend"}


def spend_by_key(key_ids: list[int]) -> dict[int, dict[str, Any]]:
    """{key id: spend over 30 days} for the key list."""
    return tracking_usage.spend_by_key(key_ids)


def quota_rows(key: ApiKey) -> list[dict[str, Any]]:
    """Per model the key may use, per kind of limit: the limit, and for a usable key what is left and when
    it resets (the tighter of the key-wide and the per-model counter)."""
    limits, per_model = key.principal_limits()
    names = key.allowed_models or catalog_names()
    principal = load_entry(key.prefix, 0).principal  # None for a revoked or expired key: nothing is left
    status = {row["model"]: row["limits"] for row in services.gateway.key_status(principal, names)} if principal else {}
    return [
        {"model": name, "cells": _cells(per_model.get(name, limits), status.get(name, []))} for name in names
    ]


def _cells(limits: KeyLimits, counters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells = []
    for kind, field in KINDS:
        found = [c for c in counters if c["limit_name"] == kind]
        tightest = min(found, key=lambda c: c["remaining"]) if found else None
        cells.append({
            "limit": getattr(limits, field),
            "remaining": tightest["remaining"] if tightest else None,
            "resets_at": dt.datetime.fromisoformat(tightest["resets_at"]) if tightest and tightest["resets_at"]
            else None,
        })
    return cells
