"""Celery tasks of the usage app (scheduled by CELERY_BEAT_SCHEDULE in portal/settings.py).

Each task is safe to run twice or concurrently: exports claim their rows, purges delete by age.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from tracking import export
from tracking.models import UsageRecord

log = logging.getLogger(__name__)


@shared_task(
    autoretry_for=(export.MlflowUnavailable,), retry_backoff=5, retry_backoff_max=600, retry_jitter=True,
    max_retries=8,
)
def export_usage_to_mlflow() -> int:
    """Log unexported usage records as MLflow traces. MLflow down: the records wait, the task backs off."""
    count = export.export_pending()
    if count:
        log.info("exported %s usage records to MLflow", count)
    return count


@shared_task(
    autoretry_for=(export.MlflowUnavailable,), retry_backoff=30, retry_backoff_max=1800, retry_jitter=True,
    max_retries=5,
)
def log_daily_usage_metrics() -> int:
    """Log each model's completed days as metrics of its MLflow run (requests, errors, tokens, latency)."""
    return export.log_daily_metrics()


@shared_task
def purge_old_usage() -> int:
    """Delete usage records older than USAGE_RETENTION_DAYS, so the table cannot grow without bound."""
    deleted = UsageRecord.objects.purge_older_than(settings.USAGE_RETENTION_DAYS)
    if deleted:
        log.info("purged %s usage records older than %s days", deleted, settings.USAGE_RETENTION_DAYS)
    return deleted
