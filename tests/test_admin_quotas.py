"""Operators see each deployment's and pool's usage against its limits in the admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from gateway import quota
from gateway.catalog import deployment_limits
from tests.conftest import make_deployment, make_provider


@pytest.fixture
def operator_client(db):
    from django.test import Client

    User.objects.create_superuser("operator", "op@example.com", "pw-operator-123")
    browser = Client()
    browser.login(username="operator", password="pw-operator-123")
    return browser


def test_the_deployment_list_shows_usage_against_the_limits(operator_client, upstream, db):
    deployment = make_deployment(make_provider(upstream, reset_timezone="America/Los_Angeles"), rpm=10, rpd=50)
    from asgiref.sync import async_to_sync

    async_to_sync(quota.try_admit)(list(deployment_limits(deployment)), deployment.id, 10)
    response = operator_client.get("/admin/gateway/deployment/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "1/10 RPM" in page
    assert "1/50 RPD" in page
    assert "resets" in page


def test_the_pool_list_shows_its_usage(operator_client, db):
    from gateway.models import QuotaPool

    QuotaPool.objects.create(name="openrouter-free", rpd=200)
    response = operator_client.get("/admin/gateway/quotapool/")
    assert response.status_code == 200
    assert "0/200 RPD" in response.content.decode()


def test_the_key_list_shows_each_keys_usage_against_its_limits(operator_client, upstream, db):
    from asgiref.sync import async_to_sync

    from accounts.models import ApiKey
    from accounts.principal import KeyLimits

    key, _ = ApiKey.objects.issue(User.objects.get(username="operator"), "ci", limits=KeyLimits(rpm=5, rpd=100))
    async_to_sync(quota.try_admit)(quota.key_wide_limits(key.pk, key), None, 10)
    page = operator_client.get("/admin/accounts/apikey/").content.decode()
    assert "1/5 RPM" in page
    assert "1/100 RPD" in page
