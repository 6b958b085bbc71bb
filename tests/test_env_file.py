"""`.env` in the working directory (or PORTAL_ENV_FILE) is read by every entry point, under the real environment.

Each test starts the real entry point in a subprocess, in an empty directory holding only the file: `manage.py
prepare` (what `make run` runs first), the Celery app, gunicorn's configuration.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = "GEMINI_API_KEY=gem-from-file\nOPENROUTER_API_KEY='or-from-file'\nGITHUB_API_KEY=ghp-from-file\n"


def run_in(directory: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command in `directory`, with nothing of this test process's environment but PATH (so no key leaks in)."""
    base = {"PATH": os.environ["PATH"], "HOME": str(directory), "PYTHONPATH": str(ROOT),
            "PORTAL_DATA_DIR": str(directory / "data")}
    return subprocess.run(argv, cwd=directory, env={**base, **env}, capture_output=True, text=True, timeout=180,
                          check=False)


def prepare(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_in(directory, sys.executable, str(ROOT / "manage.py"), "prepare", **env)


def enabled_providers(directory: Path) -> dict[str, bool]:
    with sqlite3.connect(directory / "data" / "portal.sqlite3") as db:
        return {name: bool(enabled) for name, enabled in db.execute("SELECT name, enabled FROM gateway_provider")}


def test_the_start_path_enables_the_providers_whose_keys_are_only_in_the_env_file(tmp_path):
    (tmp_path / ".env").write_text(KEYS)
    done = prepare(tmp_path)
    assert done.returncode == 0, done.stderr
    providers = enabled_providers(tmp_path)
    assert providers["gemini"] and providers["openrouter"] and providers["github_models"]
    assert not providers["lm_studio"]
    assert "providers enabled: gemini, github_models, openrouter" in done.stdout
    assert "lm_studio: disabled, waiting for LM_STUDIO_API_BASE" in done.stdout
    assert f"environment file  {tmp_path / '.env'}" in done.stdout


def test_a_variable_set_in_the_real_environment_wins_over_the_file(tmp_path):
    (tmp_path / ".env").write_text(KEYS + "PORT=4555\n")
    done = prepare(tmp_path, GITHUB_API_KEY="", PORT="4666")
    assert done.returncode == 0, done.stderr
    assert not enabled_providers(tmp_path)["github_models"]
    assert "github_models: disabled, waiting for GITHUB_API_KEY" in done.stdout
    assert "http://localhost:4666/v1" in done.stdout


def test_portal_env_file_names_the_file_to_read(tmp_path):
    (tmp_path / "portal.env").write_text(KEYS)
    (tmp_path / ".env").write_text("GEMINI_API_KEY=\n")
    done = prepare(tmp_path, PORTAL_ENV_FILE=str(tmp_path / "portal.env"))
    assert done.returncode == 0, done.stderr
    assert enabled_providers(tmp_path)["gemini"]


def test_a_portal_env_file_that_does_not_exist_stops_the_start_naming_it(tmp_path):
    done = prepare(tmp_path, PORTAL_ENV_FILE=str(tmp_path / "typo.env"))
    assert done.returncode != 0
    assert f"PORTAL_ENV_FILE: no such file: {tmp_path / 'typo.env'}" in done.stderr
    assert not (tmp_path / "data" / "portal.sqlite3").exists()


def test_the_celery_worker_reads_the_env_file(tmp_path):
    (tmp_path / ".env").write_text("CELERY_BROKER_URL=memory://from-env-file\n")
    show = "from portal.celery import app; print(app.conf.broker_url)"
    done = run_in(tmp_path, sys.executable, "-c", show)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "memory://from-env-file"


def test_gunicorn_binds_the_port_of_the_env_file_unless_the_environment_sets_one(tmp_path):
    (tmp_path / ".env").write_text("PORT=4555\nWEB_CONCURRENCY=3\n")
    conf = str(ROOT / "deploy" / "gunicorn.conf.py")
    show = f"import runpy; c = runpy.run_path({conf!r}); print(c['bind'], c['workers'])"
    assert run_in(tmp_path, sys.executable, "-c", show).stdout.split() == ["0.0.0.0:4555", "3"]
    assert run_in(tmp_path, sys.executable, "-c", show, PORT="4666").stdout.split() == ["0.0.0.0:4666", "3"]


def test_make_run_evaluates_the_file_for_its_own_shell(tmp_path):
    (tmp_path / ".env").write_text("PORTAL_DATA_DIR=/srv/portal data\nGEMINI_API_KEY=it's\n")
    done = run_in(tmp_path, sys.executable, "-m", "portal.envfile", PORTAL_DATA_DIR="/set/by/env")
    assert done.returncode == 0, done.stderr
    shell = subprocess.run(["sh", "-c", done.stdout + 'printf "%s|%s" "$PORTAL_DATA_DIR" "$GEMINI_API_KEY"'],
                           capture_output=True, text=True, env={"PORTAL_DATA_DIR": "/set/by/env"}, check=True)
    assert shell.stdout == "/set/by/env|it's"


@pytest.mark.parametrize("value", ["", os.devnull])
def test_without_a_file_nothing_is_read(tmp_path, value):
    done = run_in(tmp_path, sys.executable, "-c", "from portal import envfile; print(envfile.load())",
                  **({"PORTAL_ENV_FILE": value} if value else {}))
    assert done.stdout.strip() == ("None" if not value else os.devnull)
