"""Usage records to MLflow: one trace per request, and daily aggregates per model as run metrics.

MLflow's tracing API is best-effort (a failed upload is only logged), so an export is confirmed by reading
the traces back by client request id (= our request id) before records are marked exported. Records of a
batch MLflow did not confirm are released and retried later; a trace that did arrive is never logged
again, because each batch first looks up which request ids MLflow already has.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate

from tracking.models import ModelUsageRun, UsageRecord

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Tags we set; user tags may not overwrite them.
OWN_PREFIXES = ("portal.", "mlflow.")
DAILY_METRICS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
                 "latency_p50_ms", "latency_p95_ms")


class MlflowUnavailable(Exception):
    """MLflow could not be reached or did not take the data; the records wait for the next try."""


# --- connection ---------------------------------------------------------------------------------------------

_experiment_ids: dict[tuple[str, str], str] = {}


def client() -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    uri = settings.MLFLOW_TRACKING_URI
    if mlflow.get_tracking_uri() != uri:
        # Also resets MLflow's tracer, whose exporter is bound to the URI it was created with.
        mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    cache_key = (settings.MLFLOW_TRACKING_URI, name)
    if cache_key in _experiment_ids:
        return _experiment_ids[cache_key]
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        try:
            eid = mlflow_client.create_experiment(name, artifact_location=artifact_location(name))
        except MlflowException:
            # Another worker created it between our lookup and our create.
            found = mlflow_client.get_experiment_by_name(name)
            if found is None:
                raise
            eid = found.experiment_id
    else:
        eid = found.experiment_id
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(eid)
    _experiment_ids[cache_key] = eid
    return eid


def trace_url(record: UsageRecord) -> str:
    """The record's trace in the MLflow UI (MLFLOW_UI_URL); "" before it is exported. The UI addresses
    experiments by id, which is looked up (once per name) from the experiment name the record keeps."""
    if not record.mlflow_trace_id:
        return ""
    eid = experiment_id(client(), record.mlflow_experiment or record.experiment_name)
    # The trace drawer's parameter was renamed between MLflow 2 and 3 UIs; both are given.
    trace = record.mlflow_trace_id
    return (f"{settings.MLFLOW_UI_URL}/#/experiments/{eid}/traces"
            f"?selectedEvaluationId={trace}&selectedTraceId={trace}")


def artifact_location(name: str) -> str | None:
    root = settings.MLFLOW_ARTIFACT_ROOT
    return f"{root.rstrip('/')}/{re.sub(r'[^A-Za-z0-9._-]', '_', name)}" if root else None


# --- traces -------------------------------------------------------------------------------------------------


def export_pending(batch_size: int | None = None, max_batches: int = 50) -> int:
    """Export unexported records in claimed batches; returns how many were confirmed in MLflow.

    Raises MlflowUnavailable when MLflow is down or lost part of a batch (the rest waits, claims released).
    """
    batch_size = batch_size or settings.MLFLOW_EXPORT_BATCH
    exported = 0
    for _ in range(max_batches):
        token, records = UsageRecord.objects.claim_for_export(batch_size)
        if not records:
            break
        try:
            exported += export_batch(token, records)
        finally:
            UsageRecord.objects.release(token)
    return exported


def export_batch(token: str, records: list[UsageRecord]) -> int:
    try:
        mlflow_client = client()
        groups: dict[str, list[UsageRecord]] = defaultdict(list)
        names: dict[str, str] = {}
        for record in records:
            eid = experiment_id(mlflow_client, record.experiment_name)
            groups[eid].append(record)
            names[record.request_id] = record.experiment_name
        found: dict[str, str] = {}
        for eid, group in groups.items():
            already = traces_by_request_id(mlflow_client, eid, [r.request_id for r in group])
            found.update(already)
            for record in group:
                if record.request_id not in already:
                    log_trace(record, eid)
        flush_traces()
        for eid, group in groups.items():
            missing = [r.request_id for r in group if r.request_id not in found]
            if missing:
                found.update(traces_by_request_id(mlflow_client, eid, missing))
    except MlflowUnavailable:
        raise
    except Exception as e:
        raise MlflowUnavailable(f"MLflow at {settings.MLFLOW_TRACKING_URI} failed: {e}") from e
    done = UsageRecord.objects.mark_exported(token, found, names)
    if done < len(records):
        raise MlflowUnavailable(f"MLflow confirmed {done} of {len(records)} traces; the others will be retried")
    return done


def traces_by_request_id(mlflow_client: MlflowClient, eid: str, request_ids: list[str]) -> dict[str, str]:
    """{our request id: MLflow trace id} of the traces MLflow already holds."""
    out: dict[str, str] = {}
    for chunk in _chunks(request_ids, 100):
        quoted = ", ".join(f"'{rid}'" for rid in chunk)  # request ids are hex: nothing to escape
        page_token = None
        while True:
            page = mlflow_client.search_traces(
                locations=[eid], filter_string=f"trace.client_request_id IN ({quoted})",
                max_results=200, include_spans=False, page_token=page_token,
            )
            for trace in page:
                if trace.info.client_request_id:
                    out.setdefault(trace.info.client_request_id, trace.info.trace_id)
            page_token = page.token
            if not page_token:
                break
    return out


def flush_traces() -> None:
    import mlflow

    mlflow.flush_trace_async_logging()


def log_trace(record: UsageRecord, eid: str) -> None:
    """One trace, one span, with the request's own start and end times."""
    import mlflow
    from mlflow.entities import SpanType
    from mlflow.tracing.constant import SpanAttributeKey, TraceMetadataKey
    from mlflow.tracing.provider import with_active_span

    start_ns = to_ns(record.created)
    end_ns = to_ns(record.ended) if record.ended else start_ns
    span_type = {
        "chat.completions": SpanType.CHAT_MODEL, "messages": SpanType.CHAT_MODEL, "responses": SpanType.CHAT_MODEL,
        "embeddings": SpanType.EMBEDDING,
    }.get(record.endpoint, SpanType.LLM)
    attributes: dict[str, Any] = {
        SpanAttributeKey.MODEL: record.upstream_model or record.model,
        SpanAttributeKey.MODEL_PROVIDER: record.provider,
        "portal.model": record.model,
        "portal.status": record.status,
        "portal.streamed": record.streamed,
        "portal.attempts": record.attempts,
        "portal.latency_ms": record.latency_ms,
        "portal.ttft_ms": record.ttft_ms,
        "portal.tokens_counted": record.tokens_counted,
        "portal.client_disconnected": record.client_disconnected,
    }
    if record.cost_usd is not None:
        attributes["portal.cost_usd"] = float(record.cost_usd)
    if record.list_cost_usd is not None:
        attributes["portal.list_cost_usd"] = float(record.list_cost_usd)
    if record.total_tokens is not None:
        attributes[SpanAttributeKey.CHAT_USAGE] = {
            "input_tokens": record.prompt_tokens or 0,
            "output_tokens": record.completion_tokens or 0,
            "total_tokens": record.total_tokens,
        }
    metadata = {}
    if who := record.username or record.key_name:
        metadata[TraceMetadataKey.TRACE_USER] = who
    if session := record.tags.get("session_id"):
        metadata[TraceMetadataKey.TRACE_SESSION] = str(session)
    span = mlflow.start_span_no_context(
        record.model or record.endpoint,
        span_type=span_type,
        inputs=inputs_of(record),
        attributes=attributes,
        tags=trace_tags(record),
        metadata=metadata,
        experiment_id=eid,
        start_time_ns=start_ns,
    )
    with with_active_span(span):
        mlflow.update_current_trace(
            client_request_id=record.request_id,
            request_preview=f"{record.endpoint} {record.model}",
            response_preview=_response_preview(record),
        )
    if record.error_code and not record.ok:
        attributes_error = {"portal.error_code": record.error_code, "portal.error_message": record.error_message}
        span.set_attributes(attributes_error)
    span.end(outputs=outputs_of(record), status="OK" if record.ok else "ERROR", end_time_ns=end_ns)


