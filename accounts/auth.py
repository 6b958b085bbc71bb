"""Who is calling /v1: the master key, or a user's API key. The gateway calls `authenticate` once per request.

A refusal is an `AuthRefused` (a 401, or a 429 for an address guessing keys); the gateway turns it into its
error envelope. A cache or database that cannot be reached is raised as it is, for the gateway's 503.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest

from accounts.keys import resolve_token
from accounts.principal import MASTER, AuthRefused, Principal
from accounts.throttle import key_failures


def token_from(request: HttpRequest) -> str:
    """The key from `Authorization: Bearer <key>` or `x-api-key: <key>` ("" if none)."""
    # META, not request.headers: that one parses every header of the request into a new mapping first.
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return str(header[7:]).strip()
    return str(request.META.get("HTTP_X_API_KEY", "")).strip()


def too_many_failures(retry_after: int) -> AuthRefused:
    return AuthRefused(
        429, f"Too many invalid API keys from your address. Try again in {retry_after}s.",
        code="too_many_invalid_keys", retry_after=retry_after,
    )


async def authenticate(request: HttpRequest) -> Principal:
    ip = str(request.META.get("REMOTE_ADDR") or "")
    if (retry_after := key_failures.retry_after(ip)) is not None:
        raise too_many_failures(retry_after)
    token = token_from(request)
    if not token:
        raise AuthRefused(
            401, "Missing API key. Send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header.",
            code="invalid_api_key",
        )
    # Constant time: how long the comparison takes must not tell how much of a guess was right. User keys
    # are compared the same way, as HMACs of the token (accounts.keys.resolve_token).
    if hmac.compare_digest(token.encode(), settings.MASTER_KEY.encode()):
        return MASTER
    principal = await resolve_token(token)
    if principal is None:
        if (retry_after := await key_failures.fail(ip)) is not None:
            raise too_many_failures(retry_after)
        raise AuthRefused(401, "Invalid API key: unknown, revoked or expired.", code="invalid_api_key")
    return principal
