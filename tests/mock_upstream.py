"""A fast, dependency-free mock of an OpenAI-compatible upstream, for tests and benchmarks.

It is a real HTTP/1.1 server (raw ``asyncio.start_server``, hand-written parser) so the gateway under test
exercises its genuine HTTP client stack: keep-alive, chunked SSE, status codes, dropped sockets.

In-process (pytest)::

    with MockUpstream() as upstream:                      # background thread with its own event loop
        upstream.behaviour = Behaviour(status=429, headers={"Retry-After": "1"})
        upstream.set_behaviour("backup-model", Behaviour(reply="from backup"))
        ... point the gateway at upstream.base_url ...
        assert upstream.requests[-1].json["model"] == "backup-model"

Standalone (benchmarks)::

    python -m tests.mock_upstream --port 9100 --chunk-delay 0.005 --chunks 20

``chunk_delay`` (``--chunk-delay``) paces a stream's generated events on a schedule (event i at i x chunk_delay
after the first, however long this process takes to write them): the role chunk, the content (and tool call)
chunks and the finish chunk. The usage chunk and ``[DONE]`` follow the finish chunk at once, as OpenAI's do, so
a client that asks for usage (the portal always does) waits no longer than one that does not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

import orjson

DEFAULT_REPLY = "Hello from mock"
DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "mock-model", "text-embedding-3-small")
EMBEDDING_DIMS = 8
MAX_HEAD_BYTES = 64 * 1024
READ_SIZE = 64 * 1024
# Benchmarks open hundreds of connections at once; the default backlog (100) would make the kernel drop SYNs.
LISTEN_BACKLOG = 4096

_REASONS: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "not_found"),
    408: ("timeout_error", "timeout"),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
# Bodies that start like a real completion/chunk but are cut off, so clients fail in their JSON parser.
_MALFORMED_JSON = b'{"id": "chatcmpl-mock-broken", "object": "chat.completion", "choices": [{"message": '
_MALFORMED_SSE = b'data: {"id": "chatcmpl-mock-broken", "choices": [{"delta": \n\n'
_DONE_EVENT = b"data: [DONE]\n\n"
_CHUNKED_END = b"0\r\n\r\n"


# --------------------------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """How the mock answers chat/embedding requests. Assign a fresh instance to change behaviour mid-test.

    The failure modes (``status >= 400``, ``malformed``, ``disconnect_after_chunks``, ``reset_after_bytes``,
    ``error_in_200``) apply to every request, or only
    to the first ``fail_times`` requests served with this instance (after which it answers normally); a ``status``
    below 400 is ignored (successes are always 200). ``headers`` and ``latency`` apply to every chat/embeddings
    response, successful or not. ``/models`` ignores behaviours, so discovery and health checks keep working.
    A request's ``stop`` sequences cut the reply as a model would; the choice names the one that matched in
    ``stop_reason``, as vLLM does.
    """

    status: int = 200
    error_body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0
    # Before each streamed event but the first, up to the finish chunk; the usage chunk and [DONE] follow at once.
    chunk_delay: float = 0.0
    chunks: int | None = None
    reply: str = DEFAULT_REPLY
    malformed: bool = False
    disconnect_after_chunks: int | None = None
    fail_times: int | None = None
    include_usage_always: bool = False
    # Answer with these function calls, each {"name": ..., "arguments": <JSON text or object>}, and finish_reason
    # "tool_calls"; streamed as OpenAI does (id and name first, then the arguments in pieces). The ``reply`` text,
    # unless empty, comes before them, as Claude models do.
    tool_calls: list[dict[str, Any]] | None = None
    # Slow body: a non-streamed response's body goes out in ``body_pieces`` pieces with this delay between
    # them (the headers, after ``latency``, come at once).
    body_delay: float = 0.0
    body_pieces: int = 8
    # Failure mode: a non-streamed response sends its head (with the full content-length) and this many body
    # bytes, then resets the connection (TCP RST).
    reset_after_bytes: int | None = None
    # Failure mode: status 200 with this error object inside: the whole body ``{"error": ...}`` when not
    # streamed; in a stream, a ``data: {"error": ...}`` event after the first chunk (then ``[DONE]``, as if fine).
    error_in_200: dict[str, Any] | None = None
    # How many requests this instance has failed so far (drives ``fail_times``); not part of equality.
    failures_served: int = field(default=0, init=False, compare=False)

    @property
    def has_failure_mode(self) -> bool:
        return (
            self.status >= 400
            or self.malformed
            or self.disconnect_after_chunks is not None
            or self.reset_after_bytes is not None
            or self.error_in_200 is not None
        )

    def claim_failure(self) -> bool:
        """Decide whether the current request gets the failure modes, consuming one of ``fail_times``."""
        if not self.has_failure_mode:
            return False
        if self.fail_times is not None and self.failures_served >= self.fail_times:
            return False
        self.failures_served += 1
        return True


class Headers(dict[str, str]):
    """Request headers keyed by lower-cased name; lookups are case-insensitive."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    headers: Headers
    body: bytes
    json: Any  # parsed body, or None when empty / not JSON
    query: str = ""
    http_version: str = "HTTP/1.1"

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None


