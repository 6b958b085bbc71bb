"""What the key pages and the management API show about use and quota.

Usage is recorded by the tracking app and enforced by gateway.quota; this module only reads them, so the
pages degrade to "configured limits" while either is not there.
"""

from __future__ import annotations

from typing import Any

from accounts.forms import catalog_names
from accounts.models import ApiKey

# tracking.usage.usage_today_by_key(key_ids) -> {key_id: {"requests": n, "tokens": n}} did not exist when
# this was written; until it does, pages leave the "today" column out.
AVAILABLE = False


def today_by_key(key_ids: list[int]) -> dict[int, dict[str, Any]]:
    return {}


def quota_rows(key: ApiKey) -> list[dict[str, Any]]:
    """Per model the key may use: its configured limits (blank fields inherit the key's).

    gateway.quota.key_status(principal) will add what is left today and when it resets; the template
    shows `remaining_requests`, `remaining_tokens` and `resets_at` when a row has them.
    """
    limits, per_model = key.principal_limits()
    names = key.allowed_models or catalog_names()
    return [{"model": name, "limits": per_model.get(name, limits)} for name in names]
