"""Why a deployment is parked and until when, for the operators' quota board.

The pause itself lives in the quota store (`quota.park`), where admission reads it. This keeps the reason next
to it (the provider's 429 text, or the failures that caused it) in the cache, which every worker shares when
Redis is configured, so an operator sees *why* a deployment is out of rotation, not only that it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.cache import cache

from gateway import clock

REASON_MAX_CHARS = 500


def _key(deployment_id: int) -> str:
    return f"parked:{deployment_id}"


async def note(deployment_id: int, seconds: float, reason: str) -> None:
    """Remember a pause: written once per park (a provider 429 or repeated failures), never per request."""
    now = clock.now()
    entry = {"since": now, "until": now + seconds, "reason": reason[:REASON_MAX_CHARS]}
    # Kept a minute past the pause (real seconds: a moved test clock is filtered on read).
    await cache.aset(_key(deployment_id), entry, timeout=max(int(seconds), 0) + 60)


def current(deployment_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """{deployment id: {"since", "until", "reason"}} for the deployments parked now."""
    ids = list(deployment_ids)
    found = cache.get_many([_key(i) for i in ids]) if ids else {}
    now = clock.now()
    out = {}
    for deployment_id in ids:
        entry = found.get(_key(deployment_id))
        if isinstance(entry, dict) and entry.get("until", 0) > now:
            out[deployment_id] = entry
    return out
