"""Helpers several test files share: usage records written in the background, and named SSE events."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from tracking import recorder
from tracking.models import UsageRecord


def wait_for_records(count: int, timeout: float = 10.0, **filters: Any) -> list[UsageRecord]:
    """Records are written by a background thread: wait until `count` exist (the caller checks there are no
    more)."""
    deadline = time.monotonic() + timeout
    while True:
        recorder.flush()
        rows = list(UsageRecord.objects.filter(**filters).order_by("created", "id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def named_events(url: str, headers: dict[str, str], body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a raw stream with named events (Anthropic's, the Responses API's), as the wire
    carries them."""
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = []
    for frame in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events
