"""Shared fixtures: a real mock upstream, a real portal server, and catalog helpers.

The portal runs under uvicorn in a background thread of the test process, on
the test database, so tests talk to it over real HTTP with the openai SDK.
Tests that call it need the `transactional_db` fixture (rows must be committed
for the server's own connections to see them).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from django.conf import settings
from django.core.cache import cache

from tests.mlflow_server import mlflow_server  # noqa: F401  (a session fixture: the real MLflow server)
from tests.mock_gemini import MockGemini
from tests.mock_github import MockGitHub
from tests.mock_upstream import MockUpstream
from tests.personas import personas  # noqa: F401  (alice, bob, charlie and an operator)
from tests.quota_redis import scope  # noqa: F401  (a name for a test's own quota counters in Redis)

pytest_plugins = ["tests.secret_guard"]  # every log record of the session, checked for secrets


def pytest_configure(config: Any) -> None:
    refuse_a_developers_env_file()
    remove_stale_sqlite_files()


def refuse_a_developers_env_file() -> None:
    """A developer's own .env in the checkout (the README's quick start puts provider keys there) would change
    what the tests see, and pytest-django loads the settings before any conftest could stop it."""
    if settings.ENV_FILE is not None and str(settings.ENV_FILE) != os.devnull:
        pytest.exit(f"the settings read {settings.ENV_FILE}: run the tests with PORTAL_ENV_FILE=/dev/null "
                    "(`make test` does), so your .env does not reach them", returncode=4)


def remove_stale_sqlite_files() -> None:
    """Remove SQLite test files of finished runs: pytest-django deletes the file but not its WAL side
    files, and a stale WAL corrupts the next database of that name."""
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("sqlite3"):
        return
    for path in Path(db["TEST"]["NAME"]).parent.glob("test-portal-*.sqlite3*"):
        pid = path.name.split("-")[2].split(".")[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
            path.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving portal.asgi in a thread; stopped at the end of the session."""

    def __init__(self) -> None:
        import uvicorn

        from portal.asgi import application
        from portal.workers import HttpToolsProtocol

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The production protocol (its writes coalesced), so the whole suite runs through it.
        config = uvicorn.Config(application, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                http=HttpToolsProtocol)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("portal test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[MockUpstream]:
    server = MockUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server: MockUpstream) -> MockUpstream:
    upstream_server.reset()
    return upstream_server


@pytest.fixture(scope="session")
def gemini_server() -> Iterator[MockGemini]:
    server = MockGemini().start()
    yield server
    server.stop()


@pytest.fixture
def gemini(gemini_server: MockGemini) -> MockGemini:
    """The mock of Google's native Gemini API (tests/mock_gemini.py), with a clean slate."""
    gemini_server.reset()
    return gemini_server


@pytest.fixture(scope="session")
def github_server() -> Iterator[MockGitHub]:
    server = MockGitHub().start()
    yield server
    server.stop()


@pytest.fixture
def github(github_server: MockGitHub, settings: Any, tmp_path: Path) -> Iterator[MockGitHub]:
    """The mock GitHub (device login + Copilot API), with the portal pointed at it and an empty token dir."""
    from gateway.upstreams import copilot

    github_server.reset()
    settings.GITHUB_COPILOT_GITHUB_URL = github_server.url
    settings.GITHUB_COPILOT_API_URL = github_server.url
    settings.GITHUB_COPILOT_TOKEN_DIR = tmp_path / "github_copilot"  # never the developer's real token dir
    copilot.forget_all()
    yield github_server
    copilot.forget_all()


@pytest.fixture(scope="session")
def live_portal(django_db_setup: Any, django_db_blocker: Any) -> Iterator[LiveServer]:
    server = LiveServer().start()
    yield server
    server.stop()
    with django_db_blocker.unblock():
        end_other_sessions()


def end_other_sessions() -> None:
    """End the test database's other PostgreSQL sessions: those of this process's background threads (the usage
    writer's, the server's), which are kept open for the process's life and would otherwise make the test
    database's teardown fail ("being accessed by other users") and leave it behind."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Each test starts with empty counters and a catalog reloaded from its own rows."""
    from accounts.throttle import key_failures
    from gateway import catalog, clock, quota, router
    from tracking import recorder

    cache.clear()
    # Body rules and prices are re-read by the usage writer every few seconds: not a previous test's.
    recorder.recorder.forget_rules()
    recorder.recorder.prices_loaded = -recorder.PRICES_REFRESH_SECONDS
    quota.store().clear()
    router._failures.clear()
    key_failures.reset()
    clock.reset()
    catalog.invalidate()
    yield
    clock.reset()
    catalog.invalidate()


@pytest.fixture
def portal(live_portal: LiveServer, transactional_db: Any) -> Iterator[LiveServer]:
    from tracking import recorder

    yield live_portal
    # The test's usage records land in the test's own database, not in the next test's (or a dropped one).
    recorder.flush()


@pytest.fixture
def master_key() -> str:
    return str(settings.MASTER_KEY)


@pytest.fixture
def client(portal: LiveServer, master_key: str) -> openai.OpenAI:
    """The official SDK, as an app would use it; our errors must map to its exception classes."""
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=master_key, max_retries=0, timeout=30)


def make_provider(upstream: MockUpstream, name: str = "mock", kind: str = "openai_compatible", **fields: Any) -> Any:
    from gateway.models import Provider

    provider = Provider(name=name, kind=kind, api_base=upstream.base_url, **fields)
    provider.set_secret("sk-upstream-secret-value-123")
    provider.save()
    return provider


def make_deployment(provider: Any, public_name: str = "test-model", upstream_model: str = "mock-1",
                    **fields: Any) -> Any:
    from gateway.models import Deployment

    return Deployment.objects.create(
        public_name=public_name, provider=provider, upstream_model=upstream_model, **fields
    )


@pytest.fixture
def deployment(upstream: MockUpstream, transactional_db: Any) -> Any:
    """One public model, test-model, served by the mock upstream."""
    return make_deployment(make_provider(upstream))


@pytest.fixture(params=["passthrough", "litellm"])
def upstream_path(request: Any, settings: Any) -> str:
    """Run a conformance test once through each upstream path: same responses, errors and usage."""
    settings.PASSTHROUGH = request.param == "passthrough"
    return str(request.param)
