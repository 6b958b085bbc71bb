"""The one SSE relay: upstream chat chunks in, one API's stream events out.

OpenAI chat completions, Anthropic Messages and OpenAI Responses streams all go through `relay`; what differs
between them is the `Translation` passed to it (how a chunk, a keepalive, the end and an error are written).
So the stream's bookkeeping — the first token, the byte budget, keepalives, the stall timeout, a client that
leaves, the server's shutdown, and the call's record — is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, Protocol

import orjson
from django.conf import settings
from django.http import StreamingHttpResponse

from gateway.api.calls import SHUTDOWN_MESSAGE, Call, finish
from gateway.errors import GatewayError
from gateway.upstreams import UpstreamError, too_large

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0


class Translation(Protocol):
    """Turns the upstream's chat chunks into one API's stream events (b"" writes nothing)."""

    def start(self) -> bytes: ...

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def keepalive(self) -> bytes: ...

    async def end(self) -> bytes: ...

    def error(self, error: GatewayError) -> bytes: ...


class OpenAIChunks:
    """OpenAI's own stream: each chunk as a `data:` event, `[DONE]` at the end."""

    __slots__ = ("include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def start(self) -> bytes:
        return b""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if not self.include_usage and "usage" in chunk:
            # The usage was asked for on the client's behalf (to count tokens), not by the client.
            if not chunk.get("choices"):
                return b""
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def keepalive(self) -> bytes:
        return b": keepalive\n\n"

    async def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, error: GatewayError) -> bytes:
        return b"data: " + orjson.dumps(error.body()) + b"\n\n"


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # Nginx would otherwise buffer the stream and defeat token-by-token delivery.
    response["X-Accel-Buffering"] = "no"
    return response


async def relay(
    call: Call, translation: Translation, first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """Forward each upstream chunk as it arrives; a failure mid-stream ends with an error event.

    The stream's generator owns the call from here and records it however the stream ends.
    """
    call.status = 200
    # The whole stream is capped like a whole answer: an endless stream would otherwise grow call.stream_text.
    budget = settings.MAX_UPSTREAM_RESPONSE_BYTES
    try:
        if opening := translation.start():
            yield opening
        if first is not None:
            call.mark_first_token()
            call.take_chunk(first)
            if out := translation.feed(first):
                budget -= len(out)
                yield out
        # Closed before `chunks` (finally, below) however this generator ends: its read must be stopped first.
        async with contextlib.aclosing(_with_keepalive(chunks)) as relayed:
            async for chunk in relayed:
                if chunk is None:
                    yield translation.keepalive()
                    continue
                call.take_chunk(chunk)
                if out := translation.feed(chunk):
                    budget -= len(out)
                    if budget < 0:
                        assert call.route is not None
                        raise too_large(call.route, settings.MAX_UPSTREAM_RESPONSE_BYTES)
                    yield out
        yield await translation.end()
    except UpstreamError as e:
        # Headers (200) are already sent: the error travels in-band, never as a silent success.
        call.error_code, call.error_message = e.code, e.message
        yield translation.error(e)
    except Exception:
        # A bug of ours, or an upstream failure nobody translated: still an error event, never a cut connection.
        log.error("stream %s failed", call.request_id, exc_info=True)
        error = GatewayError(500, "Internal error in the portal.", code="internal_error")
        call.error_code, call.error_message = error.code, error.message
        yield translation.error(error)
    except (asyncio.CancelledError, GeneratorExit):
        if call.client_disconnected:  # marked by the ASGI layer before it cancelled the request
            call.error_code = "client_disconnected"
        else:  # a restart's graceful time ran out, the client was there
            call.error_code, call.error_message = "server_shutting_down", SHUTDOWN_MESSAGE
        raise
    finally:
        try:
            await chunks.aclose()  # type: ignore[attr-defined]
        finally:
            finish(call)  # the usage record and the quota settlement, whatever closing the upstream did


# Markers the reader and the timer hand the consumer in place of a chunk.
_KEEPALIVE = object()  # the upstream has been silent KEEPALIVE_SECONDS more
_STALLED = object()  # ... and now STREAM_IDLE_TIMEOUT: give up
_END = object()  # the upstream's stream is complete


class _Reader:
    """One stream's upstream reads, made by a single task, and a single timer watching their silences.

    The consumer asks for a chunk and awaits the queue, where the reader puts it (or its error, or the end) and
    the timer its keepalive and stall markers: a chunk needs no task or timeout of its own. The reader reads
    only when asked, never ahead: a read under way while the consumer is suspended elsewhere would make the
    caller's `chunks.aclose()` fail ("already running").
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
    reader = _Reader(chunks)
    try:
        while True:
            item = await reader.get()
            if item is _KEEPALIVE:
                yield None
            elif item is _END:
                return
            elif item is _STALLED:
                raise UpstreamError(504, f"The provider sent nothing for {reader.idle_limit:g}s; the stream was cut.",
                                    code="upstream_stream_stalled")
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        await reader.aclose()
