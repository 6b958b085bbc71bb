"""Usage records: one row per /v1 call, written in batches off the request path (see tracking.recorder).

Keys and users are stored as plain integer ids plus their names at the time of the call, not as foreign
keys: a record must outlive the key or user it names (usage history is kept after a key is deleted), and
the tracking app must not depend on the accounts app's migrations.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

# A claim older than this is considered abandoned (the worker died) and the records are claimable again.
CLAIM_TIMEOUT = dt.timedelta(minutes=10)


class UsageRecordQuerySet(models.QuerySet["UsageRecord"]):
    def unexported(self) -> UsageRecordQuerySet:
        return self.filter(exported_at__isnull=True)

    def claimable(self, now: dt.datetime) -> UsageRecordQuerySet:
        return self.unexported().filter(Q(export_claim="") | Q(export_claimed_at__lt=now - CLAIM_TIMEOUT))

    def since(self, start: dt.datetime) -> UsageRecordQuerySet:
        return self.filter(created__gte=start)

    def errors(self) -> UsageRecordQuerySet:
        return self.filter(ok=False)


class UsageRecordManager(models.Manager.from_queryset(UsageRecordQuerySet)):  # type: ignore[misc]
    def claim_for_export(self, limit: int) -> tuple[str, list[UsageRecord]]:
        """Claim up to `limit` unexported records for this worker; returns the claim token and the rows.

        The UPDATE repeats the "still claimable" condition, so when two workers pick the same ids only one
        of them gets each row (the other's UPDATE matches nothing): no record is exported twice.
        """
        now = timezone.now()
        token = uuid.uuid4().hex
        ids = list(self.get_queryset().claimable(now).order_by("id").values_list("id", flat=True)[:limit])
        if not ids:
            return token, []
        self.get_queryset().claimable(now).filter(id__in=ids).update(export_claim=token, export_claimed_at=now)
        return token, list(self.filter(export_claim=token, exported_at__isnull=True).order_by("id"))

    def release(self, token: str) -> int:
        """Give back what a claim did not export, so the next run takes it."""
        return self.filter(export_claim=token).update(
            export_claim="", export_claimed_at=None
        )

    def mark_exported(self, token: str, trace_ids: dict[str, str], experiment: dict[str, str]) -> int:
        """Mark the claimed records found in MLflow as exported (one UPDATE per record, in one transaction)."""
        now = timezone.now()
        with transaction.atomic():
            done = 0
            for request_id, trace_id in trace_ids.items():
                done += self.filter(export_claim=token, request_id=request_id).update(
                    exported_at=now, mlflow_trace_id=trace_id, mlflow_experiment=experiment.get(request_id, ""),
                    export_claim="", export_claimed_at=None,
                )
        return done

    def purge_older_than(self, days: int, batch: int = 5000) -> int:
        """Delete records older than `days` days, in batches so one purge never holds a huge transaction."""
        cutoff = timezone.now() - dt.timedelta(days=days)
        deleted = 0
        while True:
            ids = list(self.filter(created__lt=cutoff).values_list("id", flat=True)[:batch])
            if not ids:
                return deleted
            deleted += self.filter(id__in=ids).delete()[0]


class UsageRecord(models.Model):
    request_id = models.CharField(max_length=64, unique=True, help_text="Also returned as x-request-id.")
    created = models.DateTimeField(db_index=True, help_text="When the request arrived.")
    ended = models.DateTimeField(null=True, blank=True)
    endpoint = models.CharField(max_length=64)
    # Plain ids (accounts.ApiKey / auth.User) and names as they were: history survives a deleted key or user.
    key_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    key_name = models.CharField(max_length=200, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    username = models.CharField(max_length=150, blank=True)
    model = models.CharField(max_length=200, blank=True, help_text="The public model name the client asked for.")
    deployment_id = models.BigIntegerField(null=True, blank=True, help_text="The deployment that answered.")
    provider = models.CharField(max_length=100, blank=True)
    upstream_model = models.CharField(max_length=300, blank=True)
    status = models.PositiveSmallIntegerField(help_text="HTTP status sent to the client.")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    ok = models.BooleanField(help_text="Answered without error (a client that left mid-stream is not an error).")
    streamed = models.BooleanField(default=False)
    client_disconnected = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    latency_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True, verbose_name="time to first token (ms)")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_counted = models.BooleanField(
        default=False, help_text="The upstream reported no usage; the portal counted the tokens itself."
    )
    # Worked out by the recorder from the deployment's price (gateway.pricing); null = no price known.
    cost_usd = models.DecimalField(
        max_digits=18, decimal_places=10, null=True, blank=True, verbose_name="cost (USD)",
        help_text="What the call cost: 0 on a free tier.",
    )
    list_cost_usd = models.DecimalField(
        max_digits=18, decimal_places=10, null=True, blank=True, verbose_name="list price (USD)",
        help_text="What it would have cost at the paid list price (equals the cost on a paid deployment).",
    )
    client_ip = models.CharField(max_length=45, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    # Kept only when a BodyLoggingRule matches; JSON text, cut at USAGE_BODY_MAX_BYTES.
    request_body = models.TextField(blank=True)
    response_body = models.TextField(blank=True)
    bodies_truncated = models.BooleanField(default=False)
    # Export to MLflow (tracking.export): claimed by one worker at a time, then marked exported.
    export_claim = models.CharField(max_length=32, blank=True, editable=False)
    export_claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    exported_at = models.DateTimeField(null=True, blank=True, editable=False)
    mlflow_trace_id = models.CharField(max_length=64, blank=True, editable=False)
    mlflow_experiment = models.CharField(max_length=250, blank=True, editable=False)

    objects = UsageRecordManager()

    class Meta:
        ordering = ["-created"]
        indexes = [
            models.Index(fields=["model", "created"], name="usage_model_created"),
            models.Index(fields=["deployment_id", "created"], name="usage_deployment_created"),
            # The exporter's queue: small, because exported rows leave it.
            models.Index(fields=["id"], condition=Q(exported_at__isnull=True), name="usage_unexported"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"

    @classmethod
    def unsaved(cls, **values: Any) -> UsageRecord:
        """A new record, as `UsageRecord(**values)` makes it, without Model.__init__'s work per field and per
        keyword (a third of the usage writer's CPU per row, in each web worker). Only attribute names of
        concrete fields; every other field gets its default, as the constructor gives it."""
        if not _plain_init(cls):
            return cls(**values)
        record = cls.__new__(cls)
        record._state = models.base.ModelState()
        fields = record.__dict__
        for attname, default in _defaults(cls):
            fields[attname] = default() if callable(default) else default
        fields.update(values)
        return record

    @property
    def experiment_name(self) -> str:
        """Where the trace goes: the request's `mlflow_experiment` tag, else MLFLOW_EXPERIMENT_NAME."""
        name = self.tags.get("mlflow_experiment") if isinstance(self.tags, dict) else None
        return str(name).strip()[:250] if name and str(name).strip() else settings.MLFLOW_EXPERIMENT_NAME

    @property
    def is_error(self) -> bool:
        return not self.ok


class BodyLoggingRuleQuerySet(models.QuerySet["BodyLoggingRule"]):
    def active(self) -> BodyLoggingRuleQuerySet:
        return self.filter(enabled=True)


class BodyLoggingRule(models.Model):
    """Keep request and response bodies of calls to a model, by a key, or both (operator-enabled).

    Lives here rather than on Deployment/ApiKey so the switch belongs to the usage records it controls.
    """

    model = models.CharField(max_length=200, blank=True, help_text="Public model name; empty = any model.")
    key_id = models.BigIntegerField(null=True, blank=True, help_text="API key id; empty = any key.")
    enabled = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = BodyLoggingRuleQuerySet.as_manager()

    class Meta:
        ordering = ["model", "key_id"]

    def __str__(self) -> str:
        model = self.model or "any model"
        key = f"key #{self.key_id}" if self.key_id is not None else "any key"
        return f"bodies of {model} by {key}"

    def clean(self) -> None:
        if not self.model and self.key_id is None:
            raise ValidationError("Name a model, a key, or both: a rule for everything would keep every body.")

    def matches(self, model: str, key_id: int | None) -> bool:
        return (not self.model or self.model == model) and (self.key_id is None or self.key_id == key_id)


class ModelUsageRun(models.Model):
    """The MLflow run holding a model's daily aggregates, and the last day logged to it."""

    model = models.CharField(max_length=200, unique=True)
    run_id = models.CharField(max_length=64, blank=True)
    last_day = models.DateField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.model}: {self.last_day or 'nothing'} logged"

    def claim(self) -> bool:
        """Take this model's run for one export; False when another worker holds it."""
        now = timezone.now()
        free = Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT)
        return ModelUsageRun.objects.filter(free, pk=self.pk).update(claimed_at=now) == 1

    def release(self, **fields: Any) -> None:
        ModelUsageRun.objects.filter(pk=self.pk).update(claimed_at=None, **fields)


@functools.cache
def _defaults(model: type[models.Model]) -> tuple[tuple[str, Any], ...]:
    """(attname, default) of every concrete field: the default itself when it is a constant, the callable that
    makes it (a dict, say) when each record needs its own."""
    out = []
    for field in model._meta.concrete_fields:
        default = field.default if field.has_default() and callable(field.default) else field.get_default()
        out.append((field.attname, default))
    return tuple(out)


def _plain_init(model: type[models.Model]) -> bool:
    """No receiver of pre_init/post_init for this model (they would be skipped by `unsaved`)."""
    return not (models.signals.pre_init.has_listeners(model) or models.signals.post_init.has_listeners(model))
