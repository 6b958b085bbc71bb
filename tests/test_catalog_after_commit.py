"""Catalog changes reach the workers once committed, whichever way a row changes.

A worker that reloads its catalog while the change is still inside a transaction reads the old rows; it must
be told again after the commit, or it keeps them until the next change. Requests keep arriving while the
transaction is held open, so every worker does reload too early, as in production.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from gateway.models import Deployment, QuotaPool
from tests.conftest import make_deployment, make_provider
from tests.processes import GunicornProcess
from tests.quota_redis import needs_redis

HELLO = [{"role": "user", "content": "hi"}]
# How soon after the commit every worker must answer (the bound).
DEADLINE = settings.CATALOG_REFRESH_SECONDS + 1


def ask(url: str, key: str, model: str) -> int:
    # A new connection each time, so a multi-worker server spreads them over its workers.
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/v1/chat/completions", json={"model": model, "messages": HELLO},
                               headers={"Authorization": f"Bearer {key}"})
    return response.status_code


class Asker:
    """Asks for a model again and again in background threads, noting when each request was sent."""

    def __init__(self, url: str, key: str, model: str, threads: int = 4) -> None:
        self.url, self.key, self.model = url, key, model
        self.answers: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            self.answers.append((sent, ask(self.url, self.key, self.model)))

    def __enter__(self) -> Asker:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def sent_after(self, moment: float) -> list[int]:
        return [status for sent, status in self.answers if sent >= moment]


def held_open(change: Callable[[], Any], seconds: float = 2.0) -> float:
    """Make the change in a transaction held open for `seconds`; the monotonic time of the commit."""
    with transaction.atomic():
        change()
        time.sleep(seconds)
    return time.monotonic()


@pytest.fixture
def provider(upstream: Any, transactional_db: Any) -> Any:
    return make_provider(upstream)


def test_a_model_created_in_a_long_transaction_answers_soon_after_the_commit(portal, provider, master_key):
    with Asker(portal.url, master_key, "fresh-model") as asker:
        time.sleep(0.3)
        committed = held_open(lambda: make_deployment(provider, public_name="fresh-model"))
        time.sleep(DEADLINE + 1)
    assert 404 in asker.sent_after(0)  # it was asked for (and not there) while the transaction was open
    late = asker.sent_after(committed + DEADLINE)
    assert late and set(late) == {200}


def test_models_deleted_with_the_admins_bulk_action_are_gone_as_fast(portal, provider, master_key):
    doomed = [make_deployment(provider, public_name="doomed", upstream_model=f"m-{i}") for i in range(2)]
    assert ask(portal.url, master_key, "doomed") == 200
    operator = get_user_model().objects.create_superuser("root", "root@example.com", "pw-long-enough-123")
    browser = Client()
    browser.force_login(operator)
    with Asker(portal.url, master_key, "doomed") as asker:
        time.sleep(0.3)
        response = browser.post("/admin/gateway/deployment/", {
            "action": "delete_selected", "_selected_action": [d.pk for d in doomed], "post": "yes",
        })
        deleted = time.monotonic()
        time.sleep(DEADLINE + 1)
    assert response.status_code == 302
    assert not Deployment.objects.filter(public_name="doomed").exists()
    late = asker.sent_after(deleted + DEADLINE)
    assert late and set(late) == {404}


def test_a_queryset_update_in_a_command_reaches_the_workers(portal, provider, master_key):
    make_deployment(provider, public_name="switched")
    assert ask(portal.url, master_key, "switched") == 200
    # What a management command or a shell does: no save() is called.
    committed = held_open(lambda: Deployment.objects.filter(public_name="switched").update(enabled=False))
    time.sleep(DEADLINE)
    assert time.monotonic() >= committed + DEADLINE
    assert ask(portal.url, master_key, "switched") == 404


def test_deleting_a_quota_pool_lifts_its_limit_at_once(portal, provider, master_key):
    pool = QuotaPool.objects.create(name="shared", rpm=1)
    make_deployment(provider, public_name="pooled", pool=pool)
    assert ask(portal.url, master_key, "pooled") == 200
    assert ask(portal.url, master_key, "pooled") == 429
    # The deployment's row is not saved when its pool goes (the database sets pool to NULL).
    QuotaPool.objects.filter(pk=pool.pk).delete()
    time.sleep(DEADLINE)
    assert ask(portal.url, master_key, "pooled") == 200


@pytest.fixture
def two_workers(provider: Any, tmp_path: Path) -> Iterator[GunicornProcess]:
    with GunicornProcess(tmp_path / "gunicorn.log", workers=2) as server:
        yield server


def answers_of_each_worker(server: GunicornProcess, key: str, model: str, times: int = 6) -> list[set[int]]:
    """Stop all workers but one (SIGSTOP: it accepts no connection) and ask; each worker in turn."""
    seen = []
    pids = server.worker_pids()
    for pid in pids:
        others = [p for p in pids if p != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            seen.append({ask(server.url, key, model) for _ in range(times)})
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
    return seen


@needs_redis
def test_every_gunicorn_worker_answers_a_new_model_soon_after_the_commit(two_workers, provider, master_key):
    # Both workers know the catalog (without the model) before the change.
    assert answers_of_each_worker(two_workers, master_key, "fresh-model", times=2) == [{404}, {404}]
    with Asker(two_workers.url, master_key, "fresh-model", threads=6) as asker:
        time.sleep(0.3)
        committed = held_open(lambda: make_deployment(provider, public_name="fresh-model"))
        time.sleep(DEADLINE + 0.5)
    late = asker.sent_after(committed + DEADLINE)
    assert late and set(late) == {200}, two_workers.output()[-2000:]
    assert answers_of_each_worker(two_workers, master_key, "fresh-model") == [{200}, {200}]
