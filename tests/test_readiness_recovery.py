"""Readiness tells the truth about the database, the cache and the broker, and the portal heals by itself.

A portal process runs against a PRIVATE PostgreSQL, a PRIVATE Redis (cache and quotas) and a second PRIVATE
Redis as its Celery broker (tests/private_services.py), so pulling their plugs never disturbs the services the
rest of the suite shares. A background thread keeps requests flowing (light load) while an operator's
"outage" stops one service and starts it again; the portal process itself is never restarted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import redis
from django.conf import settings

from gateway import catalog
from tests import private_services
from tests.mock_upstream import MockUpstream
from tests.processes import PortalProcess

pytestmark = pytest.mark.skipif(private_services.unavailable() is not None,
                                reason=str(private_services.unavailable()))

HELLO = [{"role": "user", "content": "hi"}]
# An outage must be answered, not waited out: the client gives up long before this if the portal hangs.
CLIENT_TIMEOUT = 15.0

SETUP = """
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from django.contrib.auth import get_user_model
from accounts.models import ApiKey
from gateway.models import Deployment, Provider
provider = Provider(name="mock", kind="openai_compatible", api_base={base!r})
provider.set_secret("sk-upstream-secret-value-123")
provider.save()
# Limits, so every request goes through the quota store (Redis).
Deployment.objects.create(public_name="test-model", provider=provider, upstream_model="mock-1", rpm=100000, rpd=10**7)
alice = get_user_model().objects.create(username="alice")
print("KEY=" + ApiKey.objects.issue(alice, "recovery test")[1])
"""


@dataclass
class Outcome:
    phase: str
    key: str
    status: int  # 0: no answer (connection error or client timeout)
    code: str | None
    seconds: float
    request_id: str | None


@dataclass
class Load:
    """Light load: one request after another (master key and alice's key in turn, streams every third)."""

    url: str
    keys: dict[str, str]
    phase: str = "warm-up"
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                who = "master" if n % 2 else "alice"
                self.outcomes.append(self.one(client, who, stream=n % 3 == 0))
                time.sleep(0.02)

    def one(self, client: httpx.Client, who: str, stream: bool) -> Outcome:
        phase, started = self.phase, time.monotonic()
        body = {"model": "test-model", "messages": HELLO, "stream": stream}
        try:
            response = client.post(f"{self.url}/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {self.keys[who]}"})
        except httpx.HTTPError:
            return Outcome(phase, who, 0, None, time.monotonic() - started, None)
        code = None
        if response.status_code != 200:
            code = response.json()["error"]["code"]  # an envelope, or this raises and the test fails
        elif stream:
            assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
        return Outcome(phase, who, response.status_code, code, time.monotonic() - started,
                       response.headers.get("x-request-id"))

    def during(self, phase: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.phase == phase]

    def wait_for(self, phase: str, count: int, timeout: float = 20) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while len(self.during(phase)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.during(phase)


@dataclass
class Stack:
    portal: PortalProcess
    redis: private_services.PrivateRedis
    broker: private_services.PrivateRedis
    postgres: private_services.PrivatePostgres
    load: Load

    def readiness(self) -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"{self.portal.url}/health/readiness", timeout=CLIENT_TIMEOUT)
        return response.status_code, response.json()

    def wait_ready(self, ready: bool, timeout: float = 20) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.readiness()
            if (status == 200) == ready or time.monotonic() > deadline:
                return status, body
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(upstream_server: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        redis = private_services.PrivateRedis().start()
        broker = private_services.PrivateRedis().start()
        postgres = private_services.PrivatePostgres().start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"private Redis/PostgreSQL could not start: {e}")
    env = {
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis.url(0),
        "CELERY_BROKER_URL": broker.url(0),
        "LITELLM_MASTER_KEY": settings.MASTER_KEY,
        "PORTAL_DATA_DIR": str(tmp_path_factory.mktemp("recovery-data")),
        "PORTAL_CONFIG": "/nonexistent/config.yaml",
        "USAGE_FLUSH_SECONDS": "0.2",
        "LOG_LEVEL": "CRITICAL",
    }
    portal = PortalProcess(**env)
    try:
        setup = portal.manage("shell", "-c", SETUP.format(base=upstream_server.base_url))
        alice_key = setup.split("KEY=", 1)[1].split()[0]
        portal.start()
        load = Load(portal.url, {"master": settings.MASTER_KEY, "alice": alice_key})
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        try:
            yield Stack(portal, redis, broker, postgres, load)
        finally:
            load.stop.set()
            thread.join(timeout=CLIENT_TIMEOUT + 5)
    finally:
        if portal.proc is not None and portal.proc.poll() is None:
            portal.stop()
        for service in (redis, broker, postgres):
            service.close()


