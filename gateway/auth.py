"""Who is calling /v1: the master key, or (later) a user's API key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from django.conf import settings
from django.http import HttpRequest

from gateway.errors import GatewayError


@dataclass(frozen=True)
class Principal:
    is_master: bool
    key_id: int | None = None
    key_name: str = ""
    user_id: int | None = None
    username: str = ""
    # Empty means every enabled model.
    allowed_models: frozenset[str] = field(default_factory=frozenset)

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
    raise invalid_key()
