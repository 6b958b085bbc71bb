"""Health endpoints need no key; readiness reports the database and the cache."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("path", ["/health/liveliness", "/health/liveness"])
def test_liveness_answers_without_a_key(portal, path):
    response = httpx.get(portal.url + path)
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_readiness_reports_db_and_cache(portal):
    response = httpx.get(portal.url + "/health/readiness")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["db"] == "ok"
    assert body["cache"] == "ok"
