"""CatalogModel, the base of every row the catalog snapshot is built from, and the version bump through which
each of its writes reaches every worker."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.db import models, transaction

# The catalog's version in the shared cache: each worker compares it with its snapshot's (gateway.catalog).
CATALOG_VERSION_KEY = "gateway:catalog-version"


class LocalChanges:
    """Catalog changes made by this process: its own snapshot is dropped at the next request, not a refresh
    interval later."""

    count = 0


def bump_catalog_version() -> None:
    try:
        cache.incr(CATALOG_VERSION_KEY)
    except ValueError:
        cache.set(CATALOG_VERSION_KEY, 1, timeout=None)
    LocalChanges.count += 1


def catalog_changed() -> None:
    """Every worker must reload the catalog: at once (this process, and a version bump the others read within
    CATALOG_REFRESH_SECONDS), and again once the current transaction commits, since a worker that reloads
    before the commit reads the old rows and would keep them. Outside a transaction both happen now."""
    bump_catalog_version()
    transaction.on_commit(bump_catalog_version)


class CatalogQuerySet(models.QuerySet[Any]):
    """Writes that skip save()/delete() (the admin's "delete selected", a management command's update())
    reach the workers all the same."""

    def update(self, **kwargs: Any) -> int:
        count = super().update(**kwargs)
        catalog_changed()
        return count

    def delete(self) -> tuple[int, dict[str, int]]:
        result = super().delete()
        catalog_changed()
        return result

    def bulk_create(self, *args: Any, **kwargs: Any) -> list[Any]:
        created = super().bulk_create(*args, **kwargs)
        catalog_changed()
        return created

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        count = super().bulk_update(*args, **kwargs)
        catalog_changed()
        return count


class CatalogModel(models.Model):
    """A row the catalog snapshot is built from: every way it changes tells the workers (catalog_changed)."""

    objects = CatalogQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        catalog_changed()

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        result = super().delete(*args, **kwargs)
        catalog_changed()
        return result
