"""A small forwarding HTTP proxy, run as its own process, that counts what passes through it.

`python -m tests.forward_proxy PORT` serves on 127.0.0.1:PORT. A request in absolute form
(`POST http://host:port/path HTTP/1.1`, what a client configured with HTTP_PROXY sends) is forwarded to that
host and its answer relayed back as it comes (streams stay streams); each connection carries one request
(`Connection: close` both ways). Plain requests to the proxy itself are its own controls:
`GET /seen` lists the forwarded requests as JSON ("METHOD host:port/path"), `POST /reset` forgets them.
No CONNECT: the tests' upstreams are plain http mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

seen: list[str] = []


async def read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    first, *lines = raw.split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if ":" in line]
    return first, headers  # type: ignore[return-value]


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    values = {name.lower(): value for name, value in headers}
    if "content-length" in values:
        return await reader.readexactly(int(values["content-length"]))
    if values.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    return b""


def head_bytes(first: str, headers: list[tuple[str, str]]) -> bytes:
    kept = [(n, v) for n, v in headers if n.lower() not in ("connection", "proxy-connection", "keep-alive",
                                                                "transfer-encoding", "content-length")]
    lines = [first, *(f"{n}: {v}" for n, v in kept), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first, headers = await read_head(reader)
        method, target, version = first.split(" ", 2)
        body = await read_body(reader, headers)
        if not target.startswith("http://"):
            await control(method, target, writer)
            return
        url = urlsplit(target)
        seen.append(f"{method} {url.hostname}:{url.port or 80}{url.path}")
        upstream_reader, upstream_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        path = url.path + (f"?{url.query}" if url.query else "")
        request = head_bytes(f"{method} {path} {version}", headers)
        upstream_writer.write(request + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await upstream_writer.drain()
        # The answer's head gets Connection: close (this proxy serves one request a connection); its body,
        # delimited as the upstream delimited it, is relayed byte for byte until the upstream closes.
        status, answer_headers = await read_head(upstream_reader)
        kept = [(n, v) for n, v in answer_headers if n.lower() not in ("connection", "keep-alive")]
        writer.write(("\r\n".join([status, *(f"{n}: {v}" for n, v in kept), "Connection: close"]) + "\r\n\r\n")
                     .encode("latin-1"))
        while data := await upstream_reader.read(65536):
            writer.write(data)
            await writer.drain()
        upstream_writer.close()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        with contextlib.suppress(ConnectionError):
            writer.close()


async def control(method: str, path: str, writer: asyncio.StreamWriter) -> None:
    if method == "POST" and path == "/reset":
        seen.clear()
    body = json.dumps(seen).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close"
                 b"\r\n\r\n%s" % (len(body), body))
    await writer.drain()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class ForwardProxy:
    """The proxy as a child process of the tests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ForwardProxy:
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen([sys.executable, "-m", "tests.forward_proxy", str(self.port)], cwd=root,
                                        env={**os.environ, "PYTHONPATH": str(root)})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                self.reset()
                return self
            time.sleep(0.05)
        raise RuntimeError("the forwarding proxy did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)

    def seen(self) -> list[str]:
        return list(httpx.get(f"{self.url}/seen", trust_env=False, timeout=5).json())

    def reset(self) -> None:
        httpx.post(f"{self.url}/reset", trust_env=False, timeout=5)

    @contextlib.contextmanager
    def running(self) -> Iterator[ForwardProxy]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