class _HttpError(Exception):
    """A request we cannot parse; answered with ``status`` and the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------------------------
# Pure helpers (payloads, framing)
# --------------------------------------------------------------------------------------------------------------------


def error_payload(status: int, message: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object for ``status``."""
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    text = message or f"Mock upstream error {status} ({_REASONS.get(status, 'Unknown')})"
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


def _response_head(
    status: int,
    content_type: str,
    extra: dict[str, str],
    keep_alive: bool,
    *,
    length: int | None,
    chunked: bool = False,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\ncontent-type: {content_type}\r\n"]
    if length is not None:
        lines.append(f"content-length: {length}\r\n")
    elif chunked:
        lines.append("transfer-encoding: chunked\r\ncache-control: no-cache\r\n")
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.extend(f"{name}: {value}\r\n" for name, value in extra.items())
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _chunk_frame(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


@functools.lru_cache(maxsize=512)
def split_reply(reply: str, chunks: int | None) -> tuple[str, ...]:
    """Content pieces of a reply: its words (each keeping its leading space) or exactly ``chunks`` pieces.

    With an explicit count the words are cycled, so a benchmark can ask for 200 chunks of a 3-word reply;
    the pieces always concatenate to the (possibly repeated) reply text. Cached: it runs once per distinct knob.
    """
    words = re.findall(r"\s*\S+|\s+$", reply)
    if chunks is None:
        return tuple(words)
    if not words:
        return ("",) * chunks
    pieces = []
    for index in range(chunks):
        word = words[index % len(words)]
        # Re-joining the reply after a wrap must not glue "mock" to "Hello".
        if index and index % len(words) == 0 and not word[:1].isspace():
            word = " " + word
        pieces.append(word)
    return tuple(pieces)


def prompt_tokens(messages: Any) -> int:
    """Deterministic stand-in for a tokenizer: characters of all text content // 4, at least 1."""
    chars = 0
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):  # multimodal: [{"type": "text", "text": ...}, ...]
                chars += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return max(1, chars // 4)


def _completion_plan(behaviour: Behaviour, body: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The content pieces to send and the finish reason, honouring max_tokens like a real model would."""
    pieces = split_reply(behaviour.reply, behaviour.chunks)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return pieces[:limit], "length"
    return pieces, "stop"


def _stop_at(pieces: tuple[str, ...], stop: Any) -> tuple[tuple[str, ...], str | None]:
    """Cut the reply before the first of the request's stop sequences, as a model does; also which one matched
    (reported as the choice's ``stop_reason``, as vLLM does)."""
    sequences = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str) and s]
    text = "".join(pieces)
    hits = [(text.find(s), s) for s in sequences if s in text]
    if not hits:
        return pieces, None
    at, matched = min(hits)
    return split_reply(text[:at], None), matched


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _tool_calls(behaviour: Behaviour, response_id: str) -> list[dict[str, Any]]:
    """The behaviour's function calls in OpenAI's message shape, with ids unique to this response."""
    calls = []
    for index, call in enumerate(behaviour.tool_calls or ()):
        arguments = call.get("arguments", {})
        arguments = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        function = {"name": call["name"], "arguments": arguments}
        calls.append({"id": f"call_{response_id}_{index}", "type": "function", "function": function})
    return calls


def _tool_call_deltas(calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed tool calls as OpenAI sends them: id, type and name with empty arguments, then argument pieces."""
    deltas = []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        arguments = call["function"]["arguments"]
        step = max(1, -(-len(arguments) // 3))  # three pieces, so clients must join them
        deltas.extend(
            {"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + step]}}]}
            for i in range(0, len(arguments), step)
        )
    return deltas


def _stream_events(
    base: dict[str, Any],
    pieces: Sequence[str],
    finish: str,
    usage: dict[str, int] | None,
    malformed: bool,
    tool_calls: Sequence[dict[str, Any]] = (),
    stop_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> tuple[list[bytes], list[bytes]]:
    """All SSE events of one streamed completion, in order: the generated ones, paced by ``chunk_delay`` (up to the
    finish chunk, or the error), and the tail that follows them at once (the usage chunk, ``[DONE]``)."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if finish_reason and stop_reason:
            choice["stop_reason"] = stop_reason
        return _sse({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    if malformed:
        events.append(_MALFORMED_SSE)
    if error is not None:
        return [*events, _sse({"error": error})], [_DONE_EVENT]
    events.extend(chunk({"content": piece}) for piece in pieces)
    events.extend(chunk(delta) for delta in _tool_call_deltas(tool_calls))
    events.append(chunk({}, finish))
    tail = [_DONE_EVENT] if usage is None else [_sse({**base, "choices": [], "usage": usage}), _DONE_EVENT]
    return events, tail


def _embedding_vector(item: Any) -> list[float]:
    # Hash-derived so equal inputs give equal vectors (lets tests check caching / ordering), but stays cheap.
    digest = hashlib.blake2b(orjson.dumps(item), digest_size=EMBEDDING_DIMS).digest()
    return [round(byte / 255 - 0.5, 6) for byte in digest]


def _embedding_payload(body: dict[str, Any], model: str) -> dict[str, Any]:
    raw = body.get("input")
    # A single string or a single token array is one input; anything else is a batch.
    inputs = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else raw
    inputs = inputs if isinstance(inputs, list) else [inputs]
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = _embedding_vector(item)
        encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = max(1, sum(len(item) if isinstance(item, str | list) else 1 for item in inputs) // 4)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _wants_keep_alive(request: RecordedRequest) -> bool:
    connection = request.headers.get("connection", "").lower()
    if request.http_version == "HTTP/1.1":
        return "close" not in connection
    return "keep-alive" in connection


def _route(path: str) -> str:
    """Map both ``/v1/x`` and ``/x`` to ``/x``: the gateway may be configured with or without ``/v1``."""
    if path.startswith("/v1/"):
        path = path[3:]
    return path.rstrip("/") or "/"


# --------------------------------------------------------------------------------------------------------------------
# One client connection: buffered parsing + disconnect watching
# --------------------------------------------------------------------------------------------------------------------


class _Connection:
    """Buffered request reader for one socket.

    All reads go through ``buf`` so the disconnect watcher can read concurrently with a response being written:
    whatever it reads (e.g. a pipelined next request) lands in ``buf`` and is parsed later; nothing is lost.
    """

    __slots__ = ("_eof", "_watcher", "buf", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self._watcher: asyncio.Task[None] | None = None
        self._eof: asyncio.Future[None] | None = None

    async def _fill(self) -> bool:
        data = await self.reader.read(READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    async def _read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not await self._fill():
                raise asyncio.IncompleteReadError(bytes(self.buf), size)
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def _read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise _HttpError(400, "line too long")
            if not await self._fill():
                raise asyncio.IncompleteReadError(bytes(self.buf), None)
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def _read_head(self) -> str | None:
        buf = self.buf
        while True:
            while buf[:2] == b"\r\n":  # stray CRLFs between requests are allowed (RFC 9112 section 2.2)
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].decode("latin-1")
                del buf[: end + 4]
                return head
            if buf[:2] == b"\x16\x03":
                # A TLS ClientHello (an https:// URL pointed at this plain-HTTP port): refuse it at once, as a
                # real HTTP server does, instead of waiting for a request head that never comes.
                raise _HttpError(400, "TLS handshake on a plain HTTP port")
            if len(buf) > MAX_HEAD_BYTES:
                raise _HttpError(431, "request head too large")
            if not await self._fill():
                return None  # EOF between requests: the client is done with this connection

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int(bytes(await self._read_line()).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, "bad chunk size") from None
            if size == 0:
                while await self._read_line():  # discard trailers up to the blank line
                    pass
                return bytes(body)
            body += await self._read_exact(size)
            if await self._read_line():
                raise _HttpError(400, "bad chunk terminator")

    async def _read_body(self, headers: Headers) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked()
        raw = headers.get("content-length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise _HttpError(400, "bad content-length") from None
        if length < 0:
            raise _HttpError(400, "bad content-length")
        return await self._read_exact(length)

    async def read_request(self) -> RecordedRequest | None:
        """Parse the next request; None on a clean EOF. Raises _HttpError for garbage."""
        head = await self._read_head()
        if head is None:
            return None
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        headers = Headers()
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise _HttpError(400, "malformed header line")
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{dict.__getitem__(headers, key)}, {value}" if dict.__contains__(headers, key) else value
        if headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(headers)
        path, _, query = target.partition("?")
        return RecordedRequest(method.upper(), path, headers, body, _parse_json(body), query, version)

    # -- disconnect detection -----------------------------------------------------------------------------------------

    @property
    def client_gone(self) -> bool:
        return (self._eof is not None and self._eof.done()) or self.writer.transport.is_closing()

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds but wake up as soon as the client hangs up. Returns True if it did.

        Writes to a half-dead socket often "succeed" (the kernel buffers them), so a slow stream would only notice
        the client leaving much later; racing the sleep against EOF on the read side notices it immediately.
        """
        if self._eof is None:
            loop = asyncio.get_running_loop()
            self._eof = loop.create_future()
            self._watcher = loop.create_task(self._watch(self._eof))
        if not self._eof.done():
            await asyncio.wait((self._eof,), timeout=delay)
        return self.client_gone

    async def _watch(self, eof: asyncio.Future[None]) -> None:
        with contextlib.suppress(ConnectionError):
            while await self._fill():
                pass
        if not eof.done():
            eof.set_result(None)

    async def stop_watching(self) -> None:
        """Stop the watcher before the next request is read: StreamReader allows only one reader at a time."""
        watcher, self._watcher, self._eof = self._watcher, None, None
        if watcher is not None and not watcher.done():
            watcher.cancel()
            await asyncio.wait((watcher,))

    def cancel_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0) instead of an orderly FIN, as a crashed peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# --------------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------------


class MockUpstream:
    """OpenAI-compatible mock server. Use ``start()``/``stop()`` (or ``with``) from sync code: it then runs in a
    background thread with its own loop; or ``await start_async()``/``aclose()`` (or ``async with``) inside a loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        behaviour: Behaviour | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        record: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self._initial_behaviour = behaviour or Behaviour()
        self.behaviour: Behaviour = dataclasses.replace(self._initial_behaviour)
        self.models = list(models)
        self.record = record  # benchmarks turn this off so memory stays flat over millions of requests
        self.requests: list[RecordedRequest] = []
        # Responses (streams, or non-stream requests still in ``latency``) whose client left before the end.
        self.disconnects = 0
        self.disconnected = threading.Event()  # set on the first such disconnect; a plain Event so sync tests can wait
        self.active_streams = 0
        self.connections = 0  # accepted TCP connections: lets tests assert keep-alive reuse
        self._model_behaviours: dict[str, Behaviour] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- configuration & inspection -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def set_behaviour(self, model: str, behaviour: Behaviour | None) -> None:
        """Override the behaviour for requests whose body names ``model``; None removes the override."""
        if behaviour is None:
            self._model_behaviours.pop(model, None)
        else:
            self._model_behaviours[model] = behaviour

    def behaviour_for(self, model: str | None) -> Behaviour:
        return self._model_behaviours.get(model, self.behaviour) if model else self.behaviour

    def requests_for(self, path_suffix: str = "/chat/completions") -> list[RecordedRequest]:
        return [request for request in self.requests if request.path.endswith(path_suffix)]

    def reset(self) -> None:
        """Forget recorded requests, counters and behaviour overrides (live ``active_streams`` is kept)."""
        self.requests.clear()
        self.disconnects = 0
        self.disconnected.clear()
        self.connections = 0
        self._model_behaviours.clear()
        self.behaviour = dataclasses.replace(self._initial_behaviour)

    # -- lifecycle: inside a running loop -----------------------------------------------------------------------------

    async def start_async(self) -> MockUpstream:
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, backlog=LISTEN_BACKLOG, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's Server.close() leaves accepted connections open; keep-alive clients would pin them forever.
        tasks = list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await asyncio.sleep(0)  # let the transports' close callbacks run before the loop may be closed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=2)

    async def __aenter__(self) -> MockUpstream:
        return await self.start_async()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- lifecycle: background thread -----------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> MockUpstream:
        """Serve from a daemon thread; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("MockUpstream already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run_thread, args=(ready, errors), name="mock-upstream", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("MockUpstream did not start in time")
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def _run_thread(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # surfaced to the caller of start()
                errors.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- connection handling --------------------------------------------------------------------------------------

    def _note_disconnect(self) -> bool:
        """Record that a client left before its response was complete; returns False (= don't keep alive)."""
        self.disconnects += 1
        self.disconnected.set()
        return False

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        self.connections += 1
        conn = _Connection(reader, writer)
        try:
            while True:
                try:
                    request = await conn.read_request()
                except _HttpError as exc:
                    body = orjson.dumps(error_payload(exc.status, exc.message))
                    writer.write(_response_head(exc.status, "application/json", {}, False, length=len(body)) + body)
                    await writer.drain()
                    return
                if request is None:
                    return
                if self.record:
                    self.requests.append(request)
                keep_alive = await self._dispatch(conn, request, _wants_keep_alive(request))
                await conn.stop_watching()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client vanished between requests or mid-request-body: nothing left to answer
        except asyncio.CancelledError:
            # Only aclose() cancels us. Ending normally matters: on 3.11 StreamReaderProtocol's done-callback calls
            # task.exception() on the handler task, which raises (and logs a traceback) for a cancelled task.
            pass
        finally:
            conn.cancel_watching()
            writer.close()
            if task is not None:
                self._conn_tasks.discard(task)

    async def _dispatch(self, conn: _Connection, request: RecordedRequest, keep_alive: bool) -> bool:
        """Answer one request; returns whether the connection may serve another one."""
        route, method = _route(request.path), request.method
        if method == "POST" and route == "/chat/completions":
            return await self._chat(conn, request, keep_alive)
        if method == "POST" and route == "/embeddings":
            return await self._embeddings(conn, request, keep_alive)
        if method == "GET" and route == "/models":
            return await self._send_json(conn, 200, self._models_payload(), keep_alive)
        if method == "GET" and route.startswith("/models/"):
            model_id = route.removeprefix("/models/")
            if model_id in self._model_ids():
                return await self._send_json(conn, 200, self._model_entry(model_id), keep_alive)
            return await self._send_json(
                conn, 404, error_payload(404, f"The model '{model_id}' does not exist"), keep_alive
            )
        message = f"Unknown request URL: {method} {request.path}"
        return await self._send_json(conn, 404, error_payload(404, message), keep_alive)

    async def _send(
        self, conn: _Connection, status: int, body: bytes, keep_alive: bool, headers: dict[str, str] | None = None
    ) -> bool:
        head = _response_head(status, "application/json", headers or {}, keep_alive, length=len(body))
        try:
            conn.writer.write(head + body)  # one write -> one send() syscall for the whole response
            await conn.writer.drain()
        except ConnectionError:
            return self._note_disconnect()
        return keep_alive

    async def _send_body(
        self, conn: _Connection, body: bytes, keep_alive: bool, behaviour: Behaviour, failing: bool
    ) -> bool:
        """A successful non-streamed response, honouring the slow-body and reset-mid-body knobs."""
        cut = behaviour.reset_after_bytes if failing else None
        if cut is None and behaviour.body_delay <= 0:
            return await self._send(conn, 200, body, keep_alive, behaviour.headers)
        head = _response_head(200, "application/json", behaviour.headers, keep_alive, length=len(body))
        writer = conn.writer
        try:
            writer.write(head)
            if cut is not None:
                writer.write(body[:cut])
                await writer.drain()
                _reset(writer)
                return False
            step = max(1, -(-len(body) // max(1, behaviour.body_pieces)))
            for index, start in enumerate(range(0, len(body), step)):
                if index and await conn.sleep(behaviour.body_delay):
                    return self._note_disconnect()
                writer.write(body[start : start + step])
                await writer.drain()
        except ConnectionError:
            return self._note_disconnect()
        return keep_alive

    async def _send_json(
        self, conn: _Connection, status: int, payload: Any, keep_alive: bool, headers: dict[str, str] | None = None
    ) -> bool:
        return await self._send(conn, status, orjson.dumps(payload), keep_alive, headers)

    async def _send_behaviour_error(self, conn: _Connection, behaviour: Behaviour, keep_alive: bool) -> bool:
        custom = behaviour.error_body
        if isinstance(custom, bytes):
            body = custom
        else:
            body = orjson.dumps(custom if custom is not None else error_payload(behaviour.status))
        return await self._send(conn, behaviour.status, body, keep_alive, behaviour.headers)

    async def _prelude(self, conn: _Connection, behaviour: Behaviour) -> tuple[bool, bool]:
        """Claim a failure slot and apply latency. Returns (failing, client_left)."""
        failing = behaviour.claim_failure()
        if behaviour.latency > 0 and await conn.sleep(behaviour.latency):
            return failing, True
        return failing, False

    # -- endpoints ------------------------------------------------------------------------------------------------

    async def _chat(self, conn: _Connection, request: RecordedRequest, keep_alive: bool) -> bool:
        body = request.json
        if not isinstance(body, dict):
            return await self._send_json(
                conn, 400, error_payload(400, "Request body must be a JSON object"), keep_alive
            )
        model = str(body.get("model") or "mock-model")
        behaviour = self.behaviour_for(model)
        failing, client_left = await self._prelude(conn, behaviour)
        if client_left:
            return self._note_disconnect()
        if failing and behaviour.status >= 400:
            return await self._send_behaviour_error(conn, behaviour, keep_alive)
        pieces, finish = _completion_plan(behaviour, body)
        pieces, matched_stop = _stop_at(pieces, body.get("stop"))
        finish = "stop" if matched_stop else finish
        response_id = f"chatcmpl-mock-{next(self._ids)}"
        tool_calls = _tool_calls(behaviour, response_id)
        finish = "tool_calls" if tool_calls else finish
        usage = _usage(prompt_tokens(body.get("messages")), len(pieces) + 5 * len(tool_calls))
        base = {"id": response_id, "created": int(time.time()), "model": model}
        if body.get("stream"):
            options = body.get("stream_options")
            wants_usage = behaviour.include_usage_always or (
                isinstance(options, dict) and bool(options.get("include_usage"))
            )
            events, tail = _stream_events(
                {**base, "object": "chat.completion.chunk"},
                pieces,
                finish,
                usage if wants_usage else None,
                failing and behaviour.malformed,
                tool_calls,
                matched_stop,
                behaviour.error_in_200 if failing else None,
            )
            return await self._stream(conn, request, behaviour, events, keep_alive, failing, tail)
        if failing and behaviour.malformed:
            return await self._send(conn, 200, _MALFORMED_JSON, keep_alive, behaviour.headers)
        if failing and behaviour.error_in_200 is not None:
            return await self._send_json(conn, 200, {"error": behaviour.error_in_200}, keep_alive, behaviour.headers)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        if tool_calls:
            message = {**message, "content": message["content"] or None, "tool_calls": tool_calls}
        payload = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                         **({"stop_reason": matched_stop} if matched_stop else {})}],
            "usage": usage,
            "system_fingerprint": None,
        }
        return await self._send_body(conn, orjson.dumps(payload), keep_alive, behaviour, failing)

    async def _stream(
        self,
        conn: _Connection,
        request: RecordedRequest,
        behaviour: Behaviour,
        events: list[bytes],
        keep_alive: bool,
        failing: bool,
        tail: Sequence[bytes] = (),
    ) -> bool:
        """Stream ``events``, each after ``chunk_delay`` but the first, then ``tail`` right after the last of them."""
        writer = conn.writer
        chunked = request.http_version == "HTTP/1.1"
        # HTTP/1.0 has no chunked encoding: the body is delimited by closing the connection instead.
        keep_alive = keep_alive and chunked
        cut_after = behaviour.disconnect_after_chunks if failing else None
        self.active_streams += 1
        try:
            writer.write(
                _response_head(200, "text/event-stream", behaviour.headers, keep_alive, length=None, chunked=chunked)
            )
            paced = len(events)
            # Paced on a schedule (event i at the first one's time + i x chunk_delay), as a model generates tokens
            # at its own rate: sleeping chunk_delay after each write would add this process's own delays to every
            # gap, and they grow when the machine is busy (e.g. with the portal in between), which a benchmark
            # would count as the portal's overhead.
            first_at = time.monotonic()
            for index, event in enumerate([*events, *tail]):
                if cut_after is not None and index >= cut_after:
                    # Simulated upstream crash: the socket closes without the terminating zero-length chunk.
                    writer.close()
                    return False
                if 0 < index < paced and behaviour.chunk_delay > 0 and await conn.sleep(
                    max(0.0, first_at + index * behaviour.chunk_delay - time.monotonic())
                ):
                    return self._note_disconnect()
                if conn.client_gone:
                    return self._note_disconnect()
                writer.write(_chunk_frame(event) if chunked else event)
                await writer.drain()  # flush each event on its own so clients see real incremental delivery
            if chunked:
                writer.write(_CHUNKED_END)
                await writer.drain()
        except ConnectionError:
            return self._note_disconnect()
        finally:
            self.active_streams -= 1
        return keep_alive

    async def _embeddings(self, conn: _Connection, request: RecordedRequest, keep_alive: bool) -> bool:
        body = request.json
        if not isinstance(body, dict) or "input" not in body:
            return await self._send_json(conn, 400, error_payload(400, "'input' is a required property"), keep_alive)
        model = str(body.get("model") or "text-embedding-3-small")
        behaviour = self.behaviour_for(model)
        failing, client_left = await self._prelude(conn, behaviour)
        if client_left:
            return self._note_disconnect()
        if failing and behaviour.status >= 400:
            return await self._send_behaviour_error(conn, behaviour, keep_alive)
        if failing and behaviour.malformed:
            return await self._send(conn, 200, _MALFORMED_JSON, keep_alive, behaviour.headers)
        if failing and behaviour.error_in_200 is not None:
            return await self._send_json(conn, 200, {"error": behaviour.error_in_200}, keep_alive, behaviour.headers)
        return await self._send_body(
            conn, orjson.dumps(_embedding_payload(body, model)), keep_alive, behaviour, failing
        )

    def _model_ids(self) -> list[str]:
        # Models with a per-model behaviour are listed too, so discovery-based tests see their deployments.
        return list(dict.fromkeys([*self.models, *self._model_behaviours]))

    @staticmethod
    def _model_entry(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "mock-upstream"}

    def _models_payload(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_entry(model_id) for model_id in self._model_ids()]}


# --------------------------------------------------------------------------------------------------------------------
# CLI: python -m tests.mock_upstream --port 9100
# --------------------------------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.mock_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunk-delay", type=float, default=0.0,
                        help="seconds between a stream's generated events, up to its finish chunk (the usage chunk "
                             "and [DONE] follow that at once)")
    parser.add_argument("--chunks", type=int, default=None, help="content chunks per stream (default: reply words)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before response headers")
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    parser.add_argument("--record", action="store_true", help="keep every request in memory (off for benchmarks)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    behaviour = Behaviour(chunk_delay=args.chunk_delay, chunks=args.chunks, latency=args.latency, reply=args.reply)
    server = MockUpstream(args.host, args.port, behaviour=behaviour, record=args.record)
    await server.start_async()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {server.url}", flush=True)
    await stop.wait()
    await server.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    try:
        import uvloop  # optional speed-up, only for the standalone benchmark process
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
