"""ASGI entry point: /v1 and health skip the admin's middleware stack.

Django's stock middleware (sessions, CSRF, auth, messages) is sync and would
hop to a thread on every request; the gateway paths need none of it, so they
go to a handler without middleware. Everything else is plain Django.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

import django

django.setup(set_prefix=False)

from asgiref.sync import sync_to_async  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402

from gateway import quota, upstream  # noqa: E402
from portal.lean import GATEWAY_PREFIXES, reject_oversized  # noqa: E402
from tracking import recorder  # noqa: E402


class GatewayHandler(ASGIHandler):
    """Django's ASGI handler with an empty middleware chain."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(handler)


# LiteLLM takes seconds to import: do it now (once, in gunicorn's master with --preload), never inside the
# first request, where it would block the event loop for every request in flight.
upstream.warm_up()

django_app = ASGIHandler()
gateway_app = GatewayHandler()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "http" and scope["path"].startswith(GATEWAY_PREFIXES):
        if await reject_oversized(scope, send):
            return
        await gateway_app(scope, receive, send)
        return
    await django_app(scope, receive, send)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Daily quota counts not yet in the database must survive the restart.
            await sync_to_async(quota.ledger.flush)()
            # Buffered usage records too (gunicorn's SIGTERM -> uvicorn runs this after in-flight requests).
            await sync_to_async(recorder.shutdown, thread_sensitive=False)()
            await send({"type": "lifespan.shutdown.complete"})
            return
