"""python manage.py import_mlflow SOURCE_URI: copy a LiteLLM deployment's MLflow records into the portal's MLflow."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tracking import mlflow_copy


class Command(BaseCommand):
    help = (
        "Copy the experiments, runs (parameters, metrics, tags, artifacts) and traces of another MLflow tracking "
        "store into the portal's (MLFLOW_TRACKING_URI). Safe to run again: only what is new is copied."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="The old store: postgresql://user:pass@host:5432/mlflow, "
                                           "sqlite:///path/mlflow.db or http://host:5001")
        parser.add_argument("--to", default="", help="The destination store (default: MLFLOW_TRACKING_URI).")
        parser.add_argument("--experiment", action="append", default=[],
                            help="Copy only this experiment (by name); repeat for several. Default: all.")

    def handle(self, *args: Any, **options: Any) -> None:
        from mlflow.exceptions import MlflowException

        destination = options["to"] or settings.MLFLOW_TRACKING_URI
        if destination.rstrip("/") == options["source"].rstrip("/"):
            raise CommandError("the source and the destination are the same store")
        try:
            summary = mlflow_copy.copy_store(options["source"], destination, options["experiment"] or None)
        except MlflowException as e:
            raise CommandError(f"MLflow: {e.message}") from None
        self.stdout.write(f"MLflow: {summary}")
