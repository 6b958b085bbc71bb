"""`manage.py prepare` creates or updates the UI_USERNAME / UI_PASSWORD superuser, as LiteLLM's UI login did."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client


@pytest.fixture
def prepare(db, settings, tmp_path, monkeypatch):
    settings.STATIC_ROOT = tmp_path / "static"
    settings.PORTAL_CONFIG = str(tmp_path / "no-config.yaml")
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

    def run(username: str = "admin", password: str = "first-password-1") -> None:
        monkeypatch.setenv("UI_USERNAME", username)
        monkeypatch.setenv("UI_PASSWORD", password)
        call_command("prepare", stdout=io.StringIO())

    return run


def can_log_in(username: str, password: str) -> bool:
    response = Client().post("/admin/login/", {"username": username, "password": password, "next": "/admin/"})
    return response.status_code == 302


def test_it_creates_the_superuser_who_can_log_in_to_the_admin(prepare):
    prepare()
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser and user.is_staff and user.is_active
    assert can_log_in("admin", "first-password-1")


def test_running_it_again_changes_nothing(prepare):
    prepare()
    before = get_user_model().objects.get(username="admin").password
    prepare()
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert get_user_model().objects.get(username="admin").password == before


def test_a_changed_password_in_the_env_is_applied(prepare):
    prepare(password="first-password-1")
    prepare(password="second-password-2")
    assert can_log_in("admin", "second-password-2")
    assert not can_log_in("admin", "first-password-1")


def test_an_existing_user_is_made_superuser(prepare):
    get_user_model().objects.create_user("ops", password="whatever-1")
    prepare(username="ops", password="whatever-2")
    user = get_user_model().objects.get(username="ops")
    assert user.is_superuser and user.is_staff


def test_without_both_variables_no_user_is_created(prepare, monkeypatch):
    monkeypatch.delenv("UI_PASSWORD", raising=False)
    monkeypatch.setenv("UI_USERNAME", "admin")
    call_command("prepare", stdout=io.StringIO())
    assert not get_user_model().objects.filter(username="admin").exists()
