"""Everything a fresh or upgraded installation needs before serving, safe to run on every start."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection

# The PostgreSQL advisory lock every `prepare` takes: any fixed 64-bit number, the same in all processes.
PREPARE_LOCK_KEY = 0x6C6C6D2D70726570  # "llm-prep"


@contextmanager
def one_at_a_time() -> Iterator[None]:
    """Replicas starting together run `prepare` one after another: the next waits, then finds the
    migrations applied and the admin created. On PostgreSQL a session advisory lock (the server drops
    it if the process dies); on SQLite a file lock beside the database (one host)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [PREPARE_LOCK_KEY])
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [PREPARE_LOCK_KEY])
        return
    with open(f"{connection.settings_dict['NAME']}.prepare-lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


class Command(BaseCommand):
    help = "Migrate, collect static, import PORTAL_CONFIG, load the built-in catalog, create the UI_USERNAME admin."

    def handle(self, *args: Any, **options: Any) -> None:
        with one_at_a_time():
            self.prepare()

    def prepare(self) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        config = Path(settings.PORTAL_CONFIG)
        if config.is_file():
            call_command("import_litellm_config", str(config))
        # After the import, so the user's own config.yaml wins for the names both define.
        call_command("load_catalog")
        self.bootstrap_admin()

    def bootstrap_admin(self) -> None:
        """Create or update the superuser named by UI_USERNAME (the LiteLLM UI login)."""
        username, password = os.environ.get("UI_USERNAME", ""), os.environ.get("UI_PASSWORD", "")
        if not (username and password):
            return
        user, created = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = True
        if created or not user.check_password(password):
            user.set_password(password)
        user.save()
        self.stdout.write(f"admin user {username!r} {'created' if created else 'updated'}")
