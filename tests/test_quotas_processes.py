"""Quotas hold across real server processes: shared through Redis, and durable across a restart."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings

from tests.conftest import make_deployment, make_provider
from tests.processes import PortalProcess

HELLO = [{"role": "user", "content": "hi"}]


def ask(url: str, key: str) -> int:
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "test-model", "messages": HELLO},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return response.status_code


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL: without Redis a quota is per process")
def test_two_server_processes_let_exactly_the_rpm_limit_through(master_key, upstream, transactional_db):
    make_deployment(make_provider(upstream), rpm=10)
    with PortalProcess() as one, PortalProcess() as two:
        urls = [one.url, two.url] * 25
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(lambda url: ask(url, master_key), urls))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 40
    assert len(upstream.requests) == 10


def test_a_restart_does_not_hand_out_a_fresh_day(master_key, upstream, transactional_db, tmp_path):
    clock_file = tmp_path / "clock-offset"
    clock_file.write_text("0")
    make_deployment(make_provider(upstream, reset_timezone="America/Los_Angeles"), rpd=3)
    env = {"PORTAL_FAKE_CLOCK_FILE": str(clock_file)}
    with PortalProcess(**env) as first:
        assert [ask(first.url, master_key) for _ in range(4)] == [200, 200, 200, 429]
        # SIGTERM: a clean shutdown writes the day's counts (uvicorn re-raises the signal after it).
        assert first.stop() in (0, -15)
    with PortalProcess(**env) as second:
        response = httpx.post(f"{second.url}/v1/chat/completions", json={"model": "test-model", "messages": HELLO},
                              headers={"Authorization": f"Bearer {master_key}"}, timeout=30)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "insufficient_quota"
        # Move the clock past midnight in Los Angeles: a new day, a new quota.
        clock_file.write_text(str(int(response.headers["retry-after"]) + 5))
        assert ask(second.url, master_key) == 200
    assert len(upstream.requests) == 4
    os.remove(clock_file)


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL: leases are reserved in Redis")
def test_server_processes_busy_on_a_roomy_limit_admit_from_leases_and_give_back_the_rest(master_key, upstream,
                                                                                          transactional_db):
    """Two processes, each busy enough to reserve blocks: most requests need no script call, and once they
    stop (SIGTERM) Redis counts exactly the requests served, not what was reserved."""
    import redis

    from tests.quota_redis import script_calls

    deployment = make_deployment(make_provider(upstream), rpm=100_000, rpd=1_000_000)
    with PortalProcess() as one, PortalProcess() as two:
        assert ask(one.url, master_key) == ask(two.url, master_key) == 200  # the day's counter seeded
        before = script_calls()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda url: ask(url, master_key), [one.url, two.url] * 40))
        calls = script_calls() - before
        assert one.stop() in (0, -15) and two.stop() in (0, -15)
    assert statuses == [200] * 80
    assert calls < 60  # one per request without leases
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        minute = client.hgetall(f"q:deployment:{deployment.id}:rpm")
        (day_key,) = client.keys(f"q:deployment:{deployment.id}:rpd:*")
        assert (int(minute[b"t"]), int(client.get(day_key) or 0)) == (82, 82)
    finally:
        client.close()
    assert len(upstream.requests) == 82
