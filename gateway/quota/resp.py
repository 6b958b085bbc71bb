"""A lean, pipelined Redis client for the quota store: one connection per event loop, many calls in flight.

Every /v1 request runs a quota script in Redis, so the client's own cost is paid per request. redis-py's
asyncio client (which the rest of the portal keeps using) spends about 170 µs of CPU per call here: a pool
checkout under a lock, arguments encoded through several layers, a reply parser built for every type. This
one writes the encoded command to one shared socket and resolves a future when the reply comes back: about
20-30 µs. Redis answers the commands of one connection in the order they were sent, so concurrent callers
just queue their futures, and a burst of requests shares one connection instead of checking out many.

Only what the quota store needs: RESP2 commands and replies (integers, strings, arrays, errors), AUTH and
SELECT from the URL (redis://, rediss://, unix://), scripts by SHA with a fallback to EVAL, a connect timeout
and a reply timeout. Failures raise redis-py's own exception classes, so callers handle both clients alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.exceptions
from redis.asyncio.connection import SSLConnection, parse_url

OnReply = Callable[[Any], None]  # called with the reply, or with the exception that stands for it


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


class _Error:
    """An error reply, kept apart from values so it can be raised in the caller that sent the command."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at `pos`: (value, position after it); raises _Incomplete if it is not all in."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buf[pos], bytes(buf[pos + 1 : end]), end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), pos
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            if pos < len(buf) and buf[pos] == 0x3A:  # an integer (the quota script's replies): no call
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    raise _Incomplete
                items.append(int(buf[pos + 1 : end]))
                pos = end + 2
            else:
                item, pos = parse(buf, pos)
                items.append(item)
        return items, pos
    if kind == 0x2B:  # '+' simple string
        return line.decode(), pos
    if kind == 0x2D:  # '-' error
        return _Error(line.decode(errors="replace")), pos
    raise redis.exceptions.ConnectionError(f"Redis sent an unknown reply type {chr(kind)!r}")


class _Connection(asyncio.Protocol):
    """One socket: commands go out as they come; replies resolve the oldest waiting future."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiters: deque[tuple[asyncio.Future[Any] | OnReply, float]] = deque()
        self.outgoing: list[bytes] = []
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        # One timer per connection, not one per call: a reply overdue by `timeout` fails the connection.
        self.watchdog = self.loop.call_later(1.0, self._watch)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        try:
            while self.waiters:
                value, pos = parse(self.buffer, pos)
                waiter, _ = self.waiters.popleft()
                if isinstance(value, _Error):
                    value = redis.exceptions.ResponseError(value.message)
                if not isinstance(waiter, asyncio.Future):
                    waiter(value)  # a callback: called here, a turn of the loop sooner than a future's
                elif waiter.done():
                    continue  # its caller gave up (cancelled); the reply still had to be consumed in order
                elif isinstance(value, Exception):
                    waiter.set_exception(value)
                else:
                    waiter.set_result(value)
        except _Incomplete:
            pass
        except redis.exceptions.ConnectionError as e:
            self._fail(e)
            return
        del self.buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.exceptions.ConnectionError("The connection to Redis was lost."))

    def request(self, payload: bytes) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        if self.closed or self.transport is None:
            future.set_exception(redis.exceptions.ConnectionError("The connection to Redis is closed."))
            return future
        self.waiters.append((future, self.loop.time()))
        if not self.outgoing:
            self.loop.call_soon(self._send)
        # Commands of requests handled in the same turn of the loop go out in one write: on this kind of
        # machine a socket write (which wakes Redis) costs far more than building the command.
        self.outgoing.append(payload)
        return future

    def request_now(self, payload: bytes, on_reply: OnReply) -> None:
        """Write a command at once (after any queued before it), for a caller that already runs at the end of
        the loop's turn; `on_reply` gets the reply, or the exception, as soon as it is read."""
        if self.closed or self.transport is None:
            on_reply(redis.exceptions.ConnectionError("The connection to Redis is closed."))
            return
        self.waiters.append((on_reply, self.loop.time()))
        self.outgoing.append(payload)
        self._send()

    def _send(self) -> None:
        if self.outgoing and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def _watch(self) -> None:
        if self.closed:
            return
        if self.waiters and self.loop.time() - self.waiters[0][1] > self.timeout:
            self._fail(redis.exceptions.TimeoutError(f"Redis did not answer within {self.timeout:g}s."))
            return
        self.watchdog = self.loop.call_later(1.0, self._watch)

    def _fail(self, error: Exception) -> None:
        """Fail every waiting call and drop the socket: after a lost or late reply, order can't be trusted."""
        self.closed = True
        if self.watchdog is not None:
            self.watchdog.cancel()
        while self.waiters:
            waiter, _ = self.waiters.popleft()
            if not isinstance(waiter, asyncio.Future):
                waiter(error)
            elif not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


