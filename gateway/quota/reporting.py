"""Reporting: what a set of limits has used and has left, for /v1/quota, the admin and the key pages.

Read from the live counters (sync: pages and the admin run outside the event loop); a daily or monthly window
the fast store has no value for (after a restart) is read from the durable ledger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from gateway import clock
from gateway.quota.admission import store
from gateway.quota.ledger import ledger
from gateway.quota.limits import USD, Limit, Plan, key_limits


def usage_of(limits: Sequence[Limit]) -> list[dict[str, Any]]:
    """Used, remaining and reset time of each limit now (for the admin and /v1/quota)."""
    now = clock.now()
    checks = Plan(limits, now).checks
    states = store().used_sync(checks, int(now * 1000))
    out = []
    for c, (used, reset_ms) in zip(checks, states, strict=True):
        if c.day is not None and used == 0:
            used = ledger.durable(c.durable_key, c.day)
        out.append(
            {
                "scope": c.limit.scope,
                "limit_name": c.limit.name,
                "limit": c.limit.value,
                "unit": c.limit.unit,
                "period": c.limit.period,
                "used": used,
                "remaining": max(c.limit.value - used, 0),
                "resets_at": dt.datetime.fromtimestamp(now + max(reset_ms, 0) / 1000, dt.UTC).isoformat(
                    timespec="seconds"
                )
                if reset_ms and c.limit.period != "total"  # a total budget never resets
                else None,
                "reset_timezone": c.limit.tz if c.day is not None else None,
            }
        )
    return out


def summary(limits: Sequence[Limit]) -> str:
    """"3/10 RPM · 41/50 RPD (resets 07:00 UTC)": used against each limit, from the live counters (admin lists)."""
    parts = []
    for state in usage_of(limits):
        if state["unit"] == "usd":
            every = "in total" if state["period"] == "total" else f"/{state['period']}"
            text = f"${state['used'] / USD:,.2f}/${state['limit'] / USD:,.2f} {every}"
            if state["resets_at"]:
                text += f" (resets {state['resets_at'][5:16].replace('T', ' ')} UTC)"
            parts.append(text)
            continue
        text = f"{state['used']}/{state['limit']} {state['limit_name'].upper().replace('TOKENS_PER_MONTH', 'TPMo')}"
        if state["period"] != "minute" and state["resets_at"]:
            text += f" (resets {state['resets_at'][5:16].replace('T', ' ')} UTC)"
        parts.append(text)
    return " · ".join(parts) or "—"


def key_status(principal: Any, models: Sequence[str]) -> list[dict[str, Any]]:
    """Per model named (those the key may use): its remaining requests/tokens and when they reset (sync; for
    pages)."""
    return [{"model": name, "limits": usage_of(key_limits(principal, name))} for name in models]
