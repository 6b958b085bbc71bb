"""Usage records become MLflow traces on a real MLflow tracking server, exactly once, even across outages."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import Any

import openai
import pytest
from django.utils import timezone
from mlflow import MlflowClient
from mlflow.tracing.constant import SpanAttributeKey

from tests.mlflow_server import MlflowServer
from tests.mock_upstream import Behaviour
from tracking import export, recorder
from tracking.models import CLAIM_TIMEOUT, ModelUsageRun, UsageRecord


@pytest.fixture
def mlflow_settings(mlflow_server: MlflowServer, settings: Any) -> MlflowServer:
    settings.MLFLOW_TRACKING_URI = mlflow_server.url
    settings.MLFLOW_ARTIFACT_ROOT = ""  # the server's own artifact root
    # Each test its own experiment, so it reads back only its own traces.
    settings.MLFLOW_EXPERIMENT_NAME = f"portal-test-{uuid.uuid4().hex[:8]}"
    return mlflow_server


@pytest.fixture
def mlflow(mlflow_settings: MlflowServer) -> MlflowClient:
    return MlflowClient(mlflow_settings.url)


@pytest.fixture(autouse=True)
def no_records(transactional_db: Any) -> None:
    recorder.flush()
    UsageRecord.objects.all().delete()


def settled_records(count: int, timeout: float = 10) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while True:
        recorder.flush()
        rows = list(UsageRecord.objects.order_by("created", "id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def traces_in(mlflow: MlflowClient, experiment: str) -> list[Any]:
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return list(mlflow.search_traces(locations=[found.experiment_id], max_results=500))


def ms(moment: dt.datetime) -> int:
    return export.to_ns(moment) // 1_000_000


def test_each_request_becomes_a_trace_with_its_times_usage_and_tags(
    client: openai.OpenAI, upstream: Any, deployment: Any, mlflow: MlflowClient, settings: Any
) -> None:
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"x-portal-tags": "team=data"},
    )
    upstream.behaviour = Behaviour(chunk_delay=0.02, chunks=4)
    for _ in client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hello"}], stream=True
    ):
        pass
    upstream.behaviour = Behaviour(status=500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "Hello"}])
    plain, streamed, failed = settled_records(3)

    assert export.export_pending() == 3

    traces = {t.info.client_request_id: t for t in traces_in(mlflow, settings.MLFLOW_EXPERIMENT_NAME)}
    assert set(traces) == {plain.request_id, streamed.request_id, failed.request_id}
    for record in (plain, streamed, failed):
        trace = traces[record.request_id]
        record.refresh_from_db()
        assert record.exported_at is not None and record.mlflow_trace_id == trace.info.trace_id
        # The request's own start and end, not the export's.
        assert trace.info.request_time == ms(record.created)
        assert abs(trace.info.execution_duration - (ms(record.ended) - ms(record.created))) <= 1
        [span] = trace.data.spans
        assert span.start_time_ns == export.to_ns(record.created)
        assert span.end_time_ns == export.to_ns(record.ended)
        assert span.span_type == "CHAT_MODEL"
        assert trace.info.tags["portal.model"] == "test-model"
        assert trace.info.tags["portal.provider"] == "mock"
        assert trace.info.tags["portal.key"] == "master"
        assert trace.info.tags["portal.status"] == str(record.status)
    for record in (plain, streamed):
        trace = traces[record.request_id]
        usage = {"input_tokens": record.prompt_tokens, "output_tokens": record.completion_tokens,
                 "total_tokens": record.total_tokens}
        assert trace.data.spans[0].attributes[SpanAttributeKey.CHAT_USAGE] == usage
        assert trace.info.token_usage == usage
        assert trace.info.state == "OK"
    assert streamed.completion_tokens == 4
    assert traces[plain.request_id].info.tags["team"] == "data"
    assert traces[failed.request_id].info.state == "ERROR"
    assert traces[failed.request_id].info.tags["portal.status"] == "502"
    # Bodies were not kept: the trace carries a summary.
    assert traces[plain.request_id].data.spans[0].inputs["body"].startswith("not kept")


def test_kept_bodies_are_the_trace_inputs_and_outputs(
    client: openai.OpenAI, deployment: Any, mlflow: MlflowClient, settings: Any
) -> None:
    from tracking.models import BodyLoggingRule

    BodyLoggingRule.objects.create(model="test-model")
    recorder.recorder.forget_rules()
    completion = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "Hi"}])
    settled_records(1)

    export.export_pending()

    [trace] = traces_in(mlflow, settings.MLFLOW_EXPERIMENT_NAME)
    span = trace.data.spans[0]
    assert span.inputs["messages"] == [{"role": "user", "content": "Hi"}]
    assert span.outputs["choices"][0]["message"]["content"] == completion.choices[0].message.content


def test_a_request_tag_routes_its_trace_to_another_experiment(
    client: openai.OpenAI, deployment: Any, mlflow: MlflowClient, settings: Any
) -> None:
    evaluation = f"eval-{uuid.uuid4().hex[:8]}"
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Q1"}], metadata={"mlflow_experiment": evaluation}
    )
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Q2"}],
        extra_headers={"x-mlflow-experiment": evaluation},
    )
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "other"}])
    first, second, other = settled_records(3)

    assert export.export_pending() == 3

    routed = {t.info.client_request_id for t in traces_in(mlflow, evaluation)}
    default = {t.info.client_request_id for t in traces_in(mlflow, settings.MLFLOW_EXPERIMENT_NAME)}
    assert routed == {first.request_id, second.request_id}
    assert default == {other.request_id}
    first.refresh_from_db()
    assert first.mlflow_experiment == evaluation


def test_exporting_twice_logs_no_duplicates(
    client: openai.OpenAI, deployment: Any, mlflow: MlflowClient, settings: Any
) -> None:
    for _ in range(2):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "Hi"}])
    settled_records(2)

    assert export.export_pending() == 2
    assert export.export_pending() == 0
    # As if a worker died after MLflow took the trace but before the record was marked exported.
    UsageRecord.objects.update(exported_at=None, mlflow_trace_id="")
    assert export.export_pending() == 2

    traces = traces_in(mlflow, settings.MLFLOW_EXPERIMENT_NAME)
    assert len(traces) == 2
    assert len({t.info.client_request_id for t in traces}) == 2


def test_records_wait_while_mlflow_is_down_and_arrive_after_it_restarts(
    client: openai.OpenAI, deployment: Any, mlflow: MlflowClient, mlflow_settings: MlflowServer,
    settings: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "Hi"}])
    [record] = settled_records(1)

    mlflow_settings.stop()
    try:
        with pytest.raises(export.MlflowUnavailable):
            export.export_pending()
        record.refresh_from_db()
        # Not exported, and not left claimed: the next run takes it.
        assert record.exported_at is None and record.export_claim == ""
    finally:
        mlflow_settings.start()

    assert export.export_pending() == 1
    [trace] = traces_in(mlflow, settings.MLFLOW_EXPERIMENT_NAME)
    assert trace.info.client_request_id == record.request_id
    assert trace.info.request_time == ms(record.created)


def make_records(count: int, **fields: Any) -> list[UsageRecord]:
    values = {"created": timezone.now(), "endpoint": "chat.completions", "model": "test-model", "status": 200,
              "ok": True, **fields}
    return UsageRecord.objects.bulk_create(UsageRecord(request_id=uuid.uuid4().hex, **values) for _ in range(count))


def test_two_exporters_never_claim_the_same_record(transactional_db: Any) -> None:
    make_records(40)
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        from django.db import connection

        barrier.wait()
        mine: list[int] = []
        while True:
            _, rows = UsageRecord.objects.claim_for_export(7)
            if not rows:
                break
            mine += [r.id for r in rows]
        claimed.append(mine)
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    every = [i for mine in claimed for i in mine]
    assert len(every) == len(set(every)) == 40


def test_an_abandoned_claim_is_taken_again_after_the_timeout(transactional_db: Any) -> None:
    make_records(3)
    _, first = UsageRecord.objects.claim_for_export(10)
    assert len(first) == 3
    assert UsageRecord.objects.claim_for_export(10)[1] == []

    UsageRecord.objects.update(export_claimed_at=timezone.now() - CLAIM_TIMEOUT - dt.timedelta(seconds=1))
    assert len(UsageRecord.objects.claim_for_export(10)[1]) == 3


def test_daily_aggregates_are_logged_once_as_run_metrics(mlflow: MlflowClient, transactional_db: Any) -> None:
    today = timezone.now().astimezone(dt.UTC).date()
    day1 = dt.datetime.combine(today - dt.timedelta(days=3), dt.time(10), dt.UTC)
    day3 = dt.datetime.combine(today - dt.timedelta(days=1), dt.time(23, 30), dt.UTC)
    make_records(3, created=day1, model="m-daily", prompt_tokens=10, completion_tokens=5, total_tokens=15,
                 latency_ms=100.0)
    make_records(1, created=day1, model="m-daily", ok=False, status=502, latency_ms=900.0)
    make_records(2, created=day3, model="m-daily", prompt_tokens=1, completion_tokens=1, total_tokens=2,
                 latency_ms=50.0)
    make_records(5, created=timezone.now(), model="m-daily")  # today: not complete, not logged

    assert export.log_daily_metrics(today) == 3  # three days: one of them without traffic
    run = ModelUsageRun.objects.get(model="m-daily")
    assert run.last_day == today - dt.timedelta(days=1) and run.run_id

    def history(name: str) -> dict[int, float]:
        return {m.step: m.value for m in mlflow.get_metric_history(run.run_id, name)}

    step1 = (day1.date() - dt.date(1970, 1, 1)).days
    assert history("requests") == {step1: 4, step1 + 1: 0, step1 + 2: 2}
    assert history("errors") == {step1: 1, step1 + 1: 0, step1 + 2: 0}
    assert history("total_tokens") == {step1: 45, step1 + 1: 0, step1 + 2: 4}
    assert history("latency_p50_ms")[step1] == 100.0
    assert history("latency_p95_ms")[step1] == 900.0
    assert mlflow.get_run(run.run_id).data.tags["portal.model"] == "m-daily"

    assert export.log_daily_metrics(today) == 0
    assert len(mlflow.get_metric_history(run.run_id, "requests")) == 3
