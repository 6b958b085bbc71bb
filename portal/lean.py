"""What the ASGI entry point needs to know before Django sees a request: which paths are the gateway's, and how
large a body each side accepts.

The gateway's paths are read from its URL conf (gateway/urls.py, included at the site's root), so a route added
there skips the admin's middleware without a second list to keep in step.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any

import orjson
from django.conf import settings
from django.urls import URLPattern, URLResolver
from django.urls.resolvers import RegexPattern

_REGEX_SPECIAL = re.compile(r"[\\.^$*+?{}\[\]|()]")


def _literal_prefix(entry: URLPattern | URLResolver) -> str:
    """The part of a URL pattern every matching path starts with: up to its first converter or regex syntax."""
    pattern = entry.pattern
    if isinstance(pattern, RegexPattern):
        text = str(pattern).removeprefix("^")
        special = _REGEX_SPECIAL.search(text)
        return text[: special.start()] if special else text
    return str(pattern).split("<", 1)[0]


@functools.cache
def gateway_prefixes() -> tuple[str, ...]:
    """The shortest set of path prefixes covering every gateway route ("/v1" covers "/v1/models/...")."""
    from gateway import urls

    prefixes = sorted({"/" + _literal_prefix(entry) for entry in urls.urlpatterns})
    kept: list[str] = []
    for prefix in prefixes:  # sorted: a prefix comes before everything it covers
        if not any(prefix.startswith(shorter) for shorter in kept):
            kept.append(prefix)
    return tuple(kept)


def is_gateway(path: str) -> bool:
    return path.startswith(gateway_prefixes())


# The scope key of a list the ASGI app may put callbacks in: the connection's protocol (portal.workers) calls them
# when the connection is lost before the response is complete. With it, a client that leaves cancels its request
# at once, without a task per request listening for the disconnect; without it (another server), the app listens.
ON_LOST = "portal.on_lost"


def new_request_id() -> bytes:
    """32 random hex digits, like a uuid4's hex (and the gateway views' own ids, gateway.api.pipeline)."""
    return f"{random.getrandbits(128):032x}".encode()


def declared_length(scope: dict[str, Any]) -> int | None:
    """The body's size as its Content-Length says (0 without one or a Transfer-Encoding: no body), or None when
    it comes without a length (chunked), to be counted as it arrives."""
    length = 0
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            return None
    return length


def too_large(gateway: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The 413's headers and body: the OpenAI envelope on the gateway, a short JSON answer elsewhere."""
    if gateway:
        limit = settings.MAX_REQUEST_BODY_BYTES
        body = orjson.dumps({"error": {
            "message": f"The request body is larger than the limit of {limit} bytes.",
            "type": "invalid_request_error", "param": None, "code": "request_too_large",
        }})
    else:
        limit = settings.MAX_ADMIN_REQUEST_BODY_BYTES
        body = orjson.dumps({"detail": f"The request body is larger than the limit of {limit} bytes."})
    # `connection: close`: the rest of the body is never read, so the connection cannot serve another request.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), (b"x-request-id", new_request_id())]
    return headers, body


async def refuse_too_large(send: Any, gateway: bool) -> None:
    headers, body = too_large(gateway)
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CappedReceive:
    """`receive`, counting the body's bytes as they arrive (for a body sent without a Content-Length).

    Past the limit the request is answered 413 at once, and the application is told the client left: Django
    stops reading, so nothing more is received or spooled to disk. A body with a Content-Length needs no
    counting: the server reads exactly that many bytes, and a length over the limit is refused before reading.
    """

    __slots__ = ("gateway", "limit", "receive", "received", "refused", "send")

    def __init__(self, receive: Any, send: Any, limit: int, gateway: bool) -> None:
        self.receive, self.send, self.limit, self.gateway = receive, send, limit, gateway
        self.received = 0
        self.refused = False

    async def __call__(self) -> dict[str, Any]:
        if self.refused:
            return {"type": "http.disconnect"}
        message: dict[str, Any] = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused = True
                await refuse_too_large(self.send, self.gateway)
                return {"type": "http.disconnect"}
        return message
