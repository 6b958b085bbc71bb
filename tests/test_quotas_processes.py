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
