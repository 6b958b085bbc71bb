"""manage.py import_litellm_config FILE: load a LiteLLM config.yaml into the catalog."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.catalog.litellm_import import import_config, load_config
from gateway.catalog.litellm_keys import ConfigError


class Command(BaseCommand):
    help = (
        "Import a LiteLLM Proxy config.yaml (model_list, litellm_settings, router_settings, …). "
        "Adds and updates providers and deployments; running it again changes nothing. Use - for stdin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="path to the LiteLLM config.yaml, or - for stdin")

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["file"]
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(f"{name}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        source = "stdin" if name == "-" else name
        try:
            summary = import_config(load_config(text, source), source)
        except ConfigError as e:
            raise CommandError(str(e)) from None
        self.stdout.write(f"Imported {source}: {summary}")
