"""manage.py export_litellm_config [FILE|-]: write the catalog as a LiteLLM config.yaml."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.catalog.litellm_export import dump_yaml, export_config
from gateway.catalog.litellm_keys import ConfigError


class Command(BaseCommand):
    help = (
        "Export providers, deployments and settings in LiteLLM Proxy's config.yaml format. "
        "Literal keys are left out unless --include-secrets; os.environ/ references are always kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", default="-", help="where to write (default: - for stdout)")
        parser.add_argument(
            "--include-secrets", action="store_true", help="also write literal API keys stored encrypted"
        )
        parser.add_argument(
            "--include-disabled", action="store_true", help="also write disabled deployments and providers"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = export_config(
                include_secrets=options["include_secrets"], include_disabled=options["include_disabled"]
            )
        except ConfigError as e:
            raise CommandError(str(e)) from None
        text = dump_yaml(config)
        name: str = options["file"]
        if name == "-":
            self.stdout.write(text, ending="")
            return
        try:
            # Owner-only when the file may hold keys; a config without secrets gets the usual umask.
            mode = 0o600 if options["include_secrets"] else 0o666
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            if options["include_secrets"]:
                os.fchmod(fd, 0o600)  # os.open's mode only applies when it creates the file
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise CommandError(f"{name}: cannot write: {e.strerror}") from None
        count = len(config["model_list"])
        self.stdout.write(f"Wrote {count} models to {name}")
