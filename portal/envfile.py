"""The operator's `.env`, read by every entry point before any setting is (LiteLLM users keep their keys there).

portal/settings.py calls load() first thing, so manage.py, the Celery worker and gunicorn/uvicorn all see the
file; deploy/gunicorn.conf.py calls it too, for the few values gunicorn reads before Django loads.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from dotenv import dotenv_values, load_dotenv

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(Exception):
    """PORTAL_ENV_FILE names a file that cannot be read (a typo must not start the portal without its keys)."""


def env_file_path() -> Path | None:
    """The file to read: PORTAL_ENV_FILE when set (/dev/null reads none), else ./.env when it exists."""
    named = os.environ.get("PORTAL_ENV_FILE", "")
    if named:
        path = Path(named).expanduser()
        if not path.exists() or path.is_dir():
            raise EnvFileError(f"PORTAL_ENV_FILE: no such file: {path}")
        return path
    default = Path.cwd() / ".env"
    return default if default.is_file() else None


def load() -> Path | None:
    """Put the file's variables into os.environ, never over one the real environment already has (as Docker
    Compose and systemd do: what the operator exported wins). Returns the file that was read."""
    path = env_file_path()
    if path is not None:
        load_dotenv(path, override=False, encoding="utf-8")
    return path


def shell_exports() -> str:
    """`export NAME='value'` lines for what the file adds to the environment: `make run` evaluates them, so its
    own shell (which decides whether to start the MLflow UI, and where data lives) sees the file too."""
    path = env_file_path()
    if path is None:
        return ""
    values = dotenv_values(path, encoding="utf-8")
    return "".join(
        f"export {name}={shlex.quote(value)}\n"
        for name, value in values.items()
        if value is not None and name not in os.environ and _SHELL_NAME.fullmatch(name)
    )


if __name__ == "__main__":
    try:
        sys.stdout.write(shell_exports())
    except EnvFileError as e:
        sys.exit(str(e))
