"""The durable daily ledger: what daily and monthly windows counted, written behind to DailyCounter rows.

The fast store (Redis or in-process) holds the live counts. Their daily and monthly increments are also
collected here and written to the database in batches, off the request path; when the fast store has no
value for a window (a restart, a Redis that lost its data), it is seeded from these rows, so a restart never
hands out a fresh day's quota.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from gateway import clock, db
from gateway.models import DailyCounter

log = logging.getLogger(__name__)


class Ledger:
    """Collects daily increments and writes them to DailyCounter in batches, off the request path."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, dt.date], int] = {}
        self.lock = threading.Lock()
        self.task: asyncio.Task[None] | None = None

    def add(self, entries: list[tuple[str, dt.date, int]]) -> None:
        """Add (key, day, delta) entries: one lock for all of a request's daily counters."""
        with self.lock:
            for key, day, delta in entries:
                if delta:
                    self.pending[(key, day)] = self.pending.get((key, day), 0) + delta
        if self.task is None or self.task.done():
            self._ensure_task()

    def unflushed(self, key: str, day: dt.date) -> int:
        with self.lock:
            return self.pending.get((key, day), 0)

    def durable(self, key: str, day: dt.date) -> int:
        """The window's count as far as anyone knows: written to the database, plus what waits to be (sync)."""
        return durable_value(key, day) + self.unflushed(key, day)

    def _ensure_task(self) -> None:
        if self.task is None or self.task.done():
            try:
                self.task = asyncio.get_running_loop().create_task(self._run())
            except RuntimeError:
                pass  # no loop (management command): flush() is called explicitly

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(settings.QUOTA_FLUSH_SECONDS)
            try:
                await sync_to_async(db.managed(self.flush))()
            except Exception:
                log.exception("could not write daily quota counters; will retry")

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, {}
        try:
            for (key, day), delta in batch.items():
                _add_to_counter(key, day, delta)
        except Exception:
            with self.lock:  # put it back: nothing is lost while the DB is away
                for k, v in batch.items():
                    self.pending[k] = self.pending.get(k, 0) + v
            raise


def _add_to_counter(key: str, day: dt.date, delta: int) -> None:
    if DailyCounter.objects.filter(key=key, day=day).update(value=F("value") + delta):
        return
    try:
        with transaction.atomic():
            DailyCounter.objects.create(key=key, day=day, value=delta)
    except IntegrityError:  # another process created it first
        DailyCounter.objects.filter(key=key, day=day).update(value=F("value") + delta)


def durable_value(key: str, day: dt.date) -> int:
    row = DailyCounter.objects.filter(key=key, day=day).values_list("value", flat=True).first()
    return int(row or 0)


def reset_daily_counters(keep_days: int = 7) -> int:
    """Drop durable counters of windows long past (live windows roll over by themselves at midnight)."""
    cutoff = dt.date.fromtimestamp(clock.now()) - dt.timedelta(days=keep_days + 31)
    # A total budget's counter is one window that never rolls over (dated limits.TOTAL_START): kept.
    deleted, _ = DailyCounter.objects.filter(day__lt=cutoff).exclude(key__endswith=":usd_total").delete()
    return deleted


ledger = Ledger()
