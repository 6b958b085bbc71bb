"""The OpenAI-compatible /v1 endpoints and health checks: thin async views."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from gateway import catalog, db, health, quota, redact, router
from gateway.api.calls import Call, finish, finish_unfinished
from gateway.api.validation import json_body, parse_chat, parse_embeddings, parse_speech
from gateway.auth import Principal, authenticate
from gateway.catalog import Route
from gateway.errors import GatewayError, not_found
from gateway.upstreams import UpstreamError, default_upstream, media, too_large

log = logging.getLogger(__name__)

View = Callable[..., Awaitable[HttpResponseBase]]
KEEPALIVE_SECONDS = 15.0


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


Render = Callable[[GatewayError, str], HttpResponseBase]


def openai_error(error: GatewayError, request_id: str) -> HttpResponseBase:
    return error.response()


# Django's stubs type views as sync; async views are awaited by Django all the same.
def gateway_view(*methods: str, render: Render = openai_error, id_header: str = "") -> Callable[[View], Any]:
    """Method check, request id, and the guarantee that every failure is an error envelope (OpenAI's, or the
    one `render` makes) and every call its view began is recorded, however the view ended."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            request_id = uuid.uuid4().hex
            request.request_id = request_id  # type: ignore[attr-defined]
            try:
                if request.method not in methods:
                    raise GatewayError(
                        405, f"Method {request.method} is not allowed here; use {', '.join(methods)}.",
                        code="method_not_allowed", headers={"Allow": ", ".join(methods)},
                    )
                response = await view(request, *args, **kwargs)
            except GatewayError as e:
                response = render(e, request_id)
                # Records the call its view refused or failed (its code as is, None included).
                finish_unfinished(request, e.status, e.code, e.message)
            except health.UNREACHABLE_ERRORS as e:
                log.error("%s on %s: a backing service is unreachable", type(e).__name__, request.path)
                error = health.unreachable(e)
                response = render(error, request_id)
                finish_unfinished(request, error.status, error.code or "unavailable", error.message)
            except asyncio.CancelledError:
                finish_unfinished(request, 499, "client_disconnected")
                raise
            except Exception:
                log.error("unhandled error on %s", request.path, exc_info=True)
                error = GatewayError(500, "Internal error in the portal.", code="internal_error")
                response = render(error, request_id)
                finish_unfinished(request, error.status, error.code, error.message)
            response["x-request-id"] = request_id
            if id_header:
                response[id_header] = request_id
            return response

        return wrapper

    return decorator


async def routes_for(principal: Principal, model: str) -> tuple[Route, ...]:
    snapshot = await catalog.get()
    routes = snapshot.routes(model)
    if not routes:
        raise not_found(f"The model '{model}' does not exist or is not enabled.", code="model_not_found",
                        param="model")
    if not principal.may_use(model):
        raise GatewayError(403, f"This API key may not use the model '{model}'.", code="model_not_allowed",
                           param="model")
    return routes


