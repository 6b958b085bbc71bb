"""Scaling out: several portal processes behind one Nginx, sharing PostgreSQL and Redis, keep limits exact.

Needs what a scaled-out deployment needs: PostgreSQL (DATABASE_URL=postgres://...) and Redis (REDIS_URL).
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.conftest import make_deployment, make_provider
from tests.mock_upstream import Behaviour
from tests.nginx_helpers import Gunicorn, Nginx, make_certificates, requires_nginx, tls_context

pytestmark = [
    requires_nginx,
    pytest.mark.skipif(
        not (os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres")),
        reason="needs PostgreSQL and Redis (DATABASE_URL=postgres://..., REDIS_URL=redis://...)",
    ),
    pytest.mark.slow,
]

CHAT = '"POST /v1/chat/completions HTTP/1.1"'


async def fire(nginx: Nginx, ca, key: str, count: int) -> list[httpx.Response]:
    """`count` requests at once, each from its own address (Nginx's per-IP limit must not be what stops them)."""
    body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    clients = [
        httpx.AsyncClient(base_url=nginx.https_url, timeout=60, transport=httpx.AsyncHTTPTransport(
            verify=tls_context(ca), local_address=f"127.0.1.{n + 1}"))
        for n in range(count)
    ]
    try:
        return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=body, headers=headers)
                                           for c in clients)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def test_two_portals_behind_nginx_let_exactly_the_rpm_through(upstream, transactional_db, master_key, tmp_path):
    make_deployment(make_provider(upstream), rpm=10)
    # The upstream takes a while, so admissions on the two portals really overlap.
    upstream.behaviour = Behaviour(latency=0.3)
    portals = [Gunicorn(tmp_path / f"portal-{n}").start() for n in range(2)]
    nginx = None
    try:
        for portal in portals:
            portal.wait(timeout=180)
        ca = make_certificates(tmp_path / "certs")
        nginx = Nginx(tmp_path / "nginx", [p.address for p in portals], tmp_path / "certs").start()
        responses = asyncio.run(fire(nginx, ca, master_key, 50))
    finally:
        if nginx is not None:
            nginx.stop()
        for portal in portals:
            portal.stop()

    statuses = [r.status_code for r in responses]
    odd = [r.text[:300] for r in responses if r.status_code not in (200, 429)]
    assert statuses.count(200) == 10, (statuses, odd, [p.output()[-1500:] for p in portals])
    assert statuses.count(429) == 40
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"rate_limit_exceeded"}
    assert len(upstream.requests_for("/chat/completions")) == 10
    # Nginx spread the requests over both processes: the limit held across them, not within one.
    served = [p.output().count(CHAT) for p in portals]
    assert sum(served) == 50 and min(served) > 0, served
