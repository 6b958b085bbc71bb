"""ASGI entry point: the gateway's paths skip the admin's middleware stack; every body is capped as it arrives.

Django's stock middleware (sessions, CSRF, auth, messages) is sync and would hop to a thread on every request;
the gateway paths (those of gateway/urls.py: /v1, its aliases, health) need none of it, so they go to a handler
without middleware. Everything else is plain Django.

Before either sees a request, its body is held to a limit (MAX_REQUEST_BODY_BYTES on the gateway,
MAX_ADMIN_REQUEST_BODY_BYTES elsewhere): a Content-Length over it is answered 413 before a byte is read, and a
chunked body is counted as it arrives and refused at the limit, so a huge body is neither read nor spooled.
Every response carries an x-request-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

import django

django.setup(set_prefix=False)

import orjson  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.urls import ResolverMatch, get_resolver  # noqa: E402
from django.utils.log import log_response  # noqa: E402

from gateway import quota  # noqa: E402
from gateway import upstreams as upstream  # noqa: E402
from gateway.api.calls import mark_client_left  # noqa: E402
from gateway.api.relay import Translation  # noqa: E402
from gateway.errors import GatewayError  # noqa: E402
from portal.lean import ON_LOST, CappedReceive, declared_length, gateway_prefixes, new_request_id, refuse_too_large  # noqa: E402
from tracking import recorder  # noqa: E402

GATEWAY_URLCONF = "portal.gateway_urls"
MATCHES_KEPT = 256


class GatewayHandler(ASGIHandler):
    """Django's ASGI handler, trimmed for the gateway paths.

    No middleware (the admin's is sync and would hop to a thread per request), and none of the per-request
    thread work Django's handler does: a fresh thread-sensitive executor (a new thread per request), the
    request_started/request_finished signals whose receivers are sync, and the django.request log line of
    every 4xx written from a thread (a burst of 429s would queue a thread hop each; every call has its usage
    record, and 5xx answers are logged here, without the hop). Paths resolve against the gateway's routes alone
    (portal/gateway_urls.py), not the whole site's. Gateway views do their rare database work through
    gateway.db, which manages its own connections. Request parsing, views and error pages are Django's own code.
    A client that disconnects cancels its request in the request's own task, told by the worker's protocol
    (see `_serve`); under a server that does not tell, Django's listener task does it.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        # An unknown path (Resolver404) becomes the site's 404 handler's answer, as in Django's own chain.
        self._view_chain = cast(Callable[[Any], Awaitable[Any]], convert_exception_to_response(self._call_view))
        self._resolver = get_resolver(GATEWAY_URLCONF)
        self._matches: dict[str, ResolverMatch] = {}

    async def get_response_async(self, request: Any) -> Any:
        response = await self._view_chain(request)
        if response.status_code >= 500:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response

    async def _call_view(self, request: Any) -> Any:
        # Apps call a handful of paths: each is resolved once (a path that resolves nowhere raises, uncached).
        match = self._matches.get(request.path_info)
        if match is None:
            match = self._resolver.resolve(request.path_info)
            if len(self._matches) >= MATCHES_KEPT:  # paths with ids in them must not grow it without bound
                self._matches.clear()
            self._matches[request.path_info] = match
        request.resolver_match = match
        return await match.func(request, *match.args, **match.kwargs)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        request, _ = self.create_request(scope, body_file)
        if request is None:  # a path that is not UTF-8
            await self.send_response(GatewayError(400, "The request's path is not valid UTF-8.",
                                                  code="bad_request").response(), send)
            return
        await self._serve(request, receive, send, scope.get(ON_LOST))

    async def read_body(self, receive: Any) -> io.BytesIO:  # type: ignore[override]
        """The body, in memory: it is capped before it gets here (see `application`) and the view reads it whole
        anyway, so Django's spooled temporary file would only add a copy, or a write to disk."""
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            more = message.get("more_body", False)
            if not parts and not more:
                return io.BytesIO(message.get("body", b""))
            parts.append(message.get("body", b""))
            if not more:
                return io.BytesIO(b"".join(parts))

    async def send_response(self, response: Any, send: Any) -> None:
        # x-ratelimit-* come ready-encoded (gateway.api.views.with_rate_headers): on every answer, six headers through
        # Django's per-header checks cost more than the quota check that made them.
        if isinstance(send, _ResponseWatch):
            # A stream's own way of writing an error (Anthropic's, the Responses API's), for a shutdown's last word.
            send.translation = getattr(response, "translation", None)
        extra = getattr(response, "rate_headers", None)
        if not response.streaming and not response.cookies:
            # A whole answer (nearly every one): its head and body as they are, without Django's per-header
            # type checks and its 64 KB body chunks (uvicorn writes a body whole either way).
            headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
            if extra:
                headers.extend(extra)
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            await send({"type": "http.response.body", "body": response.content})
            return
        if not extra:
            await super().send_response(response, send)
            return

        async def send_with_rate_headers(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], *extra]}
            await send(message)

        await super().send_response(response, send_with_rate_headers)

    async def _serve(self, request: Any, receive: Any, send: Any, on_lost: list[Callable[[], None]] | None) -> None:
        if on_lost is None:
            await self._serve_listening(request, receive, send)
            return
        # The protocol tells us when the client is gone (portal.workers): the request is cancelled then, in its
        # own task, so the view ends (and with it the upstream call) without a second task awaiting receive().
        task = asyncio.current_task()
        assert task is not None

        def client_left() -> None:
            mark_client_left(request)
            task.cancel()

        on_lost.append(client_left)
        try:
            response = await self.get_response_async(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not getattr(request, "client_left", False):
                raise  # the server's cut (the end of a restart's graceful time): see _serve_gateway
            task.uncancel()  # the client left: the request is over, and nobody is there to answer
        finally:
            on_lost.clear()

    async def _serve_listening(self, request: Any, receive: Any, send: Any) -> None:
        """As Django does, under a server that does not say when a client leaves: whichever ends first — the
        response, or a task awaiting the client's disconnect — ends the other."""
        async def process_request() -> None:
            response = await self.get_response_async(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected while we were sending

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        worker = asyncio.create_task(process_request())
        try:
            await asyncio.wait([listener, worker], return_when=asyncio.FIRST_COMPLETED)
            if listener.done() and not worker.done():
                mark_client_left(request)
        finally:
            # Also when cancelled (the server's cut): the view must end (and record its call) before this request
            # is over.
            for task in (listener, worker):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                    await task


django_app = ASGIHandler()
gateway_app = GatewayHandler()


GATEWAY_PREFIXES = gateway_prefixes()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        else:
            await django_app(scope, receive, send)
        return
    gateway = scope["path"].startswith(GATEWAY_PREFIXES)
    limit = settings.MAX_REQUEST_BODY_BYTES if gateway else settings.MAX_ADMIN_REQUEST_BODY_BYTES
    length = declared_length(scope)
    if length is None:
        receive = CappedReceive(receive, send, limit, gateway)
    elif length > limit:
        await refuse_too_large(send, gateway)
        return
    if gateway:
        await _serve_gateway(scope, receive, send)
    else:
        await django_app(scope, receive, _WithRequestId(send))


class _WithRequestId:
    """The Django side's `send`: its responses get an x-request-id too (the gateway's views set their own)."""

    __slots__ = ("send",)

    def __init__(self, send: Any) -> None:
        self.send = send

    async def __call__(self, message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", ())
            if not any(name.lower() == b"x-request-id" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"x-request-id", new_request_id())]}
        await self.send(message)


class _ResponseWatch:
    """Passes the response on, noting whether it started, is a stream, and ended (a few attribute writes)."""

    __slots__ = ("ended", "send", "started", "streaming", "translation")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.started = self.streaming = self.ended = False
        self.translation: Translation | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            has_id = False
            for name, value in message.get("headers", ()):
                lowered = name.lower()
                if lowered == b"content-type":
                    self.streaming = value.startswith(b"text/event-stream")
                elif lowered == b"x-request-id":
                    has_id = True
            if not has_id:  # an answer no gateway view made (Django's 404 for an unknown path, a 400)
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", new_request_id())]}
        elif not message.get("more_body", False):
            self.ended = True
        await self.send(message)

    async def end_for_shutdown(self) -> None:
        """The graceful shutdown's time is over: a stream gets a last error event instead of being cut without
        a word; a request that has not answered yet gets a 503 envelope."""
        error = GatewayError(503, "The portal is restarting; this request was stopped. Retry it.",
                             code="server_shutting_down", headers={"Retry-After": "5"})
        with contextlib.suppress(Exception):  # the connection may be gone too
            if not self.started:
                response = error.response()
                headers = [(k.lower().encode(), v.encode()) for k, v in response.items()]
                headers.append((b"x-request-id", new_request_id()))
                await self.send({"type": "http.response.start", "status": 503, "headers": headers})
                await self.send({"type": "http.response.body", "body": response.content})
            elif self.streaming and not self.ended:
                translation = self.translation
                event = translation.error(error) if translation else b"data: " + orjson.dumps(error.body()) + b"\n\n"
                await self.send({"type": "http.response.body", "body": event})


_in_flight = 0  # gateway requests being served; the lifespan shutdown waits for the cut ones to record


async def _serve_gateway(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _in_flight
    watch = _ResponseWatch(send)
    _in_flight += 1
    try:
        await gateway_app(scope, receive, watch)
    except asyncio.CancelledError:
        # Only the server cancels a request (a client leaving ends it from inside, see GatewayHandler._serve).
        # The request ends here, answered, so the task is not re-cancelled: uvicorn moves on to the shutdown.
        await watch.end_for_shutdown()
    finally:
        _in_flight -= 1


_background: set[asyncio.Task[None]] = set()


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # LiteLLM only if some deployment needs it, imported in the background: the worker serves at once.
            _background.add(asyncio.create_task(upstream.prewarm()))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Requests cut at the end of the graceful time are ending concurrently: let them record their calls.
            deadline = time.monotonic() + 2
            while _in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            # Daily quota counts not yet in the database must survive the restart; queued token corrections and
            # what this worker's quota leases did not use go back to Redis.
            await quota.store().flush()
            await quota.store().aclose()
            await sync_to_async(quota.ledger.flush)()
            # The shared upstream session's connections, and LiteLLM's clients if it was loaded.
            await upstream.aclose()
            # Buffered usage records too (gunicorn's SIGTERM -> uvicorn runs this after in-flight requests).
            await sync_to_async(recorder.shutdown, thread_sensitive=False)()
            await send({"type": "lifespan.shutdown.complete"})
            return
