"""A clean shutdown (SIGTERM to gunicorn) writes the usage records still buffered in its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings

from tests import processes
from tests.conftest import free_port
from tracking.models import UsageRecord

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_to_gunicorn_writes_every_buffered_record(deployment: Any, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": processes.test_database_url(),
        "LITELLM_MASTER_KEY": settings.MASTER_KEY,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        # Nothing is written during the test: only the shutdown can write the records.
        "USAGE_FLUSH_SECONDS": "3600",
        "USAGE_FLUSH_BATCH": "100000",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "portal.asgi:application", "-c", "deploy/gunicorn.conf.py"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.2)

        def one(i: int) -> str:
            response = httpx.post(
                f"{url}/v1/chat/completions", timeout=30,
                headers={"Authorization": f"Bearer {settings.MASTER_KEY}"},
                json={"model": "test-model", "messages": [{"role": "user", "content": f"hi {i}"}],
                      "stream": i % 3 == 0},
            )
            assert response.status_code == 200
            return response.headers["x-request-id"]

        with ThreadPoolExecutor(8) as pool:
            request_ids = set(pool.map(one, range(40)))
        assert UsageRecord.objects.count() == 0  # all still buffered in the workers

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == request_ids
    assert UsageRecord.objects.count() == 40
