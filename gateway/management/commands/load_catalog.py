"""python manage.py load_catalog: the built-in providers and models (gateway/catalog/builtin.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gateway.catalog import builtin as catalog_data


class Command(BaseCommand):
    help = (
        "Create the built-in catalog (5 providers, 33 models) where missing. Never changes existing rows; "
        "entries an operator deleted stay deleted unless --restore. Enables providers whose credential appeared."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--restore", action="store_true", help="Also recreate built-in entries that were deleted.")

    def handle(self, *args: Any, **options: Any) -> None:
        summary = catalog_data.load(restore=options["restore"])
        self.stdout.write(f"catalog: {summary}")
