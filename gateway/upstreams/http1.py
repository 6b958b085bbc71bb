"""A lean HTTP/1.1 client for the passthrough's whole answers on a direct connection: pooled keep-alive
connections per event loop.

Every upstream call goes through aiohttp (gateway/upstreams/client.py) except this one case: a non-streamed
answer from a provider reached without a proxy, the commonest call of all. There aiohttp builds a request
object, a response object, a stream reader, timer handles and trace hooks per call, and measured at two to four
times this client's CPU per request (bench/results/2026-12-04-upstream-client.md; `bench/upstream_client.py`
measures both on this machine), enough to put the portal over its overhead budget. This one does only what the
call needs: the request in one write, the answer parsed by httptools (the C parser uvicorn uses), the connection
back to the pool.

Only what an OpenAI-compatible upstream needs: POST with a body, HTTP or HTTPS, Content-Length, chunked or
close-delimited answers, keep-alive. No redirects, cookies or compression (no Accept-Encoding is sent), and no
proxies: a call that must go through a proxy takes aiohttp (the passthrough decides). Failures raise
`ConnectionFailed` or `TimeoutError`; the caller turns them into the gateway's errors.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httptools
import yarl

# An idle connection is not reused after this long: servers close theirs (uvicorn after 5 s, most after 60 s
# or more), and one closed under us costs a retry.
IDLE_SECONDS = 4.0
MAX_IDLE_PER_HOST = 64


class ConnectionFailed(Exception):
    """The connection could not be made, or broke before the whole answer came."""

    def __init__(self, message: str, *, before_answer: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.before_answer = before_answer  # nothing of the answer came: the request may not have been read
        self.refused = refused  # the connection itself failed (nothing was sent)


class TooLarge(Exception):
    """The answer went over the caller's cap (the connection is dropped)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class _Exchange:
    """One request's answer, filled in by the parser's callbacks."""

    cap: int
    future: asyncio.Future[Response]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    received: bool = False  # any byte of the answer
    too_large: bool = False
    keep_alive: bool = False
    name: bytes = b""


class _Connection(asyncio.Protocol):
    def __init__(self, key: tuple[str, int, bool]) -> None:
        self.key = key
        self.transport: Any = None
        self.parser: Any = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = 0.0

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.future.done():
            self.close()  # bytes nobody asked for: this connection can't be trusted with the next request
            return
        exchange.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionFailed("The upstream switched protocols."))
        except httptools.HttpParserError as e:
            self._fail(ConnectionFailed(f"The upstream's answer is not valid HTTP ({type(e).__name__})."))
        if exchange.too_large:
            self._fail(TooLarge())

    def eof_received(self) -> bool | None:
        self.closed = True
        exchange = self.exchange
        if exchange is not None and not exchange.future.done() and exchange.status and not exchange.too_large \
                and "content-length" not in exchange.headers and "transfer-encoding" not in exchange.headers:
            # An answer without a length is delimited by the end of the connection (httptools has no feed_eof).
            exchange.future.set_result(Response(exchange.status, exchange.headers, b"".join(exchange.chunks)))
        self._fail(ConnectionFailed("The upstream closed the connection mid-answer.",
                                    before_answer=self.exchange is not None and not self.exchange.received))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionFailed("The connection to the upstream was lost.",
                                    before_answer=self.exchange is not None and not self.exchange.received))

    # --- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.exchange is not None
        if name:
            self.exchange.name = name.lower()
            self.exchange.headers[self.exchange.name.decode("latin-1")] = value.decode("latin-1")
        elif self.exchange.name:  # a value continued over several reads
            self.exchange.headers[self.exchange.name.decode("latin-1")] += value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.exchange is not None
        self.exchange.status = self.parser.get_status_code()
        length = self.exchange.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.exchange.cap:
            self.exchange.too_large = True  # (an exception here would only come back as a parser error)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.size += len(body)
        if exchange.size > exchange.cap:
            exchange.too_large = True
        if not exchange.too_large:
            exchange.chunks.append(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        # Asked now: once the message is over, the parser no longer knows.
        exchange.keep_alive = self.parser.should_keep_alive()
        if not exchange.future.done() and not exchange.too_large:
            exchange.future.set_result(Response(exchange.status, exchange.headers, b"".join(exchange.chunks)))

    # --- ours

    def send(self, payload: bytes, cap: int) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.exchange = _Exchange(cap, future)
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(payload)
        return future

    def reusable(self) -> bool:
        return not self.closed and self.exchange is not None and self.exchange.keep_alive \
            and not self.transport.is_closing()

    def _fail(self, error: Exception) -> None:
        if self.exchange is not None and not self.exchange.future.done():
            self.exchange.future.set_exception(error)
        if isinstance(error, TooLarge | ConnectionFailed):
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Kept-alive connections per host for one event loop."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int, bool], list[_Connection]] = {}

    async def post(self, url: yarl.URL, headers: dict[str, str], body: bytes, *, connect_timeout: float,
                   cap: int) -> Response:
        """POST and read the whole answer. The caller bounds the whole exchange (asyncio.timeout); a
        cancellation drops the connection, so the upstream sees the request abandoned."""
        key = (url.host or "", url.port or (443 if url.scheme == "https" else 80), url.scheme == "https")
        payload = request_bytes(url, headers, body)
        for attempt in (1, 2):
            connection, reused = await self._connection(key, connect_timeout)
            try:
                response = await connection.send(payload, cap)
            except ConnectionFailed as e:
                connection.close()
                # A kept-alive connection the server had just closed: nothing was answered, try a fresh one.
                if reused and e.before_answer and attempt == 1:
                    continue
                raise
            except BaseException:
                connection.close()  # timed out, cancelled, too large: the answer is abandoned with its socket
                raise
            if connection.reusable():
                self._release(key, connection)
            else:
                connection.close()
            return response
        raise AssertionError("unreachable")

    async def _connection(self, key: tuple[str, int, bool], connect_timeout: float) -> tuple[_Connection, bool]:
        idle = self.idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS:
                return connection, True
            connection.close()
        host, port, tls = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(key), host, port, ssl=_tls_context() if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise ConnectionFailed(f"Timed out connecting to {host}:{port}.", before_answer=True,
                                   refused=True) from None
        except (OSError, ssl.SSLError) as e:
            raise ConnectionFailed(f"Could not connect to {host}:{port} ({type(e).__name__}).", before_answer=True,
                                   refused=True) from None
        return connection, False

    def _release(self, key: tuple[str, int, bool], connection: _Connection) -> None:
        connection.exchange = None
        connection.idle_since = time.monotonic()
        idle = self.idle.setdefault(key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            connection.close()
            return
        idle.append(connection)

    def close(self) -> None:
        for connections in self.idle.values():
            for connection in connections:
                connection.close()
        self.idle.clear()


def request_bytes(url: yarl.URL, headers: dict[str, str], body: bytes) -> bytes:
    """The request head and body, ready for one write. A CR or LF in a header (from an operator's config)
    would let it smuggle another header or request: refused."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    if url.explicit_port:
        host = f"{host}:{url.port}"
    lines = [f"POST {url.raw_path_qs or '/'} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name!r} holds a character a header may not hold")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="strict") + body


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()
