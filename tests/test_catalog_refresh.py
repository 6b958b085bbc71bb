"""A model created while a worker is idle answers from the first request of a burst: a request that finds no
model re-checks the catalog's version before its 404, and requests that arrive while a check is under way wait
for it instead of being served the catalog it is about to replace."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache

from gateway import catalog
from gateway.models import Deployment
from tests.conftest import make_deployment, make_provider
from tests.processes import GunicornProcess
from tests.quota_redis import needs_redis

HELLO = [{"role": "user", "content": "hi"}]


def burst(url: str, key: str, model: str, size: int = 24) -> list[int]:
    """`size` chat requests at once, each on its own connection, as many clients would send them."""

    async def one() -> int:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{url}/v1/chat/completions", json={"model": model, "messages": HELLO},
                                       headers={"Authorization": f"Bearer {key}"})
            return response.status_code

    async def all_of_them() -> list[int]:
        return list(await asyncio.gather(*(one() for _ in range(size))))

    return asyncio.run(all_of_them())


def created_elsewhere(provider: Any, public_name: str) -> None:
    """A deployment committed by another process (the admin on another worker): the row, and the catalog version
    moved in the shared cache — but not this process's snapshot, which only a version check may replace."""
    Deployment.objects.bulk_create([Deployment(public_name=public_name, provider=provider, upstream_model="mock-1")])
    try:
        cache.incr(catalog.VERSION_KEY)
    except ValueError:
        cache.set(catalog.VERSION_KEY, 1, timeout=None)


@pytest.mark.parametrize(("interval", "idle"), [
    (60.0, 0.0),  # the worker checked the version a moment ago: its snapshot is "fresh"
    (0.3, 0.5),  # the interval is over as the burst arrives: one request checks, the others used to go ahead
])
def test_a_model_created_while_the_worker_is_idle_answers_every_request_of_the_first_burst(
    portal, upstream, master_key, settings, interval, idle
):
    settings.CATALOG_REFRESH_SECONDS = interval
    provider = make_provider(upstream)
    make_deployment(provider, "old-model")
    assert burst(portal.url, master_key, "old-model", size=1) == [200]  # the worker now holds a checked snapshot

    created_elsewhere(provider, "new-model")
    asyncio.run(asyncio.sleep(idle))

    assert burst(portal.url, master_key, "new-model") == [200] * 24


def test_a_model_that_does_not_exist_is_still_a_404_after_the_recheck(portal, upstream, master_key, settings):
    settings.CATALOG_REFRESH_SECONDS = 60
    make_deployment(make_provider(upstream), "old-model")

    assert burst(portal.url, master_key, "no-such-model", size=4) == [404] * 4


@needs_redis
def test_on_every_gunicorn_worker_a_new_model_answers_the_first_burst(upstream, transactional_db, tmp_path):
    # The workers and this test share the Redis cache, where saving a deployment moves the catalog's version.
    prefix = django_settings.CACHES["default"].get("KEY_PREFIX", "")
    server = GunicornProcess(
        tmp_path / "gunicorn.log", workers=2, LITELLM_MASTER_KEY=django_settings.MASTER_KEY,
        REDIS_URL=os.environ["REDIS_URL"], CACHE_KEY_PREFIX=prefix, CATALOG_REFRESH_SECONDS="60",
        PORTAL_CONFIG=str(tmp_path / "absent.yaml"),
    )
    provider = make_provider(upstream)
    make_deployment(provider, "old-model")
    with server:
        # Both workers load and check the catalog (24 connections at once reach both).
        assert burst(server.url, django_settings.MASTER_KEY, "old-model") == [200] * 24
        make_deployment(provider, "new-model")  # save(): the version moves in Redis, after the commit
        assert burst(server.url, django_settings.MASTER_KEY, "new-model") == [200] * 24, server.output()[-2000:]
