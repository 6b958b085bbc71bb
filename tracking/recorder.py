"""Hands each finished /v1 call to a background writer: no database round trip on the response path.

`record(call)` appends the Call to an in-process deque (thread-safe, O(1)). A daemon thread per worker
process wakes every USAGE_FLUSH_SECONDS, or as soon as USAGE_FLUSH_BATCH calls wait, turns the calls into
UsageRecord rows (tags, token counts, kept bodies) and writes them with one bulk INSERT per batch. A failed
write puts the batch back and is retried: nothing is lost while the database is away. A clean shutdown
(the ASGI lifespan's shutdown, which uvicorn runs when gunicorn sends SIGTERM, and atexit as a last
chance) writes what is still buffered.

A thread, not an asyncio task: the ORM is synchronous, the thread works whatever loop (or none) the call
finished on, and it survives gunicorn's fork because it is started lazily in the process that records.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from django.db import DataError, IntegrityError, connections, models, transaction

from tracking import tags as usage_tags

if TYPE_CHECKING:
    from gateway.calls import Call
    from gateway.pricing import DeploymentPrice
    from tracking.models import BodyLoggingRule, UsageRecord

log = logging.getLogger(__name__)

# Rules that keep bodies are re-read at most this often (seconds), by the writer thread, never per request.
RULES_REFRESH_SECONDS = 5.0
# Deployment prices likewise (and at once when a batch names a deployment not seen yet): a price changed in
# the admin applies to the calls recorded from then on, within this many seconds.
PRICES_REFRESH_SECONDS = 5.0


class Recorder:
    def __init__(self) -> None:
        self.pending: deque[Call] = deque()
        self.wake = threading.Event()
        self.start_lock = threading.Lock()
        # One writer at a time: when flush() returns, everything recorded before it is in the database.
        self.write_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.rules: list[BodyLoggingRule] = []
        self.rules_loaded = -RULES_REFRESH_SECONDS
        self.prices: dict[int, DeploymentPrice] = {}
        self.prices_loaded = -PRICES_REFRESH_SECONDS
        self.dropped = 0
        # Set by shutdown(): no time left to import LiteLLM (seconds) just to count tokens, see _count.
        self.closing = False

    # --- request path -----------------------------------------------------------------------------------

    def record(self, call: Call) -> None:
        self.pending.append(call)
        if len(self.pending) > settings.USAGE_BUFFER_MAX:
            # The database has been away so long that memory is at risk; shed the oldest, loudly.
            self.pending.popleft()
            self.dropped += 1
            log.error("usage buffer full (%s calls): dropped the oldest record", settings.USAGE_BUFFER_MAX)
        self._ensure_thread()
        if len(self.pending) >= settings.USAGE_FLUSH_BATCH:
            self.wake.set()

    def _ensure_thread(self) -> None:
        if self.pid == os.getpid() and self.thread is not None and self.thread.is_alive():
            return
        with self.start_lock:
            if self.pid == os.getpid() and self.thread is not None and self.thread.is_alive():
                return
            if self.pid != os.getpid():
                atexit.register(self.shutdown)
            self.pid = os.getpid()
            self.thread = threading.Thread(target=self._run, name="usage-recorder", daemon=True)
            self.thread.start()

    # --- writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = settings.USAGE_FLUSH_SECONDS
        while True:
            self.wake.wait(delay)
            self.wake.clear()
            try:
                self.flush()
                delay = settings.USAGE_FLUSH_SECONDS
            except Exception:
                delay = min(max(delay * 2, 1.0), 30.0)
                log.exception("could not write %s usage records; retrying in %.0f s", len(self.pending), delay)

    def flush(self) -> int:
        """Write every call recorded so far; returns how many. Safe to call from any thread."""
        written = 0
        with self.write_lock:
            try:
                while self.pending:
                    batch: list[Call] = []
                    while self.pending and len(batch) < settings.USAGE_FLUSH_BATCH:
                        batch.append(self.pending.popleft())
                    try:
                        self._write(batch)
                    except BaseException:
                        self.pending.extendleft(reversed(batch))  # back at the front, in order
                        raise
                    written += len(batch)
            finally:
                if threading.current_thread() is self.thread:
                    # The writer's own connection: closed between flushes, so an idle portal holds none.
                    # (Never another caller's: it may be inside a transaction.)
                    connections.close_all()
        return written

    def shutdown(self) -> None:
        """Write what is buffered before the process exits (lifespan shutdown, then atexit)."""
        if not self.pending:
            return
        self.closing = True
        try:
            count = self.flush()
            log.info("wrote %s buffered usage records at shutdown", count)
        except Exception as e:
            log.error("could not write %s usage records at shutdown: %s", len(self.pending), e)

    def _write(self, batch: list[Call]) -> None:
        from tracking.models import UsageRecord

        rules = self._body_rules()
        prices = self._prices(batch)
        rows = []
        for call in batch:
            try:
                rows.append(build_record(call, rules, prices))
            except Exception:
                # One malformed call must not block every record behind it.
                log.exception("could not build the usage record of %s; skipped", call.request_id)
        if _copy(rows):
            return
        # ignore_conflicts: a batch retried after an ambiguous failure must not fail on its own rows.
        try:
            UsageRecord.objects.bulk_create(rows, ignore_conflicts=True)
        except DataError:
            # A row the database refuses (not the database being away): put back and retried, it would hold
            # every record behind it forever. Write the batch row by row and drop only what is refused.
            for row in rows:
                try:
                    UsageRecord.objects.bulk_create([row], ignore_conflicts=True)
                except DataError:
                    log.exception("the database refused the usage record of %s; dropped", row.request_id)

    def _body_rules(self) -> list[BodyLoggingRule]:
        from tracking.models import BodyLoggingRule

        now = time.monotonic()
        if now - self.rules_loaded >= RULES_REFRESH_SECONDS:
            self.rules = list(BodyLoggingRule.objects.active())
            self.rules_loaded = now
        return self.rules

    def _prices(self, batch: list[Call]) -> dict[int, DeploymentPrice]:
        """{deployment id: its price}: one query every few seconds per worker, never one per record."""
        from gateway import pricing
        from gateway.models import Deployment

        now = time.monotonic()
        unseen = any(call.route is not None and call.route.id not in self.prices for call in batch)
        if unseen or now - self.prices_loaded >= PRICES_REFRESH_SECONDS:
            self.prices = {d.pk: pricing.for_deployment(d) for d in Deployment.objects.select_related("provider")}
            self.prices_loaded = now
        return self.prices

    def forget_rules(self) -> None:
        """Re-read the body rules on the next write (after the admin changed them, in this process)."""
        self.rules_loaded = -RULES_REFRESH_SECONDS


def _copy(rows: list[UsageRecord]) -> bool:
    """On PostgreSQL, COPY the batch in: per row a fraction of the CPU of an INSERT, whose values Django and
    psycopg quote one by one in Python (this runs in each web worker, beside the requests). False when the
    batch must go the INSERT way: another database, a row already there (a batch retried after an ambiguous
    failure) or one the database refuses (the INSERT path finds and drops it)."""
    from tracking.models import UsageRecord

    connection = connections[UsageRecord.objects.db]
    if connection.vendor != "postgresql" or not rows:
        return False
    fields = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
    try:
        # The raw psycopg cursor (Django has no COPY); its errors are turned into Django's.
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor, \
                connection.wrap_database_errors:
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                # Only JSON needs Django's adaptation; psycopg writes strings, numbers, booleans and aware
                # datetimes as they are (Django's per-field preparation was most of the cost per row).
                json = [i for i, f in enumerate(fields) if isinstance(f, models.JSONField)]
                names = [f.attname for f in fields]
                for row in rows:
                    values = [getattr(row, name) for name in names]
                    for i in json:
                        values[i] = fields[i].get_db_prep_save(values[i], connection)
                    copy.write_row(values)
    except (IntegrityError, DataError):
        return False
    return True


# --- turning a Call into a record ---------------------------------------------------------------------------


def build_record(call: Call, rules: list[BodyLoggingRule],
                 prices: dict[int, DeploymentPrice] | None = None) -> UsageRecord:
    from tracking.models import UsageRecord

    principal, route = call.principal, call.route
    started = call.started_at
    latency = call.latency_ms
    disconnected = call.client_disconnected
    record = UsageRecord(
        request_id=call.request_id,
        created=dt.datetime.fromtimestamp(started, dt.UTC),
        ended=dt.datetime.fromtimestamp(started + latency / 1000, dt.UTC) if latency is not None else None,
        endpoint=call.endpoint,
        key_id=principal.key_id if principal else None,
        key_name=principal.key_name if principal else "",
        user_id=principal.user_id if principal else None,
        username=principal.username if principal else "",
        model=call.model[:200],
        deployment_id=route.id if route else None,
        provider=route.provider_name if route else "",
        upstream_model=route.upstream_model[:300] if route else "",
        status=call.status,
        error_code=(call.error_code or "")[:64],
        error_message=call.error_message[:2000],
        ok=0 < call.status < 400 and call.error_code in (None, "", "client_disconnected"),
        streamed=call.streamed,
        client_disconnected=disconnected,
        attempts=call.attempts,
        latency_ms=latency,
        ttft_ms=call.ttft_ms,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        client_ip=call.client_ip[:45],
        tags=usage_tags.merge(principal.tags if principal else None, call.tags, call.request_body),
    )
    if route is not None and (call.status == 200 or disconnected):
        count_missing_tokens(record, call)
    record.total_tokens = _total(record.prompt_tokens, record.completion_tokens)
    price = prices.get(route.id) if prices and route is not None else None
    if price is not None:
        cost = price.cost(record.prompt_tokens, record.completion_tokens)
        record.cost_usd, record.list_cost_usd = cost.usd, cost.list_usd
    if any(rule.matches(record.model, record.key_id) for rule in rules):
        keep_bodies(record, call)
    return without_nul(record)


_NUL_FREE_FIELDS = ("model", "key_name", "username", "provider", "upstream_model", "error_code", "error_message",
                    "client_ip", "request_body", "response_body")


def without_nul(record: UsageRecord) -> UsageRecord:
    """PostgreSQL refuses NUL characters in text and JSON; clients can put them in a model name or a tag."""
    for name in _NUL_FREE_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str) and "\x00" in value:
            setattr(record, name, value.replace("\x00", ""))
    if any("\x00" in f"{k}{v}" for k, v in record.tags.items()):
        record.tags = {str(k).replace("\x00", ""): str(v).replace("\x00", "") for k, v in record.tags.items()}
    return record


def _total(prompt: int | None, completion: int | None) -> int | None:
    return None if prompt is None and completion is None else (prompt or 0) + (completion or 0)


def count_missing_tokens(record: UsageRecord, call: Call) -> None:
    """Count what the upstream did not report (no usage at all, or a stream the client left early).

    LiteLLM's token_counter (the model's tokenizer when LiteLLM knows it, else tiktoken's cl100k) runs
    here, in the writer thread, never on the event loop.
    """
    body = call.request_body if isinstance(call.request_body, dict) else {}
    model = call.route.litellm_model if call.route else record.model
    if record.prompt_tokens is None:
        if isinstance(body.get("messages"), list):
            record.prompt_tokens = _count(model, messages=body["messages"])
        elif body.get("input") is not None:
            text = body["input"] if isinstance(body["input"], str) else orjson.dumps(body["input"]).decode()
            record.prompt_tokens = _count(model, text=text)
        else:
            return
        record.tokens_counted = True
    if record.completion_tokens is None and (call.streamed or call.endpoint == "chat.completions"):
        text = "".join(call.stream_text) if call.streamed else _message_text(call.response_body)
        record.completion_tokens = _count(model, text=text) if text else 0
        record.tokens_counted = True


def _count(model: str, **kwargs: Any) -> int:
    try:
        if recorder.closing and "litellm" not in sys.modules:
            # Shutting down (gunicorn SIGKILLs at its graceful timeout): importing LiteLLM only to count the
            # tokens of a cut stream could cost the whole buffer; estimate instead.
            raise LookupError("no time to load a tokenizer")
        import litellm

        return int(litellm.token_counter(model=model, **kwargs))
    except Exception:
        # An unknown tokenizer must not lose the record: about four characters a token.
        size = len(kwargs["text"]) if "text" in kwargs else len(orjson.dumps(kwargs.get("messages")))
        return size // 4 + 1


def _message_text(response: Any) -> str:
    if not isinstance(response, dict):
        return ""
    parts = []
    for choice in response.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "".join(parts)


def keep_bodies(record: UsageRecord, call: Call) -> None:
    cap = settings.USAGE_BODY_MAX_BYTES
    response = call.response_body
    if call.streamed:
        response = {"streamed": True, "content": "".join(call.stream_text)}
    record.request_body, cut_request = _capped(call.request_body, cap)
    record.response_body, cut_response = _capped(response, cap)
    record.bodies_truncated = cut_request or cut_response


def _capped(value: Any, cap: int) -> tuple[str, bool]:
    if value is None:
        return "", False
    text = orjson.dumps(value, default=str).decode()
    if len(text.encode()) <= cap:
        return text, False
    return text.encode()[:cap].decode(errors="ignore"), True


recorder = Recorder()
record = recorder.record
flush = recorder.flush
shutdown = recorder.shutdown
