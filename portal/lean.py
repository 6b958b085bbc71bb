"""Small ASGI-level helpers for the gateway paths."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings

GATEWAY_PREFIXES = ("/v1/", "/v1", "/chat/completions", "/models", "/health/")


async def reject_oversized(scope: dict[str, Any], send: Any) -> bool:
    """Answer 413 from Content-Length alone, before reading (and spooling) a huge body."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                size = int(value)
            except ValueError:
                return False
            if size <= settings.MAX_REQUEST_BODY_BYTES:
                return False
            body = orjson.dumps(
                {
                    "error": {
                        "message": f"The request body is larger than the limit of "
                        f"{settings.MAX_REQUEST_BODY_BYTES} bytes.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "request_too_large",
                    }
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return True
    return False
