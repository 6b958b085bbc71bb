"""The gunicorn worker class: uvicorn's, with its graceful shutdown ending before gunicorn's.

On SIGTERM uvicorn stops accepting, lets requests in flight finish, then runs the ASGI lifespan shutdown
(which writes buffered usage records and daily quota counts). Left alone it waits for the last stream however
long it runs, and gunicorn SIGKILLs the worker at `graceful_timeout`: streams cut without a word, and the
buffer lost. Here uvicorn stops waiting a few seconds earlier; the requests still running are cancelled (a
stream gets a last error event, see portal/asgi.py) and the shutdown has time to write everything.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as BaseHttpToolsProtocol
from uvicorn_worker import UvicornWorker as BaseUvicornWorker

# Kept for the lifespan shutdown after uvicorn stops waiting for requests: end the cut streams, then flush.
SHUTDOWN_RESERVE_SECONDS = 5.0


def request_budget(graceful_timeout: float) -> float:
    """Seconds requests in flight get to finish after SIGTERM: gunicorn's graceful timeout less the reserve,
    and at least half of it (a short graceful timeout still lets short streams finish)."""
    return max(graceful_timeout - SHUTDOWN_RESERVE_SECONDS, graceful_timeout / 2)


class CoalescingTransport:
    """A transport whose writes within one turn of the event loop go out as one.

    uvicorn writes a response's head and its body separately, and every SSE event on its own. On a virtual
    machine each socket write that wakes the peer costs tens of microseconds of CPU, more than the rest of the
    write; joining what is written in the same turn (a head and its body, the events that arrived together)
    halves a plain response's writes at the price of one callback. Nothing waits: the joined write goes out
    before the loop looks for new events.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()  # what was written before close() still goes out, as with a plain transport
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpToolsProtocol(BaseHttpToolsProtocol):
    """uvicorn's httptools protocol over a CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


class UvicornWorker(BaseUvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": HttpToolsProtocol}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = request_budget(float(self.cfg.graceful_timeout))
