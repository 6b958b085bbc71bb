"""The passthrough's lean HTTP/1.1 client (gateway/upstreams/http1.py) against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import yarl

from gateway.upstreams import http1
from tests.raw_http import Handler, ok, read_request


def with_server(handler: Handler, test: Callable[[yarl.URL, http1.Pool], Awaitable[object]]) -> object:
    async def main() -> object:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = http1.Pool()
        try:
            return await test(yarl.URL(f"http://127.0.0.1:{port}/v1/chat/completions"), pool)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_consecutive_requests_share_one_kept_alive_connection() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                request = await read_request(reader)
                writer.write(ok(b'{"n": %d}' % request.count(b"x")))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def test(url: yarl.URL, pool: http1.Pool) -> list[bytes]:
        return [(await pool.post(url, {"Authorization": "Bearer k"}, b"x" * n, connect_timeout=5, cap=1000)).body
                for n in range(1, 4)]

    assert with_server(handler, test) == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert len(connections) == 1


def test_a_kept_alive_connection_the_server_drops_unanswered_is_retried_on_a_fresh_one() -> None:
    """The race of an idle timeout: the server closes a kept-alive connection just as a request goes out on it,
    without answering. Nothing was answered, so the request goes again on a new connection."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_request(reader)
        writer.write(ok(b'{"first": true}'))  # keep-alive, as HTTP/1.1 is by default
        await writer.drain()
        await read_request(reader)
        writer.close()  # the second request on this connection is dropped unanswered

    async def test(url: yarl.URL, pool: http1.Pool) -> list[bytes]:
        first = await pool.post(url, {}, b"{}", connect_timeout=5, cap=1000)
        second = await pool.post(url, {}, b"{}", connect_timeout=5, cap=1000)
        return [first.body, second.body]

    assert with_server(handler, test) == [b'{"first": true}', b'{"first": true}']
    assert len(connections) == 2


def test_a_fresh_connection_dropped_unanswered_is_not_sent_again() -> None:
    requests: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        requests.append(1)
        writer.close()

    async def test(url: yarl.URL, pool: http1.Pool) -> None:
        with pytest.raises(http1.ConnectionFailed):
            await pool.post(url, {}, b"{}", connect_timeout=5, cap=1000)

    with_server(handler, test)
    assert requests == [1]


def test_a_chunked_answer_is_put_together_with_its_headers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def test(url: yarl.URL, pool: http1.Pool) -> http1.Response:
        return await pool.post(url, {}, b"{}", connect_timeout=5, cap=1000)

    response = with_server(handler, test)
    assert isinstance(response, http1.Response)
    assert (response.status, response.headers["retry-after"], response.body) == (429, "7", b'{"a": 1}')


def test_an_answer_without_a_length_ends_with_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"id\": ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\"x\"}")
        await writer.drain()
        writer.close()

    async def test(url: yarl.URL, pool: http1.Pool) -> tuple[int, bytes, int]:
        response = await pool.post(url, {}, b"{}", connect_timeout=5, cap=1000)
        return response.status, response.body, sum(len(idle) for idle in pool.idle.values())

    assert with_server(handler, test) == (200, b'{"id": "x"}', 0)


def test_an_answer_over_the_cap_is_refused_and_its_connection_dropped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(100):
                writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0)
        except ConnectionError:
            pass
        writer.close()

    async def test(url: yarl.URL, pool: http1.Pool) -> int:
        with pytest.raises(http1.TooLarge):
            await pool.post(url, {}, b"{}", connect_timeout=5, cap=10_000)
        return sum(len(idle) for idle in pool.idle.values())

    assert with_server(handler, test) == 0


def test_a_header_that_could_smuggle_another_is_refused_before_anything_is_sent() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1000))
        writer.close()

    async def test(url: yarl.URL, pool: http1.Pool) -> None:
        with pytest.raises(ValueError):
            await pool.post(url, {"X-Team": "a\r\nAuthorization: Bearer stolen"}, b"{}", connect_timeout=5, cap=100)
        await asyncio.sleep(0.05)

    with_server(handler, test)
    assert received == []


def test_a_server_that_hangs_up_mid_answer_is_a_connection_failure() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        await writer.drain()
        writer.close()

    async def test(url: yarl.URL, pool: http1.Pool) -> None:
        with pytest.raises(http1.ConnectionFailed) as caught:
            await pool.post(url, {}, b"{}", connect_timeout=5, cap=1000)
        assert not caught.value.before_answer

    with_server(handler, test)


@pytest.mark.parametrize(("url", "host", "target"), [
    ("https://openrouter.ai/api/v1/chat/completions", "openrouter.ai", "/api/v1/chat/completions"),
    ("http://127.0.0.1:1234/v1/chat/completions?x=1", "127.0.0.1:1234", "/v1/chat/completions?x=1"),
    ("http://[::1]:1234/v1/chat/completions", "[::1]:1234", "/v1/chat/completions"),
])
def test_the_request_names_the_host_and_path_as_http_wants_them(url: str, host: str, target: str) -> None:
    head, _, body = http1.request_bytes(yarl.URL(url), {"Authorization": "Bearer k"}, b"{}").partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST {target} HTTP/1.1"
    assert f"Host: {host}" in lines and "Content-Length: 2" in lines and "Authorization: Bearer k" in lines
    assert body == b"{}"
