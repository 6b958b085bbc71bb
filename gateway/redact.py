"""Scrub secrets out of any text that may reach a client or a log line.

Upstream error messages can echo request headers or keys; every configured
secret is replaced before such text leaves the process.
"""

from __future__ import annotations

import re

_secrets: set[str] = set()
# Bearer tokens and sk-style keys that we may not know about (a client's typo'd key).
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]{8,}"),
    # Our own user keys, sk-<prefix>.<secret>: the prefix may show, the secret never.
    re.compile(r"\b(sk-[a-z0-9]{8}\.)[A-Za-z0-9_-]{4,}"),
    re.compile(r"\b(AIza[0-9A-Za-z_-]{4})[0-9A-Za-z_-]{20,}"),
    re.compile(r"\b(gh[opusr]_[A-Za-z0-9]{4})[A-Za-z0-9]{16,}"),
    re.compile(r"(?i)([?&]key=)[^&\s\"']+"),
]


def register(secret: str) -> None:
    """Remember a secret so redact() hides it; short values are ignored (too many false hits)."""
    if secret and len(secret) >= 8:
        _secrets.add(secret)


def _configured() -> list[str]:
    """The portal's own secrets: a master key need not look like a key (LITELLM_MASTER_KEY is free-form)."""
    from django.conf import settings

    values = (getattr(settings, name, "") for name in ("MASTER_KEY", "SECRET_KEY", "API_KEY_PEPPER"))
    return [value for value in values if isinstance(value, str) and len(value) >= 8]


def redact(text: str) -> str:
    for secret in (*_secrets, *_configured()):
        if secret in text:
            text = text.replace(secret, "***")
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text