@gateway_view("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    call = Call.begin(request, "chat.completions")
    call.principal = await authenticate(request)
    body = json_body(request)
    call.take_body(body)
    chat = parse_chat(body)
    call.model, call.streamed = chat.model, chat.stream
    routes = await routes_for(call.principal, chat.model)
    media.refuse_other_modes(routes, chat.model, "chat completions", CHAT_MODES)
    routes = media.routes_for_images(routes, chat.images, chat.model)
    upstream = default_upstream()
    if chat.stream:
        first, chunks = await router.open_stream(upstream, routes, body, call)
        # From here the stream's generator owns the call and finishes it.
        response = sse_response(sse_events(call, first, chunks, include_usage=chat.include_usage))
        return with_rate_headers(response, call)
    result = await router.complete(upstream, routes, body, call)
    call.status = 200
    call.take_usage(result.get("usage"))
    call.response_body = result
    finish(call)
    return with_rate_headers(json_response(result), call)


# model_info.mode values a chat completion may go to ("" = not declared).
CHAT_MODES = ("chat", "completion", "responses")


@gateway_view("POST")
async def audio_speech(request: HttpRequest) -> HttpResponseBase:
    """OpenAI's text-to-speech: the audio bytes, with their content type."""
    call = Call.begin(request, "audio.speech")
    call.principal = await authenticate(request)
    body = json_body(request)
    call.take_body(body)
    speech = parse_speech(body)
    call.model = speech.model
    routes = await routes_for(call.principal, speech.model)
    media.refuse_other_modes(routes, speech.model, "text-to-speech", ("audio_speech",))
    routes = media.speech_routes(routes, speech.model, speech.response_format)
    operation = media.Operation(default_upstream().speech)
    result = await router.complete(operation, routes, {**body, "response_format": speech.response_format}, call)
    call.status = 200
    call.take_usage(result.get("usage"))
    call.response_body = {"content_type": result["content_type"], "bytes": len(result["audio"])}
    finish(call)
    response = HttpResponse(result["audio"], content_type=result["content_type"])
    return with_rate_headers(response, call)


@gateway_view("POST")
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    call = Call.begin(request, "embeddings")
    call.principal = await authenticate(request)
    body = json_body(request)
    call.take_body(body)
    call.model = parse_embeddings(body).model
    routes = await routes_for(call.principal, call.model)
    media.refuse_other_modes(routes, call.model, "embeddings", ("embedding",))
    result = await router.complete(media.Operation(default_upstream().embeddings), routes, body, call)
    call.status = 200
    call.take_usage(result.get("usage"))
    finish(call)
    return with_rate_headers(json_response(result), call)


def with_rate_headers(response: HttpResponseBase, call: Call) -> HttpResponseBase:
    """x-ratelimit-* of the call's admission, encoded; the gateway's ASGI handler adds them as they are (our own
    names and numbers, which need none of Django's checks)."""
    response.rate_headers = call.rate_headers()  # type: ignore[attr-defined]
    return response


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # Nginx would otherwise buffer the stream and defeat token-by-token delivery.
    response["X-Accel-Buffering"] = "no"
    return response


def _for_client(chunk: dict[str, Any], include_usage: bool) -> dict[str, Any] | None:
    """Drop the usage we asked for on the client's behalf when it did not ask itself."""
    if include_usage or "usage" not in chunk:
        return chunk
    if not chunk.get("choices"):
        return None
    return {k: v for k, v in chunk.items() if k != "usage"}


# Markers the relay hands the consumer in place of a chunk.
_KEEPALIVE = object()  # the upstream has been silent KEEPALIVE_SECONDS more
_STALLED = object()  # ... and now STREAM_IDLE_TIMEOUT: give up
_END = object()  # the upstream's stream is complete


class _Relay:
    """One stream's upstream reads, made by a single task, and a single timer watching their silences.

    The consumer asks for a chunk and awaits the queue, where the reader puts it (or its error, or the end) and
    the timer its keepalive and stall markers. So a chunk costs a future or two, not a task and a timeout of
    its own. The reader reads only when asked, never ahead: a read under way while the consumer is suspended
    elsewhere would make the caller's `chunks.aclose()` fail ("already running").
    """

    __slots__ = ("asked", "beat", "chunks", "idle_limit", "loop", "queue", "reader", "since", "timer")

    def __init__(self, chunks: AsyncIterator[dict[str, Any]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.chunks = chunks
        self.idle_limit: float = settings.STREAM_IDLE_TIMEOUT
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.asked: asyncio.Future[None] = self.loop.create_future()
        # When the read under way was asked for (None: none is), and when its silence last got a keepalive.
        self.since: float | None = None
        self.beat = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.reader = self.loop.create_task(self._read())

    def get(self) -> Awaitable[Any]:
        """The next chunk or marker; a read is asked for unless one is under way or its result is waiting."""
        if self.since is None and self.queue.empty():
            self.since = self.beat = self.loop.time()
            self.asked.set_result(None)
            if self.timer is None:
                self.timer = self.loop.call_at(self.since + min(KEEPALIVE_SECONDS, self.idle_limit), self._watch)
        return self.queue.get()

    async def _read(self) -> None:
        chunks, queue = self.chunks, self.queue
        try:
            while True:
                await self.asked
                self.asked = self.loop.create_future()
                chunk = await anext(chunks)
                self.since = None
                queue.put_nowait(chunk)
        except StopAsyncIteration:
            self.since = None
            queue.put_nowait(_END)
        except BaseException as e:
            self.since = None
            queue.put_nowait(e)  # raised by the consumer, as if it had read the chunk itself
            if not isinstance(e, Exception):
                raise  # a cancellation (ours, once the consumer is gone) ends the task as one

    def _watch(self) -> None:
        """The timer: a keepalive every KEEPALIVE_SECONDS of a read's silence, the stall at STREAM_IDLE_TIMEOUT.

        It fires when the next of them could be due, so a chunk costs it nothing: a read that ended meanwhile
        only moves the next check on.
        """
        self.timer = None
        now, since = self.loop.time(), self.since
        if since is None:
            return  # no read under way: the next one arms the timer again
        if now - since >= self.idle_limit:
            self.queue.put_nowait(_STALLED)
            return
        if now - self.beat >= KEEPALIVE_SECONDS:
            self.queue.put_nowait(_KEEPALIVE)
            self.beat = now
        self.timer = self.loop.call_at(min(since + self.idle_limit, self.beat + KEEPALIVE_SECONDS), self._watch)

    async def aclose(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.reader.done():
            # The client went away (or the upstream stalled) mid-read: stop the read so the upstream closes.
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def _with_keepalive(chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Yield chunks, and None whenever the upstream has been silent for KEEPALIVE_SECONDS.

    An upstream silent for longer than STREAM_IDLE_TIMEOUT is given up on: the read is cancelled (which
    closes the upstream connection) and the stream ends with an error event.
    """
    relay = _Relay(chunks)
    try:
        while True:
            item = await relay.get()
            if item is _KEEPALIVE:
                yield None
            elif item is _END:
                return
            elif item is _STALLED:
                raise UpstreamError(504, f"The provider sent nothing for {relay.idle_limit:g}s; the stream was cut.",
                                    code="upstream_stream_stalled")
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        await relay.aclose()


async def sse_events(
    call: Call, first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]], *, include_usage: bool
) -> AsyncIterator[bytes]:
    """Forward each upstream chunk as it arrives; a failure mid-stream ends with an error event."""
    call.status = 200
    # The whole stream is capped like a whole answer: an endless stream would otherwise grow call.stream_text.
    budget = settings.MAX_UPSTREAM_RESPONSE_BYTES
    try:
        if first is not None:
            call.mark_first_token()
            call.take_chunk(first)
            if (out := _for_client(first, include_usage)) is not None:
                event = b"data: " + orjson.dumps(out) + b"\n\n"
                budget -= len(event)
                yield event
        # Closed before `chunks` (finally, below) however this generator ends: its read must be stopped first.
        async with contextlib.aclosing(_with_keepalive(chunks)) as relayed:
            async for chunk in relayed:
                if chunk is None:
                    yield b": keepalive\n\n"
                    continue
                call.take_chunk(chunk)
                if (out := _for_client(chunk, include_usage)) is not None:
                    event = b"data: " + orjson.dumps(out) + b"\n\n"
                    budget -= len(event)
                    if budget < 0:
                        assert call.route is not None
                        raise too_large(call.route, settings.MAX_UPSTREAM_RESPONSE_BYTES)
                    yield event
        yield b"data: [DONE]\n\n"
    except UpstreamError as e:
        # Headers (200) are already sent: the error travels in-band, never as a silent success.
        call.error_code, call.error_message = e.code, e.message
        yield b"data: " + orjson.dumps(e.body()) + b"\n\n"
    except Exception:
        # A bug of ours, or an upstream failure nobody translated: still an error event, never a cut connection.
        log.error("stream %s failed", call.request_id, exc_info=True)
        error = GatewayError(500, "Internal error in the portal.", code="internal_error")
        call.error_code, call.error_message = error.code, error.message
        yield b"data: " + orjson.dumps(error.body()) + b"\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        if health.server_state.cutting_requests:  # a restart's graceful time ran out, the client was there
            call.error_code, call.error_message = "server_shutting_down", "Stopped by the portal's shutdown."
        else:
            call.client_disconnected = True
            call.error_code = "client_disconnected"
        raise
    finally:
        try:
            await chunks.aclose()  # type: ignore[attr-defined]
        finally:
            finish(call)  # the usage record and the quota settlement, whatever closing the upstream did


@gateway_view("GET")
async def list_models(request: HttpRequest) -> HttpResponse:
    principal = await authenticate(request)
    snapshot = await catalog.get()
    data = [
        _model_object(name, snapshot.routes(name), snapshot.created)
        for name in snapshot.names()
        if principal.may_use(name)
    ]
    return json_response({"object": "list", "data": data})


@gateway_view("GET")
async def retrieve_model(request: HttpRequest, model: str) -> HttpResponse:
    principal = await authenticate(request)
    snapshot = await catalog.get()
    routes = snapshot.routes(model)
    if not routes or not principal.may_use(model):
        raise not_found(f"The model '{model}' does not exist or is not enabled.", code="model_not_found",
                        param="model")
    return json_response(_model_object(model, routes, snapshot.created))


def _model_object(name: str, routes: tuple[Route, ...], created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": routes[0].provider_name}


@gateway_view("GET")
async def quota_status(request: HttpRequest) -> HttpResponse:
    """The caller's remaining quota per model: its key's own limits and the providers' behind each model."""
    principal = await authenticate(request)
    snapshot = await catalog.get()
    names = [name for name in snapshot.names() if principal.may_use(name)]
    if model := request.GET.get("model"):
        names = [name for name in names if name == model]
    data = await sync_to_async(_quota_report)(principal, snapshot, names)
    return json_response({"object": "list", "data": data})


def _quota_report(principal: Principal, snapshot: catalog.Snapshot, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        deployments = [
            {"deployment": route.id, "provider": route.provider_name, "limits": quota.usage_of(list(route.limits))}
            for route in snapshot.routes(name)
        ]
        key = quota.usage_of(quota.key_limits(principal, name))
        out.append({"model": name, "key_limits": key, "deployments": deployments})
    return out


@gateway_view("GET", "POST", "PUT", "PATCH", "DELETE")
async def v1_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    raise not_found(f"Unknown endpoint: {request.method} {request.path}.", code="unknown_url")


# --- health ---


@gateway_view("GET", "HEAD")
async def liveliness(request: HttpRequest) -> HttpResponse:
    return json_response({"status": "alive"})


def _check_db() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as e:
        connection.close()
        return f"error: {redact.redact(type(e).__name__)}"


async def _check_cache() -> str:
    try:
        await cache.aset("health:probe", 1, timeout=10)
        return "ok" if await cache.aget("health:probe") == 1 else "error: read back failed"
    except Exception as e:
        return f"error: {type(e).__name__}"


@gateway_view("GET", "HEAD")
async def readiness(request: HttpRequest) -> HttpResponse:
    # Concurrently: a dead service must not make the probe wait for each check in turn.
    db_state, cache_state, broker_state = await asyncio.gather(
        sync_to_async(db.managed(_check_db))(), _check_cache(), health.check_broker()
    )
    ready = db_state == cache_state == broker_state == "ok"
    return json_response(
        {
            "status": "ready" if ready else "unavailable",
            "db": db_state,
            "cache": cache_state,
            "cache_backend": "redis" if settings.REDIS_URL else "in-process",
            "broker": broker_state,
        },
        status=200 if ready else 503,
    )
