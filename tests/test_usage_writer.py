"""The usage writer's batches: each record once, and a record the database refuses never blocks the others."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection

from gateway.api.calls import Call
from tracking import recorder
from tracking.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


def a_call(request_id: str, **fields: Any) -> Call:
    call = Call(request_id=request_id, endpoint="chat.completions", model="test-model", status=200,
                prompt_tokens=3, completion_tokens=5)
    call.ended = call.started + 0.01
    for name, value in fields.items():
        setattr(call, name, value)
    return call


def write(*calls: Call) -> None:
    for call in calls:
        recorder.recorder.pending.append(call)
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