def _forgotten(error: redis.exceptions.ResponseError) -> bool:
    """Redis does not know the script (restarted, or SCRIPT FLUSH): it must be sent whole, with EVAL."""
    return str(error).startswith("NOSCRIPT")


def _deliver(done: asyncio.Future[Any], on_reply: OnReply) -> None:
    on_reply(asyncio.CancelledError() if done.cancelled() else done.exception() or done.result())


class Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts so


class Client:
    """Connects on first use (and again after a failure); use one per event loop."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0, timeout: float = 5.0) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        self.host = str(options.get("host") or "localhost")
        self.port = int(options.get("port") or 6379)
        self.path = options.get("path")
        self.tls = options.get("connection_class") is SSLConnection
        self.tls_verify = str(options.get("ssl_cert_reqs") or "required").lower() not in ("none", "optional")
        self.ca_certs: str | None = options.get("ssl_ca_certs")
        self.username = options.get("username")
        self.password = options.get("password")
        self.db = int(options.get("db") or 0)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    async def call(self, *args: Any) -> Any:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connected()
        return await connection.request(encode(args))

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, and EVAL (which also caches the script) when Redis does not know it yet (e.g. restarted)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.ResponseError as e:
            if not _forgotten(e):
                raise
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    def run_now(self, script: Script, keys: list[str], args: list[Any], on_reply: OnReply) -> None:
        """run(), from a loop callback, with no task in between: on a live connection the command is written
        before this returns and `on_reply` is called as the reply is read (with the reply, or the exception).
        The NOSCRIPT fallback and a first connect take the async path."""
        connection = self._connection
        if connection is None or connection.closed:
            self._track(asyncio.ensure_future(self.run(script, keys, args)), on_reply)
            return

        def first(reply: Any) -> None:
            if isinstance(reply, redis.exceptions.ResponseError) and _forgotten(reply):
                self._track(asyncio.ensure_future(self.call("EVAL", script.source, len(keys), *keys, *args)), on_reply)
            else:
                on_reply(reply)

        connection.request_now(encode(("EVALSHA", script.sha, len(keys), *keys, *args)), first)

    def _track(self, task: asyncio.Future[Any], on_reply: OnReply) -> None:
        # Held until done (the loop keeps only weak references to tasks), then its result handed on.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: _deliver(done, on_reply))

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection._fail(redis.exceptions.ConnectionError("The client was closed."))
            self._connection = None

    async def _connected(self) -> _Connection:
        # One connect at a time: the callers of a burst wait for the same one. Shielded, so a caller that is
        # cancelled (its client left) does not cancel the connect the others wait for.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        connection = await asyncio.shield(self._connecting)
        self._connection = connection
        return connection

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.path:
                    _, connection = await loop.create_unix_connection(lambda: _Connection(self.timeout), self.path)
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self.timeout), self.host, self.port, ssl=self._tls_context()
                    )
                setup: list[tuple[Any, ...]] = []
                if self.password:
                    setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
                if self.db:
                    setup.append(("SELECT", self.db))
                for args in setup:
                    await connection.request(encode(args))
        except TimeoutError:
            raise redis.exceptions.TimeoutError("Timed out connecting to Redis.") from None
        except OSError as e:
            raise redis.exceptions.ConnectionError(f"Could not connect to Redis ({type(e).__name__}).") from None
        return connection

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_certs)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
