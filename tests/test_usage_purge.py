"""purge_old_usage keeps the usage table bounded: it deletes what is older than the retention, nothing else."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.utils import timezone

from tracking import tasks
from tracking.models import UsageRecord


def record(age: dt.timedelta) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex, created=timezone.now() - age, endpoint="chat.completions", status=200, ok=True
    )


def test_it_removes_only_records_older_than_the_retention(db: Any, settings: Any) -> None:
    settings.USAGE_RETENTION_DAYS = 30
    too_old = record(dt.timedelta(days=30, minutes=1))
    kept = [record(dt.timedelta(days=29, hours=23)), record(dt.timedelta(minutes=1))]

    assert tasks.purge_old_usage() == 1

    assert not UsageRecord.objects.filter(pk=too_old.pk).exists()
    assert set(UsageRecord.objects.values_list("pk", flat=True)) == {r.pk for r in kept}


def test_the_default_retention_is_90_days(db: Any) -> None:
    from django.conf import settings

    assert settings.USAGE_RETENTION_DAYS == 90
    record(dt.timedelta(days=89))
    record(dt.timedelta(days=91))

    assert tasks.purge_old_usage() == 1
    assert UsageRecord.objects.count() == 1


def test_it_deletes_in_batches_until_nothing_old_is_left(db: Any) -> None:
    for _ in range(7):
        record(dt.timedelta(days=100))
    fresh = record(dt.timedelta(days=1))

    assert UsageRecord.objects.purge_older_than(90, batch=3) == 7
    assert list(UsageRecord.objects.all()) == [fresh]
