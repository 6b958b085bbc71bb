"""A real `celery -A portal worker` process runs the tasks, through the configured broker.

With REDIS_URL set (CI's PostgreSQL + Redis pass) the broker is Redis; without it, the embedded default
(kombu's filesystem transport under ./data/celery). Each test run uses its own queue name, so parallel
runs on one machine never take each other's messages.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from django.conf import settings
from mlflow import MlflowClient

from gateway import tasks as gateway_tasks
from tests import processes
from tests.mlflow_server import MlflowServer
from tracking import recorder, tasks
from tracking.models import UsageRecord

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    def __init__(self, queue: str, log: Path, **env: str) -> None:
        self.queue = queue
        self.log = log
        self.env = {**os.environ, "DATABASE_URL": processes.test_database_url(), "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo", "-Q", self.queue,
                 "--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        self.wait_for_log("ready.", timeout=90)
        return self

    def wait_for_log(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            content = self.log.read_text(errors="replace")
            if text in content:
                return content
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker log has no {text!r}:\n{content[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def worker(mlflow_server: MlflowServer, django_db_setup: Any, tmp_path_factory: Any) -> Iterator[Worker]:
    """One worker for the module (it takes seconds to start), on a queue of its own."""
    w = Worker(f"portal-test-{uuid.uuid4().hex[:10]}", tmp_path_factory.mktemp("celery") / "worker.log",
               MLFLOW_TRACKING_URI=mlflow_server.url, MLFLOW_EXPERIMENT_NAME=f"portal-worker-{uuid.uuid4().hex[:8]}")
    yield w.start()
    w.stop()


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_the_broker_is_redis_when_redis_url_is_set_and_files_otherwise() -> None:
    if settings.REDIS_URL:
        assert settings.CELERY_BROKER_URL == settings.REDIS_URL
    else:
        assert settings.CELERY_BROKER_URL == "filesystem://"
        assert Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]).is_dir()


def test_a_worker_exports_usage_to_mlflow(worker: Worker, client: openai.OpenAI, deployment: Any) -> None:
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "Hi"}])
    recorder.flush()
    [record] = UsageRecord.objects.all()

    tasks.export_usage_to_mlflow.apply_async(queue=worker.queue)

    eventually(lambda: UsageRecord.objects.filter(exported_at__isnull=False).count() == 1)
    worker.wait_for_log("export_usage_to_mlflow")
    mlflow = MlflowClient(worker.env["MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name(worker.env["MLFLOW_EXPERIMENT_NAME"])
    [trace] = mlflow.search_traces(locations=[experiment.experiment_id])
    assert trace.info.client_request_id == record.request_id


def test_a_worker_resets_daily_counters_and_purges_old_usage(worker: Worker, transactional_db: Any) -> None:
    from gateway.models import DailyCounter

    long_ago = dt.date.today() - dt.timedelta(days=120)
    DailyCounter.objects.create(key="deployment:1:rpd", day=long_ago, value=7)
    DailyCounter.objects.create(key="deployment:1:rpd", day=dt.date.today(), value=3)
    too_old = dt.datetime.now(dt.UTC) - dt.timedelta(days=settings.USAGE_RETENTION_DAYS + 1)
    old = UsageRecord.objects.create(
        request_id=uuid.uuid4().hex, created=too_old, endpoint="chat.completions", status=200, ok=True
    )

    gateway_tasks.reset_daily_counters.apply_async(queue=worker.queue)
    tasks.purge_old_usage.apply_async(queue=worker.queue)

    eventually(lambda: not DailyCounter.objects.filter(day=long_ago).exists())
    eventually(lambda: not UsageRecord.objects.filter(pk=old.pk).exists())
    assert DailyCounter.objects.get(day=dt.date.today()).value == 3
    log = worker.wait_for_log("purge_old_usage")
    assert "reset_daily_counters" in log and "succeeded" in log
