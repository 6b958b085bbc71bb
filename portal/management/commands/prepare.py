"""Everything a fresh or upgraded installation needs before serving, safe to run on every start."""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection

from gateway.models import Provider

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


# Where the generated password of the first admin is kept (beside data/master_key), for the operator to read.
ADMIN_PASSWORD_FILE = "admin_password"


class Command(BaseCommand):
    help = (
        "Migrate, collect static, import PORTAL_CONFIG, load the built-in catalog, create the admin; then print "
        "the addresses and which providers are enabled or what each disabled one waits for."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mlflow-ui", default="", help="The MLflow UI's address, to list it (make run).")

    def handle(self, *args: Any, **options: Any) -> None:
        with one_at_a_time():
            self.prepare()
        self.report(options["mlflow_ui"])

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
        """Create or update the superuser named by UI_USERNAME / UI_PASSWORD (the LiteLLM UI login). Without
        UI_PASSWORD, the first start of an installation with no superuser creates one (UI_USERNAME, else
        `admin`) with a generated password saved in the data directory and printed once."""
        username, password = os.environ.get("UI_USERNAME", ""), os.environ.get("UI_PASSWORD", "")
        if username and password:
            user, created = get_user_model().objects.get_or_create(username=username)
            user.is_staff = user.is_superuser = True
            if created or not user.check_password(password):
                user.set_password(password)
            user.save()
            self.stdout.write(f"admin user {username!r} {'created' if created else 'updated'}")
            return
        if get_user_model().objects.filter(is_superuser=True).exists():
            return
        username = username or "admin"
        password = secrets.token_urlsafe(18)
        get_user_model().objects.create_superuser(username=username, email="", password=password)
        path = Path(settings.DATA_DIR) / ADMIN_PASSWORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only from the first byte, like data/master_key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{username}\n{password}\n")
        self.stdout.write(
            f"UI_PASSWORD is not set: created the admin {username!r} with password\n"
            f"    {password}\n(saved in {path}; change it in the admin, then delete the file)"
        )

    def report(self, mlflow_ui: str) -> None:
        """What a person starting the portal wants to see: where it answers, and what it can serve."""
        host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104  (the same default as deploy/gunicorn.conf.py)
        shown_host = "localhost" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        base = f"http://{shown_host}:{settings.PORT}"
        lines = ["", f"LLM Portal on {base}/"]
        if settings.ENV_FILE is not None:
            lines.append(f"  environment file  {settings.ENV_FILE}")
        lines += [
            f"  OpenAI API base   {base}/v1   (Authorization: Bearer <LITELLM_MASTER_KEY or a user key>)",
            f"  admin             {base}/admin/{self.admin_login_hint()}",
            f"  API keys (users)  {base}/keys/",
        ]
        if mlflow_ui:
            lines.append(f"  MLflow UI         {mlflow_ui}")
        lines += self.provider_lines()
        self.stdout.write("\n".join(lines) + "\n")

    def admin_login_hint(self) -> str:
        if os.environ.get("UI_USERNAME") and os.environ.get("UI_PASSWORD"):
            return f"   (login: UI_USERNAME {os.environ['UI_USERNAME']!r} / UI_PASSWORD)"
        path = Path(settings.DATA_DIR) / ADMIN_PASSWORD_FILE
        if path.is_file():
            return f"   (first login: see {path})"
        return ""

    def provider_lines(self) -> list[str]:
        providers = list(Provider.objects.all())
        enabled = [p.name for p in providers if p.enabled and not p.waiting_for()]
        lines = [f"  providers enabled: {', '.join(enabled) if enabled else 'none'}"]
        for provider in providers:
            missing = provider.waiting_for()
            if provider.enabled and missing:
                lines.append(f"  provider {provider.name}: enabled but its calls will fail until you set {missing}")
            elif provider.awaiting_credential and missing:
                lines.append(f"  provider {provider.name}: disabled, waiting for {missing}")
            elif not provider.enabled:
                needs = f" (and needs {missing})" if missing else ""
                lines.append(f"  provider {provider.name}: switched off in the admin{needs}")
        return lines
