"""Quotas kept in the database: pools shared by several deployments, and the durable copy of daily counters."""

from __future__ import annotations

from django.db import models

from gateway.models.catalog_base import CatalogModel
from gateway.models.validators import validate_timezone


class QuotaPool(CatalogModel):
    """A quota shared by several deployments, counted the way the provider counts it.

    OpenRouter's free-model allowance is account-wide: one pool for all its
    free models. Gemini counts per project per model: no pool needed.
    """

    name = models.SlugField(max_length=100, unique=True)
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per minute")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per minute")
    rpd = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per day")
    tpd = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per day")
    reset_timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DailyCounter(models.Model):
    """The durable copy of a daily quota counter, so a restart never hands out a fresh day.

    Redis (or memory) is the fast path; increments are flushed here in batches
    and read back when the fast path has no value for the day.
    """

    key = models.CharField(max_length=200)
    day = models.DateField()
    value = models.BigIntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "day"], name="unique_daily_counter")]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.key} {self.day}: {self.value}"
