"""Who is calling /v1: the master key, or (later) a user's API key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from django.conf import settings
from django.http import HttpRequest

from gateway.errors import GatewayError


@dataclass(frozen=True)
class KeyLimits:
    """A key's own quota (None = unlimited); enforced by gateway.quota, never for the master key."""

    rpm: int | None = None
    rpd: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.rpd, self.tokens_per_day, self.tokens_per_month))


@dataclass(frozen=True)
class Principal:
    is_master: bool
    key_id: int | None = None
    key_name: str = ""
    user_id: int | None = None
    username: str = ""
    # Empty means every enabled model.
    allowed_models: frozenset[str] = field(default_factory=frozenset)
    limits: KeyLimits = field(default_factory=KeyLimits)
    # Per public model name, overriding `limits` for that model.
    model_limits: dict[str, KeyLimits] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def limits_for(self, public_name: str) -> KeyLimits:
        return self.model_limits.get(public_name, self.limits)

    def may_use(self, public_name: str) -> bool:
        return self.is_master or not self.allowed_models or public_name in self.allowed_models


MASTER = Principal(is_master=True, key_name="master")


def token_from(request: HttpRequest) -> str:
    """The key from `Authorization: Bearer <key>` or `x-api-key: <key>` ("" if none)."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def invalid_key(message: str = "Invalid API key.") -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


async def authenticate(request: HttpRequest) -> Principal:
    token = token_from(request)
    if not token:
        raise invalid_key(
            "Missing API key. Send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header."
        )
    if hmac.compare_digest(token.encode(), settings.MASTER_KEY.encode()):
        return MASTER
    # Imported here: accounts builds on this module's Principal.
    from accounts.keys import resolve_token
    from gateway import health

    try:
        principal = await resolve_token(token)
    except health.UNREACHABLE_ERRORS as e:
        # The key could not be looked up (cache or database away): a 503 the call's usage record shows too.
        raise health.unreachable(e) from None
    if principal is None:
        raise invalid_key("Invalid API key: unknown, revoked or expired.")
    return principal
