"""ASGI entry point: /v1 and health skip the admin's middleware stack.

Django's stock middleware (sessions, CSRF, auth, messages) is sync and would
hop to a thread on every request; the gateway paths need none of it, so they
go to a handler without middleware. Everything else is plain Django.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

import django

django.setup(set_prefix=False)

from asgiref.sync import sync_to_async  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402

from gateway import passthrough, quota, upstream  # noqa: E402
from portal.lean import GATEWAY_PREFIXES, reject_oversized  # noqa: E402
from tracking import recorder  # noqa: E402


class GatewayHandler(ASGIHandler):
    """Django's ASGI handler, trimmed for the gateway paths.

    No middleware (the admin's is sync and would hop to a thread per request), and none of the per-request
    thread work Django's handler does: a fresh thread-sensitive executor (a new thread per request), and the
    request_started/request_finished signals whose receivers are sync. Gateway views do their rare database
    work through gateway.db, which manages its own connections. Everything else — request parsing, URL
    resolution, views, and cancelling the view when the client disconnects — is Django's own code.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler = self._get_response_async if is_async else self._get_response  # type: ignore[attr-defined]
        self._middleware_chain = convert_exception_to_response(handler)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None
                await self.send_response(error_response, send)
                return
            await self._serve(request, receive, send)
        finally:
            body_file.close()

    async def _serve(self, request: Any, receive: Any, send: Any) -> None:
        async def process_request() -> None:
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected while we were sending

        # As Django does: whichever ends first — the response, or the client going away — ends the other,
        # so a disconnect cancels the view (and with it the upstream call).
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        worker = asyncio.create_task(process_request())
        await asyncio.wait([listener, worker], return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, worker):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                await task


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


_background: set[asyncio.Task[None]] = set()


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # LiteLLM only if some deployment needs it, imported in the background: the worker serves at once.
            _background.add(asyncio.create_task(upstream.prewarm()))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Daily quota counts not yet in the database must survive the restart.
            await sync_to_async(quota.ledger.flush)()
            await passthrough.instance.aclose()
            if upstream.litellm_loaded():
                await upstream.aclose()
            # Buffered usage records too (gunicorn's SIGTERM -> uvicorn runs this after in-flight requests).
            await sync_to_async(recorder.shutdown, thread_sensitive=False)()
            await send({"type": "lifespan.shutdown.complete"})
            return
