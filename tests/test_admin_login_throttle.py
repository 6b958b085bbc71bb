"""Failed logins are throttled per IP and per username (LOGIN_RATE), on the admin and the key page alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.personas import PASSWORD

RATE = 3


@pytest.fixture(autouse=True)
def login_rate(settings):
    # An hour's window: the tests below do not depend on when in the window they run.
    settings.LOGIN_RATE = f"{RATE}/h"


def attempt(url: str, username: str, password: str, ip: str = "10.0.0.1") -> int:
    return Client().post(url, {"username": username, "password": password}, REMOTE_ADDR=ip).status_code


@pytest.mark.parametrize("url", ["/admin/login/", "/keys/login/"])
def test_the_failure_after_the_limit_from_one_ip_is_refused(personas, url):
    assert [attempt(url, f"nobody{i}", "wrong") for i in range(RATE)] == [200] * RATE
    response = Client().post(url, {"username": "operator", "password": PASSWORD}, REMOTE_ADDR="10.0.0.1")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert b"Too many failed logins" in response.content
    # Another address is not affected.
    assert attempt(url, "operator", PASSWORD, ip="10.0.0.2") == 302


def test_one_username_is_throttled_across_addresses(personas):
    for i in range(RATE):
        assert attempt("/admin/login/", "Operator", "wrong", ip=f"10.0.1.{i}") == 200
    assert attempt("/admin/login/", "operator", PASSWORD, ip="10.0.2.1") == 429
    assert attempt("/admin/login/", "alice", "wrong", ip="10.0.2.1") == 200


def test_the_admin_and_the_key_page_share_the_count(personas):
    for _ in range(RATE - 1):
        attempt("/admin/login/", "alice", "wrong")
    attempt("/keys/login/", "alice", "wrong")
    assert attempt("/keys/login/", "alice", PASSWORD, ip="10.9.9.9") == 429
    assert attempt("/admin/login/", "bob", PASSWORD) == 429


def test_successful_logins_do_not_count(personas):
    for _ in range(RATE * 2):
        assert attempt("/keys/login/", "alice", PASSWORD) == 302
    assert attempt("/admin/login/", "operator", PASSWORD) == 302


def test_the_throttle_is_logged_without_the_password(personas, caplog):
    caplog.set_level("INFO", logger="accounts")
    for _ in range(RATE + 1):
        attempt("/admin/login/", "alice", "hunter2-wrong")
    assert "login throttled: user=alice ip=10.0.0.1" in caplog.text
    assert "hunter2-wrong" not in caplog.text


def test_a_malformed_login_rate_stops_the_start_naming_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"PORTAL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "portal.settings", "LOGIN_RATE": "lots"})
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env, text=True,
                            cwd=Path(__file__).resolve().parent.parent, capture_output=True, timeout=60)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "LOGIN_RATE" in result.stderr
