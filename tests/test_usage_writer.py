"""The usage writer's batches: each record once, and a record the database refuses never blocks the others."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection

from tracking import recorder
from tracking.events import UsageEvent
from tracking.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


def a_call(request_id: str, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {"endpoint": "chat.completions", "model": "test-model", "status": 200,
                              "prompt_tokens": 3, "completion_tokens": 5, "latency_ms": 10.0}
    return UsageEvent(request_id=request_id, started_at=time.time(), **{**values, **fields})


def write(*events: UsageEvent) -> None:
    for event in events:
        recorder.recorder.pending.append(event)
    recorder.flush()


def test_a_batch_retried_after_an_ambiguous_failure_writes_each_record_once() -> None:
    write(a_call("req-1"), a_call("req-2"))
    # The database took the first batch but its answer was lost: the same records come again with new ones.
    write(a_call("req-1"), a_call("req-2"), a_call("req-3"))
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == ["req-1", "req-2", "req-3"]


def test_records_keep_their_values_through_the_batch_write() -> None:
    write(a_call("req-tagged", tags={"team": "search"}, client_ip="10.0.0.7", streamed=True))
    row = UsageRecord.objects.get(request_id="req-tagged")
    assert (row.tags, row.client_ip, row.streamed, row.total_tokens) == ({"team": "search"}, "10.0.0.7", True, 8)
    assert row.ended is not None and row.ended > row.created


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite stores any integer; PostgreSQL refuses")
def test_a_record_the_database_refuses_is_dropped_and_the_rest_are_written() -> None:
    started = time.monotonic()
    write(a_call("req-ok-1"), a_call("req-too-big", prompt_tokens=2**40), a_call("req-ok-2"))
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == ["req-ok-1", "req-ok-2"]
    assert time.monotonic() - started < 10


def test_a_flush_writes_what_was_recorded_before_it_and_ends_while_calls_keep_coming() -> None:
    """Under steady traffic the writer must not chase every call that arrives during its write: it would write
    a handful of records per transaction and never rest. The calls that came meanwhile wait for the next flush."""
    import threading

    for n in range(3):
        recorder.recorder.pending.append(a_call(f"req-before-{n}"))
    stop = threading.Event()

    def keep_calling() -> None:
        n = 0
        while not stop.is_set() and n < 100_000:
            recorder.recorder.pending.append(a_call(f"req-during-{n}"))
            n += 1
            time.sleep(0.0005)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        written = recorder.flush()  # the three, and what the caller added before the flush began (a few at most)
    finally:
        stop.set()
        caller.join()
    assert 3 <= written <= 20
    ids = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert len(ids) == written and {f"req-before-{n}" for n in range(3)} <= ids
    assert recorder.recorder.pending  # the calls that came during the write wait for the next flush
    recorder.recorder.pending.clear()


def test_a_record_built_for_the_writer_is_the_one_the_models_constructor_builds() -> None:
    import datetime as dt

    values = {"request_id": "req-same", "created": dt.datetime.now(dt.UTC), "endpoint": "chat.completions",
              "key_id": 7, "status": 200, "ok": True, "prompt_tokens": 3}
    fast, plain = UsageRecord.unsaved(**values), UsageRecord(**values)
    fields = [f.attname for f in UsageRecord._meta.concrete_fields]
    assert [getattr(fast, name) for name in fields] == [getattr(plain, name) for name in fields]
    assert fast.tags == {} and fast.tags is not UsageRecord.unsaved(**values).tags  # its own dict, as a default
    assert fast._state.adding and fast._state.db is None
    fast.save()
    assert UsageRecord.objects.get(request_id="req-same").prompt_tokens == 3
