"""Encryption at rest for provider credentials.

The Fernet key is derived from SECRET_KEY (or PORTAL_ENCRYPTION_KEY when set,
so SECRET_KEY can rotate without losing stored credentials).
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    material = os.environ.get("PORTAL_ENCRYPTION_KEY") or settings.SECRET_KEY
    digest = hashlib.sha256(b"llm-portal-credentials:" + material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Return the plaintext, or raise ValueError if the key changed or data is corrupt."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "stored credential cannot be decrypted (SECRET_KEY or PORTAL_ENCRYPTION_KEY changed?)"
        ) from None
