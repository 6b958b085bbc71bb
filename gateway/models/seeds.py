"""The built-in catalog entries load_catalog has put in place once."""

from __future__ import annotations

from django.db import models


class CatalogSeed(models.Model):
    """A built-in catalog entry load_catalog has put in place once (gateway/catalog/builtin.py).

    It is never created a second time: an entry the operator deleted stays deleted on the next start
    (`load_catalog --restore` brings missing entries back).
    """

    key = models.CharField(max_length=250, unique=True)  # "provider:gemini", "model:google/gemini-2.5-flash"
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key
