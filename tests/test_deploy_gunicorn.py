"""The portal as production starts it: gunicorn with deploy/gunicorn.conf.py, and `manage.py prepare`.

Both run as subprocesses on the test database, like a container would.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.nginx_helpers import ROOT, Gunicorn, Nginx, make_certificates, portal_env, requires_nginx

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def gunicorn(transactional_db, tmp_path):
    """One gunicorn portal; stopped before the test database is flushed (it holds connections)."""
    server = Gunicorn(tmp_path / "portal", FORWARDED_ALLOW_IPS="127.0.0.1").start().wait()
    yield server
    server.stop()


def recorded_ips(request_ids: list[str], timeout: float = 15) -> list[str]:
    from tracking.models import UsageRecord

    deadline = time.monotonic() + timeout
    while True:
        rows = dict(UsageRecord.objects.filter(request_id__in=request_ids).values_list("request_id", "client_ip"))
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return [rows.get(request_id, "") for request_id in request_ids]
        time.sleep(0.1)


@requires_nginx
def test_behind_nginx_the_portal_records_the_real_client_address(deployment, gunicorn, master_key, tmp_path):
    ca = make_certificates(tmp_path / "certs")
    nginx = Nginx(tmp_path / "nginx", [gunicorn.address], tmp_path / "certs").start()
    body = {"model": "test-model", "messages": HELLO}
    forged = {"authorization": f"Bearer {master_key}", "x-forwarded-for": "203.0.113.9", "x-real-ip": "203.0.113.9"}
    try:
        with nginx.client(ca, source_ip="127.0.0.31") as client:
            via_nginx = client.post("/v1/chat/completions", json=body, headers=forged)
        # A client that reaches the portal directly, not from Nginx's address: its header is not believed.
        direct_transport = httpx.HTTPTransport(local_address="127.0.0.32")
        with httpx.Client(base_url=f"http://{gunicorn.address}", transport=direct_transport) as client:
            direct = client.post("/v1/chat/completions", json=body, headers=forged)
    finally:
        nginx.stop()

    assert via_nginx.status_code == direct.status_code == 200, gunicorn.output()[-2000:]
    ids = [via_nginx.headers["x-request-id"], direct.headers["x-request-id"]]
    assert recorded_ips(ids) == ["127.0.0.31", "127.0.0.32"]


# --- prepare: replicas starting together ---------------------------------------------------------------


def start_prepare(tmp_path: Path) -> subprocess.Popen:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = portal_env(tmp_path, 0, PORTAL_CONFIG=str(tmp_path / "absent.yaml"))
    return subprocess.Popen([sys.executable, "manage.py", "prepare"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(predicate, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"prepare ended ({process.returncode}) without waiting:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("prepare never queued for the lock")
        time.sleep(0.1)


def test_prepare_waits_while_another_replica_prepares(transactional_db, tmp_path):
    """A second `prepare` queues behind the first instead of migrating at the same time."""
    from portal.management.commands.prepare import PREPARE_LOCK_KEY

    if connection.vendor == "postgresql":
        # The first replica, holding the advisory lock on its own connection.
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [PREPARE_LOCK_KEY])

        def queued() -> bool:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                return cursor.fetchone()[0] > 0

        def release() -> None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [PREPARE_LOCK_KEY])
    else:
        lock_file = open(f"{connection.settings_dict['NAME']}.prepare-lock", "w")
        fcntl.flock(lock_file, fcntl.LOCK_EX)

        def queued() -> bool:
            # A blocked flock() shows in /proc/locks as "N: -> FLOCK ADVISORY WRITE <pid> ...".
            waiting = [line.split() for line in Path("/proc/locks").read_text().splitlines() if " -> " in line]
            return any(str(process.pid) in fields for fields in waiting)

        def release() -> None:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            lock_file.close()

    process = start_prepare(tmp_path)
    try:
        wait_until(queued, process)
        assert process.poll() is None
        release()
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
