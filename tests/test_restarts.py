"""Restarts lose nothing: SIGTERM to gunicorn in the middle of a burst of streams, and a worker killed outright.

The portal runs as production runs it (gunicorn, 2 uvicorn workers, deploy/gunicorn.conf.py) on the test
database. Usage records and daily quota counts are only written at shutdown in the SIGTERM test (their flush
intervals are an hour), so what is in the database afterwards is exactly what the shutdown saved.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from django.conf import settings
from django.db.models import Sum

from gateway.models import DailyCounter
from tests.conftest import make_deployment, make_provider
from tests.mock_upstream import Behaviour, MockUpstream
from tests.processes import GunicornProcess
from tracking.models import UsageRecord

HELLO = [{"role": "user", "content": "hi"}]
GRACEFUL_TIMEOUT = 6


@dataclass
class StreamEnd:
    request_id: str
    status: int
    events: list[Any]  # parsed data events, "[DONE]" as is
    ended_at: float
    cut: str = ""  # the transport error, when the body did not end cleanly

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    @property
    def error(self) -> dict[str, Any] | None:
        last = self.events[-1] if self.events else None
        return last["error"] if isinstance(last, dict) and "error" in last else None


def open_stream(url: str, model: str, started: threading.Barrier, out: list[StreamEnd]) -> None:
    body = {"model": model, "messages": HELLO, "stream": True}
    headers = {"Authorization": f"Bearer {settings.MASTER_KEY}"}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                                           headers=headers) as response:
        end = StreamEnd(response.headers.get("x-request-id", ""), response.status_code, [], 0.0)
        lines = response.iter_lines()
        try:
            for line in lines:
                if line.startswith("data: "):
                    data = line[6:]
                    end.events.append(data if data == "[DONE]" else orjson.loads(data))
                    if len(end.events) == 2:
                        started.wait(timeout=30)  # every stream has its first content before the SIGTERM
        except httpx.HTTPError as e:
            end.cut = f"{type(e).__name__}: {e}"
        end.ended_at = time.monotonic()
        out.append(end)


def test_sigterm_mid_burst_ends_every_stream_properly_and_saves_usage_and_counters(
    upstream: MockUpstream, transactional_db: Any, tmp_path: Path
) -> None:
    provider = make_provider(upstream)
    make_deployment(provider, "short-model", "mock-short", rpd=1000)
    make_deployment(provider, "long-model", "mock-long", rpd=1000)
    # Short streams (about 2 s) finish within the graceful timeout; long ones (about 40 s) cannot.
    upstream.set_behaviour("mock-short", Behaviour(chunks=20, chunk_delay=0.1))
    upstream.set_behaviour("mock-long", Behaviour(chunks=80, chunk_delay=0.5))
    server = GunicornProcess(
        tmp_path / "gunicorn.log", LITELLM_MASTER_KEY=settings.MASTER_KEY, GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT),
        USAGE_FLUSH_SECONDS="3600", USAGE_FLUSH_BATCH="100000", QUOTA_FLUSH_SECONDS="3600",
        PORTAL_CONFIG=str(tmp_path / "absent.yaml"),
    )
    models = ["short-model"] * 8 + ["long-model"] * 4
    ends: list[StreamEnd] = []
    with server:
        started = threading.Barrier(len(models) + 1)
        threads = [threading.Thread(target=open_stream, args=(server.url, m, started, ends)) for m in models]
        for thread in threads:
            thread.start()
        started.wait(timeout=60)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        for thread in threads:
            thread.join(timeout=60)
        exit_code = server.proc.wait(timeout=60)
        stopped_after = time.monotonic() - sigterm_at

    log = server.output()[-3000:]
    assert exit_code == 0, log
    assert stopped_after < GRACEFUL_TIMEOUT + 3, log
    assert len(ends) == len(models) and all(end.status == 200 for end in ends)
    assert not [end.cut for end in ends if end.cut], log  # no stream is cut without a word
    short = [end for end in ends if len(end.events) and end.done and end.error is None]
    assert len(short) >= 8  # every short stream ran to [DONE]
    cut_short = [end for end in ends if end.error is not None]
    assert len(cut_short) == 4, [end.events[-2:] for end in ends]
    for end in cut_short:  # the long ones end with an error event, never a silent success
        assert end.error is not None and end.error["code"] == "server_shutting_down", end.error
        assert end.ended_at - sigterm_at < GRACEFUL_TIMEOUT + 1

    # Every call has its record (written by the shutdown: the flush interval is an hour), and the daily counts.
    records = dict(UsageRecord.objects.values_list("request_id", "error_code"))
    assert set(records) == {end.request_id for end in ends}, log
    assert sorted(records.values()).count("") == 8
    # Cut by the server, not left by their clients: the records say so.
    assert sorted(records.values()).count("server_shutting_down") == 4, records
    counted = DailyCounter.objects.aggregate(total=Sum("value"))["total"]
    assert counted == len(models)


def test_a_killed_worker_is_respawned_and_loses_only_what_it_had_in_flight(
    upstream: MockUpstream, transactional_db: Any, tmp_path: Path
) -> None:
    make_deployment(make_provider(upstream), "test-model", "mock-1", rpd=1000)
    server = GunicornProcess(tmp_path / "gunicorn.log", LITELLM_MASTER_KEY=settings.MASTER_KEY,
                             PORTAL_CONFIG=str(tmp_path / "absent.yaml"))
    headers = {"Authorization": f"Bearer {settings.MASTER_KEY}"}
    body = {"model": "test-model", "messages": HELLO}

    def ask(client: httpx.Client) -> httpx.Response:
        return client.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)

    with server, httpx.Client(timeout=30) as client:
        served = [ask(client) for _ in range(10)]
        assert [r.status_code for r in served] == [200] * 10
        time.sleep(settings.USAGE_FLUSH_SECONDS * 3)  # past the flush interval: these are in the database

        victim, survivor = server.worker_pids()
        os.kill(victim, signal.SIGKILL)
        # The other worker keeps answering while the master replaces the dead one.
        with httpx.Client(timeout=30) as fresh:
            during = [ask(fresh).status_code for _ in range(5)]
        deadline = time.monotonic() + 30
        while (len(server.worker_pids()) < 2 or victim in server.worker_pids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = server.worker_pids()
        assert len(workers) == 2 and victim not in workers and survivor in workers, server.output()[-2000:]
        with httpx.Client(timeout=30) as fresh:
            after = [ask(fresh).status_code for _ in range(10)]

    assert during == [200] * 5
    assert after == [200] * 10
    # What the killed worker had already flushed survives; nothing completed before the interval is lost.
    ids = [r.headers["x-request-id"] for r in served]
    assert UsageRecord.objects.filter(request_id__in=ids).count() == 10
