"""Hands each finished /v1 call to a background writer: no database round trip on the response path.

`record(event)` appends the UsageEvent (tracking.events: plain values the gateway builds when a call ends) to
an in-process deque (thread-safe, O(1)). A daemon thread per worker
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
import functools
import importlib.util
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

from tracking import services
from tracking import tags as usage_tags
from tracking.events import UsageEvent

if TYPE_CHECKING:
    from tracking.models import BodyLoggingRule, UsageRecord

log = logging.getLogger(__name__)

# Rules that keep bodies are re-read at most this often (seconds), by the writer thread, never per request.
RULES_REFRESH_SECONDS = 5.0
# Deployment prices likewise (and at once when a batch names a deployment not seen yet): a price changed in
# the admin applies to the calls recorded from then on, within this many seconds.
PRICES_REFRESH_SECONDS = 5.0
# The writer shares the GIL with the worker's event loop. Building and copying a batch is pure Python for tens of
# milliseconds; a thread waiting for the GIL gets it only after the switch interval (5 ms), so every request
# whose answer arrived meanwhile would wait that long. The writer lets go every this many rows instead.
GIL_SLICE = 16


class Recorder:
    def __init__(self) -> None:
        self.pending: deque[UsageEvent] = deque()
        self.wake = threading.Event()
        self.start_lock = threading.Lock()
        # One writer at a time: when flush() returns, everything recorded before it is in the database.
        self.write_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.rules: list[BodyLoggingRule] = []
        self.rules_loaded = -RULES_REFRESH_SECONDS
        self.prices: dict[int, Any] = {}
        self.prices_loaded = -PRICES_REFRESH_SECONDS
        self.dropped = 0
        # Set by shutdown(): no time left to import LiteLLM (seconds) just to count tokens, see _count.
        self.closing = False

    # --- request path -----------------------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        self.pending.append(event)
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
        written, failed = 0, True
        with self.write_lock:
            # What was recorded before this call, not what arrives while it writes: under steady traffic a
            # drain-until-empty loop never ends, and writes a handful of records per transaction.
            left = len(self.pending)
            try:
                while left > 0 and self.pending:
                    batch: list[UsageEvent] = []
                    while self.pending and len(batch) < min(left, settings.USAGE_FLUSH_BATCH):
                        batch.append(self.pending.popleft())
                    left -= len(batch)
                    try:
                        self._write(batch)
                    except BaseException:
                        self.pending.extendleft(reversed(batch))  # back at the front, in order
                        raise
                    written += len(batch)
                failed = False
            finally:
                if threading.current_thread() is self.thread and (failed or not written):
                    # The writer's own connection: kept while records keep coming (a new PostgreSQL connection
                    # every flush costs the server a process), closed by the first flush with nothing to write
                    # or one that failed, so an idle portal holds none. (Never another caller's: it may be
                    # inside a transaction.)
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

    def _write(self, batch: list[UsageEvent]) -> None:
        from tracking.models import UsageRecord

        rules = self._body_rules()
        rows = []
        prices = self._prices(batch)
        for n, event in enumerate(batch, 1):
            if n % GIL_SLICE == 0:
                time.sleep(0)  # see GIL_SLICE
            try:
                rows.append(build_record(event, rules, prices))
            except Exception:
                # One malformed event must not block every record behind it.
                log.exception("could not build the usage record of %s; skipped", event.request_id)
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

    def _prices(self, batch: list[UsageEvent]) -> dict[int, Any]:
        """{deployment id: its price (the gateway's, see tracking.services)}: one query every few seconds per
        worker, never one per record."""
        now = time.monotonic()
        unseen = any(e.deployment_id is not None and e.deployment_id not in self.prices for e in batch)
        if unseen or now - self.prices_loaded >= PRICES_REFRESH_SECONDS:
            self.prices = services.gateway.prices()
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
                for n, row in enumerate(rows, 1):
                    if n % GIL_SLICE == 0:
                        time.sleep(0)  # see GIL_SLICE
                    values = [getattr(row, name) for name in names]
                    for i in json:
                        values[i] = fields[i].get_db_prep_save(values[i], connection)
                    copy.write_row(values)
    except (IntegrityError, DataError):
        return False
    return True


# --- turning an event into a record ---------------------------------------------------------------------------


def build_record(event: UsageEvent, rules: list[BodyLoggingRule], prices: dict[int, Any] | None = None
                 ) -> UsageRecord:
    from tracking.models import UsageRecord

    started = event.started_at
    latency = event.latency_ms
    disconnected = event.client_disconnected
    record = UsageRecord.unsaved(
        request_id=event.request_id,
        created=dt.datetime.fromtimestamp(started, dt.UTC),
        ended=dt.datetime.fromtimestamp(started + latency / 1000, dt.UTC) if latency is not None else None,
        endpoint=event.endpoint,
        key_id=event.key_id,
        key_name=event.key_name,
        user_id=event.user_id,
        username=event.username,
        model=event.model[:200],
        deployment_id=event.deployment_id,
        provider=event.provider,
        upstream_model=event.upstream_model[:300],
        status=event.status,
        error_code=(event.error_code or "")[:64],
        error_message=event.error_message[:2000],
        ok=0 < event.status < 400 and event.error_code in (None, "", "client_disconnected"),
        streamed=event.streamed,
        client_disconnected=disconnected,
        attempts=event.attempts,
        latency_ms=latency,
        ttft_ms=event.ttft_ms,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        client_ip=event.client_ip[:45],
        tags=usage_tags.merge(event.key_tags, event.tags, event.request_body),
    )
    if event.routed and (event.status == 200 or disconnected):
        count_missing_tokens(record, event)
    record.total_tokens = _total(record.prompt_tokens, record.completion_tokens)
    price = prices.get(event.deployment_id) if prices and event.deployment_id is not None else None
    if price is not None:
        cost = price.cost(record.prompt_tokens, record.completion_tokens)
        record.cost_usd, record.list_cost_usd = cost.usd, cost.list_usd
    if any(rule.matches(record.model, record.key_id) for rule in rules):
        keep_bodies(record, event)
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


def count_missing_tokens(record: UsageRecord, event: UsageEvent) -> None:
    """Count what the upstream did not report (no usage at all, or a stream the client left early).

    LiteLLM's token_counter (the model's tokenizer when LiteLLM knows it, else tiktoken's cl100k) runs
    here, in the writer thread, never on the event loop.
    """
    body = event.request_body if isinstance(event.request_body, dict) else {}
    model = event.litellm_model or record.model
    if record.prompt_tokens is None:
        if isinstance(body.get("messages"), list):
            record.prompt_tokens = _count(model, messages=body["messages"])
        elif body.get("input") is not None:
            text = body["input"] if isinstance(body["input"], str) else orjson.dumps(body["input"]).decode()
            record.prompt_tokens = _count(model, text=text)
        else:
            return
        record.tokens_counted = True
    if record.completion_tokens is None and (event.streamed or event.endpoint == "chat.completions"):
        text = "".join(event.stream_text) if event.streamed else _message_text(event.response_body)
        record.completion_tokens = _count(model, text=text) if text else 0
        record.tokens_counted = True


def _count(model: str, **kwargs: Any) -> int:
    try:
        if "litellm" in sys.modules:
            # This worker serves LiteLLM-path deployments anyway: the model's own tokenizer when LiteLLM knows it.
            import litellm

            return int(litellm.token_counter(model=model, **kwargs))
        if recorder.closing:
            # Shutting down (gunicorn SIGKILLs at its graceful timeout): loading a tokenizer only to count the
            # tokens of a cut stream could cost the whole buffer; estimate instead.
            raise LookupError("no time to load a tokenizer")
        text = kwargs["text"] if "text" in kwargs else orjson.dumps(kwargs.get("messages")).decode()
        return len(_cl100k().encode(text, disallowed_special=()))
    except Exception:
        # An unknown tokenizer must not lose the record: about four characters a token.
        size = len(kwargs["text"]) if "text" in kwargs else len(orjson.dumps(kwargs.get("messages")))
        return size // 4 + 1


@functools.cache
def _cl100k() -> Any:
    """tiktoken's cl100k (what LiteLLM's token_counter falls back to), read from the copy LiteLLM ships, never
    downloaded. Without importing LiteLLM itself: a worker that only passes requests through would otherwise
    grow by ~150 MB (the whole SDK) the first time a client left a stream early; the encoding costs ~45 MB."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (spec := importlib.util.find_spec("litellm")):
        locations = list(spec.submodule_search_locations or ())
        if locations:
            os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(locations[0], "litellm_core_utils", "tokenizers")
    import tiktoken

    return tiktoken.get_encoding("cl100k_base")


def _message_text(response: Any) -> str:
    if not isinstance(response, dict):
        return ""
    parts = []
    for choice in response.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "".join(parts)


def keep_bodies(record: UsageRecord, event: UsageEvent) -> None:
    cap = settings.USAGE_BODY_MAX_BYTES
    response = event.response_body
    if event.streamed:
        response = {"streamed": True, "content": "".join(event.stream_text)}
    record.request_body, cut_request = _capped(event.request_body, cap)
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
