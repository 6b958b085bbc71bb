"""Configuration comes from the environment; a bad value stops the start, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def run_setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    environ.update({"PORTAL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "portal.settings", **env})
    code = "import django; django.setup(); from django.conf import settings; print(settings.MASTER_KEY)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    "name, value",
    [("PORT", "forty"), ("DEBUG", "maybe"), ("DATABASE_URL", "mysql://x/y"), ("UPSTREAM_TIMEOUT", "soon"),
     ("MAX_REQUEST_BODY_BYTES", "big"), ("QUOTA_LEASE_SECONDS", "2"), ("QUOTA_LEASE_SECONDS", "-1")],
)
def test_a_bad_value_fails_at_start_naming_the_variable(tmp_path, name, value):
    result = run_setup(tmp_path, **{name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr


def test_production_requires_the_master_key(tmp_path):
    result = run_setup(tmp_path, DEBUG="false", SECRET_KEY="x" * 50, LITELLM_MASTER_KEY="")
    assert result.returncode != 0
    assert "LITELLM_MASTER_KEY" in result.stderr


def test_development_generates_a_master_key_once_and_keeps_it(tmp_path):
    first = run_setup(tmp_path, DEBUG="true", LITELLM_MASTER_KEY="")
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert key.startswith("sk-")
    assert key in first.stderr  # printed once, when generated
    second = run_setup(tmp_path, DEBUG="true", LITELLM_MASTER_KEY="")
    assert second.stdout.strip() == key
    assert key not in second.stderr


def test_secret_key_can_come_from_a_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("file-secret-" + "y" * 40)
    code = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    environ = {**os.environ, "SECRET_KEY_FILE": str(secret), "PORTAL_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "file-secret-" + "y" * 40


def test_readiness_is_503_when_the_database_is_unreachable(tmp_path):
    port = free_port()
    dead_db = free_port()
    environ = {
        **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        "PORTAL_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://nobody@127.0.0.1:{dead_db}/nothing?connect_timeout=2",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=environ,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=10)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert response.status_code == 503
        assert response.json()["db"].startswith("error")
        assert httpx.get(f"http://127.0.0.1:{port}/health/liveliness").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=10)