def recorded(postgres: private_services.PrivatePostgres, request_ids: list[str]) -> int:
    with psycopg.connect(postgres.url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM tracking_usagerecord WHERE request_id = ANY(%s)",
                           [request_ids]).fetchone()
    return int(row[0]) if row else 0


def wait_recorded(postgres: private_services.PrivatePostgres, request_ids: list[str], timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while (count := recorded(postgres, request_ids)) < len(request_ids) and time.monotonic() < deadline:
        time.sleep(0.25)
    return count


def test_readiness_is_200_with_every_service_up(stack: Stack) -> None:
    status, body = stack.wait_ready(True)
    assert (status, body["db"], body["cache"], body["broker"]) == (200, "ok", "ok", "ok"), body
    assert all(o.status == 200 for o in stack.load.wait_for("warm-up", 6)), stack.load.during("warm-up")


def test_losing_redis_gives_503s_and_the_portal_recovers_when_it_returns(stack: Stack) -> None:
    stack.load.wait_for("warm-up", 4)
    stack.redis.stop()
    stack.load.phase = "redis down"
    status, body = stack.wait_ready(False)
    assert status == 503 and body["status"] == "unavailable", body
    assert body["cache"].startswith("error"), body
    assert body["db"] == "ok" and body["broker"] == "ok", body

    # Long enough for every worker's memo of alice's key to expire: her key must be looked up again.
    time.sleep(settings.API_KEY_REFRESH_SECONDS * 3)
    stack.load.phase = "redis still down"
    down = stack.load.wait_for("redis still down", 6)
    # Both kinds of key get a clear 503 envelope, quickly: nothing can be admitted safely without the quota store.
    assert {o.key for o in down} == {"master", "alice"}
    assert {(o.status, o.code) for o in down} <= {(503, "quota_store_unavailable"),
                                                  (503, "service_unavailable")}, down
    assert max(o.seconds for o in down) < 10, down
    # ... and each of those calls has its usage record, with the reason (written to PostgreSQL, which is up).
    assert wait_recorded(stack.postgres, [o.request_id for o in down if o.request_id]) == len(down)

    stack.redis.start()
    stack.load.phase = "redis back"
    status, body = stack.wait_ready(True)
    assert status == 200 and body["cache"] == "ok", body
    back = stack.load.wait_for("redis back", 8)
    assert [o.status for o in back[-4:]] == [200] * 4, back


def test_losing_the_broker_makes_readiness_503_while_requests_go_on(stack: Stack) -> None:
    stack.broker.stop()
    stack.load.phase = "broker down"
    status, body = stack.wait_ready(False)
    assert status == 503 and body["broker"].startswith("error"), body
    assert body["db"] == "ok" and body["cache"] == "ok", body
    # The request path never talks to the broker: apps are served all along.
    assert all(o.status == 200 for o in stack.load.wait_for("broker down", 4)), stack.load.during("broker down")

    stack.broker.start()
    status, body = stack.wait_ready(True)
    assert status == 200 and body["broker"] == "ok", body


def test_losing_postgres_serves_from_memory_and_the_portal_recovers_when_it_returns(stack: Stack) -> None:
    stack.load.phase = "before postgres outage"
    stack.load.wait_for("before postgres outage", 4)  # both keys are held in the cache by now
    stack.postgres.stop()
    stack.load.phase = "postgres down"
    status, body = stack.wait_ready(False)
    assert status == 503 and body["db"].startswith("error"), body
    assert body["cache"] == "ok" and body["broker"] == "ok", body

    # The catalog is in memory and the keys in the cache: requests are still served. Even when the catalog is
    # told to reload meanwhile (as after a Redis restart, which loses its version, or an edit made elsewhere).
    cache = redis.Redis.from_url(stack.redis.url(0))
    cache.set(f"portal:1:{catalog.VERSION_KEY}", 987_654)  # the portal's cache key (default prefix, version 1)
    cache.close()
    time.sleep(settings.CATALOG_REFRESH_SECONDS * 3)
    down = stack.load.wait_for("postgres down", 8)
    assert [o.status for o in down] == [200] * len(down), down
    assert {o.key for o in down} == {"master", "alice"}

    stack.postgres.start()
    stack.load.phase = "postgres back"
    status, body = stack.wait_ready(True)
    assert status == 200 and body["db"] == "ok", body
    assert all(o.status == 200 for o in stack.load.wait_for("postgres back", 4))

    # The usage of the calls served during the outage was kept in memory and written once it came back.
    ids = [o.request_id for o in down if o.request_id]
    assert wait_recorded(stack.postgres, ids, timeout=40) == len(ids)
