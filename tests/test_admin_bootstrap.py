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


def run_without_password() -> str:
    out = io.StringIO()
    call_command("prepare", stdout=out)
    return out.getvalue()


@pytest.fixture
def no_ui_password(prepare, settings, tmp_path, monkeypatch):
    settings.DATA_DIR = tmp_path / "data"
    monkeypatch.delenv("UI_PASSWORD", raising=False)
    monkeypatch.delenv("UI_USERNAME", raising=False)
    return settings.DATA_DIR / "admin_password"


def test_without_ui_password_the_first_start_creates_admin_with_a_generated_password(no_ui_password):
    output = run_without_password()
    username, password = no_ui_password.read_text().split()
    assert username == "admin"
    assert f"created the admin 'admin' with password\n    {password}\n" in output
    assert oct(no_ui_password.stat().st_mode & 0o777) == "0o600"
    assert can_log_in("admin", password)


def test_the_generated_password_is_printed_once(no_ui_password):
    first = run_without_password()
    password = no_ui_password.read_text().split()[1]
    second = run_without_password()
    assert password in first and password not in second
    assert f"(first login: see {no_ui_password})" in second
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_ui_username_alone_names_the_generated_admin(no_ui_password, monkeypatch):
    monkeypatch.setenv("UI_USERNAME", "boss")
    run_without_password()
    assert no_ui_password.read_text().split()[0] == "boss"
    assert get_user_model().objects.get(username="boss").is_superuser


def test_an_installation_that_has_a_superuser_gets_no_generated_one(no_ui_password):
    get_user_model().objects.create_superuser("ops", "", "ops-password-1")
    run_without_password()
    assert not no_ui_password.exists()
    assert list(get_user_model().objects.values_list("username", flat=True)) == ["ops"]
