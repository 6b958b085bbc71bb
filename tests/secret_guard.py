"""A pytest plugin (registered in tests/conftest.py): every log record of the test session, checked for secrets.

From the first test on, each record any logger emits (whatever its handlers or propagation: uvicorn's and
LiteLLM's loggers do not propagate to the root) is kept as text: its message, its traceback and stack. At the
end of the session every record is searched for the configured secrets (the master key, SECRET_KEY, the
peppers and encryption keys when set, the providers' test secret) and for anything shaped like a user API key
in full; one hit fails the run and prints the offending lines. tests/test_secrets_never_leak.py checks the
records kept so far, and responses, after provoking the paths most likely to leak.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

# The provider credential every test provider is given (tests/conftest.py make_provider).
PROVIDER_TEST_SECRET = "sk-upstream-secret-value-123"
# A user API key in full: sk-<8-character prefix>.<secret> (accounts/models.py). The prefix alone is fine to log.
USER_KEY = re.compile(r"sk-[a-z0-9]{8}\.[A-Za-z0-9_-]{20,}")
SECRET_SETTINGS = ("MASTER_KEY", "SECRET_KEY", "API_KEY_PEPPER", "PORTAL_ENCRYPTION_KEY")
SECRET_ENV = ("OPENROUTER_API_KEY", "GEMINI_API_KEY", "GITHUB_API_KEY", "LM_STUDIO_API_KEY", "OPENAI_API_KEY",
              "ANTHROPIC_API_KEY", "POSTGRES_PASSWORD", "UI_PASSWORD")
MAX_RECORDS = 500_000
MAX_RECORD_CHARS = 50_000


def configured_secrets() -> dict[str, str]:
    """Name -> value of every secret the portal is configured with (values shorter than 8 are ignored)."""
    from django.conf import settings

    found = {"provider test secret": PROVIDER_TEST_SECRET}
    for name in SECRET_SETTINGS:
        value = getattr(settings, name, "")
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str) and len(value) >= 8:
            found[name] = value
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 8:
            found[name] = value
    return found


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """Which secrets appear in `text` (by name; a full user key counts as one)."""
    hits = [name for name, value in secrets.items() if value in text]
    if USER_KEY.search(text):
        hits.append("a user API key")
    return hits


class RecordTap:
    """Keeps the text of every log record emitted while installed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.formatter = logging.Formatter()
        self._original: Any = None

    def install(self) -> None:
        original = self._original = logging.Logger.callHandlers
        tap = self

        def call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
            tap.keep(record)
            original(logger, record)

        logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            logging.Logger.callHandlers = self._original  # type: ignore[method-assign]
            self._original = None

    def keep(self, record: logging.LogRecord) -> None:
        try:
            parts = [f"{record.name} {record.levelname} {record.getMessage()}"]
        except Exception:  # a record whose args do not fit its format is still a line: keep what it holds
            parts = [f"{record.name} {record.levelname} {record.msg!r} {record.args!r}"]
        if record.exc_info:
            parts.append(self.formatter.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        text = "\n".join(parts)[:MAX_RECORD_CHARS]
        with self.lock:
            if len(self.lines) < MAX_RECORDS:
                self.lines.append(text)

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def drop(self, marker: str) -> None:
        """Forget the records containing `marker` (a test that leaks on purpose, to prove the guard works)."""
        with self.lock:
            self.lines = [line for line in self.lines if marker not in line]

    def leaking(self) -> list[tuple[list[str], str]]:
        secrets = configured_secrets()
        return [(hits, line) for line in self.snapshot() if (hits := leaks(line, secrets))]


tap = RecordTap()


@pytest.fixture(scope="session", autouse=True)
def log_records() -> Iterator[RecordTap]:
    """Every log record of the session (see the module docstring)."""
    tap.install()
    yield tap
    tap.uninstall()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not tap.lines:
        return
    found = tap.leaking()
    if not found:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else print
    write(f"SECRET LEAK: {len(found)} log record(s) of this session contain a secret:")
    secrets = configured_secrets()
    for hits, line in found[:20]:
        write(f"  [{', '.join(hits)}] {mask(line, secrets)[:500]}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def mask(text: str, secrets: dict[str, str]) -> str:
    """The text with each secret replaced by its name, so reporting a leak does not leak it again."""
    for name, value in secrets.items():
        text = text.replace(value, f"<{name}>")
    return USER_KEY.sub("<user API key>", text)