def to_ns(moment: dt.datetime) -> int:
    """Nanoseconds since the epoch, in integers (a float would lose the microseconds)."""
    return (moment - EPOCH) // dt.timedelta(microseconds=1) * 1000


def trace_tags(record: UsageRecord) -> dict[str, str]:
    tags = {
        name: str(value)
        for name, value in (record.tags or {}).items()
        if not str(name).startswith(OWN_PREFIXES)
    }
    tags.update({
        "portal.key": record.key_name,
        "portal.user": record.username,
        "portal.model": record.model,
        "portal.provider": record.provider,
        "portal.status": str(record.status),
        "portal.endpoint": record.endpoint,
    })
    if record.key_id is not None:
        tags["portal.key_id"] = str(record.key_id)
    if record.error_code:
        tags["portal.error_code"] = record.error_code
    return {k: v for k, v in tags.items() if v != ""}


def inputs_of(record: UsageRecord) -> Any:
    if record.request_body:
        return _parsed(record.request_body)
    return {"model": record.model, "endpoint": record.endpoint, "stream": record.streamed,
            "body": "not kept (enable a body logging rule to keep it)"}


def outputs_of(record: UsageRecord) -> Any:
    if record.response_body:
        return _parsed(record.response_body)
    summary: dict[str, Any] = {"status": record.status, "prompt_tokens": record.prompt_tokens,
                               "completion_tokens": record.completion_tokens}
    if record.error_code:
        summary["error"] = {"code": record.error_code, "message": record.error_message}
    return summary


