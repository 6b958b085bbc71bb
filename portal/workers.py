"""The gunicorn worker class: uvicorn's, with its graceful shutdown ending before gunicorn's.

On SIGTERM uvicorn stops accepting, lets requests in flight finish, then runs the ASGI lifespan shutdown
(which writes buffered usage records and daily quota counts). Left alone it waits for the last stream however
long it runs, and gunicorn SIGKILLs the worker at `graceful_timeout`: streams cut without a word, and the
buffer lost. Here uvicorn stops waiting a few seconds earlier; the requests still running are cancelled (a
stream gets a last error event, see portal/asgi.py) and the shutdown has time to write everything.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn import Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as BaseHttpToolsProtocol
from uvicorn_worker import UvicornWorker as BaseUvicornWorker

from portal import memory
from portal.lean import ON_LOST

log = logging.getLogger(__name__)

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
    """uvicorn's httptools protocol over a CoalescingTransport, telling the app at once when its client is gone.

    Each request's scope carries a list under portal.lean.ON_LOST; the app puts a callback in it (portal.asgi
    cancels the request), called when the connection is lost before the response is complete. uvicorn alone
    only notes the loss for the app's next `receive()`, which the app would need a task per request to await.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[ON_LOST] = []  # type: ignore[literal-required]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        cut = cycle is not None and not cycle.response_complete
        super().connection_lost(exc)
        if cut:
            callbacks: list[Any] = cycle.scope.get(ON_LOST, [])  # type: ignore[union-attr, assignment]
            for callback in callbacks:
                callback()


class Board:
    """How many connections each live worker holds, in memory the master maps before it forks the workers.

    One slot per worker (the master hands them out when it creates a worker and takes them back when the
    worker exits); a slot holds the count plus one, so 0 is a free slot. Aligned 8-byte words: a worker's
    write is seen whole by the others, and nobody needs a lock for a hint.
    """

    SLOTS = 64

    def __init__(self) -> None:
        self.memory = mmap.mmap(-1, self.SLOTS * 8)
        self.words = memoryview(self.memory).cast("q")

    def claim(self) -> int:
        for slot in range(self.SLOTS):
            if self.words[slot] == 0:
                self.words[slot] = 1
                return slot
        return -1  # more workers than slots: that worker balances against nobody

    def release(self, slot: int) -> None:
        if slot >= 0:
            self.words[slot] = 0

    def publish(self, slot: int, held: int) -> None:
        if slot >= 0:
            self.words[slot] = held + 1

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The smallest count among the other live workers (None when there are none)."""
        fewest = None
        for other in range(self.SLOTS):
            value = self.words[other]
            if value and other != slot and (fewest is None or value - 1 < fewest):
                fewest = value - 1
        return fewest


# Made at import, which happens in gunicorn's master (the worker class is loaded there): every worker forked
# afterwards shares these pages.
board = Board()


class Acceptor:
    """Accepts connections from a listening socket the workers share, leaving a burst to the emptiest worker.

    uvloop (like asyncio) accepts every connection waiting on a readable socket in one go, and every worker
    polls the same socket: the worker that wakes first takes a whole burst, so 31 of 32 keep-alive clients
    landed on one worker, which then did nearly all the work (and a crash of it cut them all). Here a worker
    takes one connection per turn of its loop, and none while it holds more than one connection above the
    emptiest of its peers (read from the board) — for at most DEFER_MAX: a peer that is stuck, or too starved
    of CPU to accept, must not keep clients waiting.
    """

    __slots__ = ("deferred", "factory", "held", "loop", "slot", "sock", "waiting")

    DEFER_STEP = 0.001
    DEFER_MAX = 0.05

    def __init__(self, sock: socket.socket, factory: Any, loop: asyncio.AbstractEventLoop, held: Any,
                 slot: int) -> None:
        self.sock, self.factory, self.loop, self.held, self.slot = sock, factory, loop, held, slot
        self.deferred = 0.0  # seconds this worker has held back since it last accepted
        self.waiting = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        held = self.held()
        board.publish(self.slot, held)
        fewest = board.fewest_elsewhere(self.slot)
        if fewest is not None and held > fewest + 1 and self.deferred < self.DEFER_MAX:
            self.deferred += self.DEFER_STEP
            self._pause(self.DEFER_STEP)
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it
        except OSError as e:
            # Out of file descriptors, say: stop taking connections for a moment rather than spin on them.
            log.error("accept failed: %s; pausing accepts for 0.5 s", e)
            self._pause(0.5)
            return
        self.deferred = 0.0
        board.publish(self.slot, held + 1)
        conn.setblocking(False)
        self.loop.create_task(self.loop.connect_accepted_socket(self.factory, conn))
        self._pause(0)  # one per turn: the peers' polls see the rest of a burst

    def _pause(self, seconds: float) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.waiting = True
        self.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        if self.waiting:
            self.waiting = False
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        self.waiting = False
        self.loop.remove_reader(self.sock.fileno())


class FairServer(Server):
    """uvicorn's server, taking connections from gunicorn's shared sockets through Acceptors."""

    acceptors: list[Acceptor]
    slot = -1  # this worker's place on the board

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            await super().startup()
            return
        await super().startup(sockets=[])  # the lifespan, and no asyncio server of uvicorn's own
        config, loop = self.config, asyncio.get_running_loop()
        self.trimmer = loop.create_task(memory.trim_periodically())

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        # gunicorn hands its listeners wrapped; the socket inside is what the loop polls.
        def held() -> int:
            return len(self.server_state.connections)

        self.acceptors = [Acceptor(getattr(s, "sock", s), create_protocol, loop, held, self.slot) for s in sockets]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for acceptor in getattr(self, "acceptors", ()):
            acceptor.close()
        if trimmer := getattr(self, "trimmer", None):
            trimmer.cancel()
        await super().shutdown(sockets)


class UvicornWorker(BaseUvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": HttpToolsProtocol}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = request_budget(float(self.cfg.graceful_timeout))
        # Made in the master, before the fork: the slot is the master's to hand out and (child_exit) take back.
        self.slot = board.claim()

    async def _serve(self) -> None:
        # uvicorn_worker's _serve with FairServer in place of uvicorn's Server.
        self.config.app = self.wsgi
        server = FairServer(config=self.config)
        server.slot = self.slot
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
