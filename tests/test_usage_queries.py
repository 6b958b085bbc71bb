"""Small read and parse helpers of the usage app: today's use per key, and user-supplied tags."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.utils import timezone

from tracking import tags, usage
from tracking.models import UsageRecord


def add(key_id: int | None, tokens: int | None, created: dt.datetime | None = None) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4().hex, created=created or timezone.now(), endpoint="chat.completions", status=200,
        ok=True, key_id=key_id, total_tokens=tokens,
    )


def test_today_by_key_counts_requests_and_tokens_since_midnight(db: Any) -> None:
    add(1, 30)
    add(1, None)
    add(2, 5)
    add(1, 100, created=usage.start_of_today() - dt.timedelta(minutes=1))  # yesterday
    add(3, 7)  # a key that was not asked for

    assert usage.usage_today_by_key([1, 2, 4]) == {1: {"requests": 2, "tokens": 30}, 2: {"requests": 1, "tokens": 5}}


def test_the_tags_header_takes_pairs_or_a_json_object() -> None:
    assert tags.parse_header("team=data, run = 7,novalue") == {"team": "data", "run": "7"}
    assert tags.parse_header('{"team": "data", "n": 3, "deep": {"x": 1}}') == {"team": "data", "n": "3"}
    assert tags.parse_header("{not json") == {}
    assert tags.parse_header("") == {}


def test_tags_are_bounded_in_number_and_size() -> None:
    many = tags.clean({f"k{i}": "v" * 1000 for i in range(100)})

    assert len(many) == tags.MAX_TAGS
    assert all(len(v) == tags.MAX_VALUE for v in many.values())


def test_later_tag_sources_win() -> None:
    merged = tags.merge({"team": "key", "a": "1"}, {"team": "header", "b": "2"}, {"metadata": {"team": "body"}})

    assert merged == {"team": "body", "a": "1", "b": "2"}
