"""Celery tasks of the gateway (scheduled by CELERY_BEAT_SCHEDULE in portal/settings.py)."""

from __future__ import annotations

import logging

from celery import shared_task

from gateway import quota

log = logging.getLogger(__name__)


@shared_task
def reset_daily_counters() -> int:
    """Drop the quota's durable daily counters (gateway.models.DailyCounter) of days long past; live windows
    roll over at each provider's midnight in its time zone by themselves. Safe to run twice."""
    deleted = quota.reset_daily_counters()
    log.info("reset daily counters: %s old rows removed", deleted)
    return deleted