def _parsed(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # cut at USAGE_BODY_MAX_BYTES: shown as the text it is


def _response_preview(record: UsageRecord) -> str:
    if record.error_code:
        return f"{record.status} {record.error_code}"
    return f"{record.status} ({record.total_tokens or 0} tokens)"


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- daily aggregates ---------------------------------------------------------------------------------------


def daily_aggregates(model: str, first: dt.date, last: dt.date) -> dict[dt.date, dict[str, float]]:
    """Per day from `first` to `last` (UTC days, inclusive): counts, tokens and latency percentiles."""
    start = dt.datetime.combine(first, dt.time(), dt.UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC)
    rows = UsageRecord.objects.filter(model=model, created__gte=start, created__lt=end)
    days: dict[dt.date, dict[str, float]] = {}
    day = first
    while day <= last:
        days[day] = dict.fromkeys(DAILY_METRICS, 0.0)
        day += dt.timedelta(days=1)
    totals = (
        rows.annotate(day=TruncDate("created", tzinfo=dt.UTC)).values("day")
        .annotate(requests=Count("id"), errors=Count("id", filter=Q(ok=False)), prompt=Sum("prompt_tokens"),
                  completion=Sum("completion_tokens"), total=Sum("total_tokens"))
    )
    for row in totals:
        days[row["day"]].update(
            requests=row["requests"], errors=row["errors"], prompt_tokens=row["prompt"] or 0,
            completion_tokens=row["completion"] or 0, total_tokens=row["total"] or 0,
        )
    latencies: dict[dt.date, list[float]] = defaultdict(list)
    for created, latency in rows.filter(latency_ms__isnull=False).values_list("created", "latency_ms"):
        latencies[created.astimezone(dt.UTC).date()].append(latency)
    for day, values in latencies.items():
        days[day]["latency_p50_ms"] = percentile(values, 50)
        days[day]["latency_p95_ms"] = percentile(values, 95)
    return days


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the value below which pct% of the requests fall)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(int(-(-pct * len(ordered) // 100)), 1)  # ceil without floats
    return float(ordered[rank - 1])


def log_daily_metrics(today: dt.date | None = None) -> int:
    """Log each model's completed days (up to yesterday) not logged yet; returns how many days were logged."""
    from mlflow.entities import Metric

    today = today or dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    end = dt.datetime.combine(today, dt.time(), dt.UTC)
    models = UsageRecord.objects.filter(created__lt=end).exclude(model="").values_list("model", flat=True)
    logged = 0
    for model in sorted(set(models)):
        run, _ = ModelUsageRun.objects.get_or_create(model=model)
        if run.last_day is not None and run.last_day >= yesterday:
            continue
        if not run.claim():
            continue
        try:
            first = _first_day(model, run.last_day)
            days = daily_aggregates(model, first, yesterday)
            mlflow_client = client()
            run_id = run.run_id or _create_run(mlflow_client, model)
            metrics = [
                Metric(name, value, timestamp=to_ns(dt.datetime.combine(day, dt.time(), dt.UTC)) // 1_000_000,
                       step=(day - EPOCH.date()).days)
                for day, values in days.items()
                for name, value in values.items()
            ]
            for i in range(0, len(metrics), 900):
                mlflow_client.log_batch(run_id, metrics=metrics[i : i + 900])
        except Exception as e:
            run.release()
            raise MlflowUnavailable(f"could not log daily usage of {model}: {e}") from e
        run.release(run_id=run_id, last_day=yesterday)
        logged += len(days)
    return logged


def _first_day(model: str, last_logged: dt.date | None) -> dt.date:
    if last_logged is not None:
        return last_logged + dt.timedelta(days=1)
    first = UsageRecord.objects.filter(model=model).order_by("created").values_list("created", flat=True).first()
    assert first is not None
    return first.astimezone(dt.UTC).date()


def _create_run(mlflow_client: MlflowClient, model: str) -> str:
    eid = experiment_id(mlflow_client, settings.MLFLOW_EXPERIMENT_NAME)
    run = mlflow_client.create_run(
        eid, run_name=f"daily usage: {model}", tags={"portal.model": model, "portal.kind": "daily-usage"}
    )
    return str(run.info.run_id)
