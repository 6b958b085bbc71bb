"""What the quota tests against a real Redis share: its URL, the skip without it, a scope for their counters
(a fixture, made available to every test by conftest), and Redis' own count of script calls."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis pass sets it)")


@pytest.fixture
def scope(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A name of its own for the test's quota counters in the shared Redis; they are deleted after it."""
    settings.REDIS_URL = REDIS_URL
    name = uuid.uuid4().hex
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"q:*{name}*"):
        client.delete(key)
    client.close()


def script_calls() -> int:
    """Script calls Redis has answered so far (EVALSHA and EVAL), from INFO commandstats."""
    client = redis.Redis.from_url(REDIS_URL)
    stats = client.info("commandstats")
    client.close()
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))
