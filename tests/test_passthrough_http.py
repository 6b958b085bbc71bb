"""The passthrough's whole-answer calls (the lean client on a direct connection; aiohttp through a proxy is
tests/test_egress_proxy.py's) against a raw HTTP server on 127.0.0.1.

What the HTTP exchange must do whatever client library carries it: keep connections alive, survive a kept-alive
connection the server closed, read answers however they are delimited, stop at the size cap, refuse a header that
could smuggle another. No database: a Route is built by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.catalog import Route
from gateway.upstreams import UpstreamError, client, passthrough
from tests.raw_http import Handler, ok, read_request

HELLO = {"messages": [{"role": "user", "content": "hi"}]}


def route(base: str, **params: Any) -> Route:
    return Route(id=1, public_name="m", provider_id=1, provider_name="raw", kind="openai_compatible",
                 upstream_model="m", litellm_model="openai/m", api_base=base, api_key="k", params=params,
                 model_info={}, rpm=None, tpm=None, rpd=None, priority=0)




def with_server(handler: Handler, test: Callable[[Route], Awaitable[object]]) -> object:
    async def main() -> object:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await test(route(f"http://127.0.0.1:{port}/v1"))
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def answer(text: str) -> bytes:
    return b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "%s"}}]}' % text.encode()


def test_consecutive_requests_share_one_kept_alive_connection() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                await read_request(reader)
                writer.write(ok(answer("again")))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def test(r: Route) -> list[Any]:
        return [(await passthrough.instance.complete(r, HELLO))["choices"][0]["message"]["content"] for _ in range(3)]

    assert with_server(handler, test) == ["again"] * 3
    assert len(connections) == 1


def test_a_kept_alive_connection_the_server_drops_unanswered_is_retried_on_a_fresh_one() -> None:
    """The race of an idle timeout: the server closes a kept-alive connection just as a request goes out on it,
    without answering. Nothing was answered, so the request goes again on a new connection."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_request(reader)
        writer.write(ok(answer("first")))  # keep-alive, as HTTP/1.1 is by default
        await writer.drain()
        await read_request(reader)
        writer.close()  # the second request on this connection is dropped unanswered

    async def test(r: Route) -> list[Any]:
        return [(await passthrough.instance.complete(r, HELLO))["choices"][0]["message"]["content"] for _ in range(2)]

    assert with_server(handler, test) == ["first", "first"]
    assert len(connections) == 2


def test_a_request_dropped_unanswered_on_a_fresh_connection_is_not_sent_again_and_is_a_502() -> None:
    # The lean client (direct whole answers) knows the connection was new, so the server did read the request:
    # sending it again could make the provider run it twice.
    requests: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        requests.append(1)
        writer.close()

    async def test(r: Route) -> UpstreamError:
        with pytest.raises(UpstreamError) as caught:
            await passthrough.instance.complete(r, HELLO)
        return caught.value

    error = with_server(handler, test)
    assert isinstance(error, UpstreamError) and (error.status, error.code) == (502, "upstream_connection_error")
    assert requests == [1]


def test_a_chunked_error_answer_keeps_its_status_and_retry_after() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def test(r: Route) -> UpstreamError:
        with pytest.raises(UpstreamError) as caught:
            await passthrough.instance.complete(r, HELLO)
        return caught.value

    error = with_server(handler, test)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.retry_after_seconds, error.headers["Retry-After"]) == (429, 7, "7")


def test_an_answer_without_a_length_ends_with_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + answer("no length")[:20])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(answer("no length")[20:])
        await writer.drain()
        writer.close()

    async def test(r: Route) -> Any:
        return (await passthrough.instance.complete(r, HELLO))["choices"][0]["message"]["content"]

    assert with_server(handler, test) == "no length"


def test_an_answer_over_the_cap_is_refused_and_its_connection_dropped(settings: Any) -> None:
    settings.MAX_UPSTREAM_RESPONSE_BYTES = 10_000
    sent: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(1000):
                writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
                await writer.drain()
                sent.append(1)
                await asyncio.sleep(0.001)
        except ConnectionError:
            pass
        writer.close()

    async def test(r: Route) -> str:
        with pytest.raises(UpstreamError) as caught:
            await passthrough.instance.complete(r, HELLO)
        return str(caught.value.code)

    assert with_server(handler, test) == "upstream_response_too_large"
    assert len(sent) < 1000  # the portal hung up instead of reading on


def test_a_header_that_could_smuggle_another_is_refused_before_anything_is_sent() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1000))
        writer.close()

    async def test(r: Route) -> str:
        r = route(r.api_base, extra_headers={"X-Team": "a\r\nAuthorization: Bearer stolen"})
        with pytest.raises(UpstreamError) as caught:
            await passthrough.instance.complete(r, HELLO)
        await asyncio.sleep(0.05)
        return str(caught.value.code)

    assert with_server(handler, test) == "upstream_not_configured"
    assert b"stolen" not in b"".join(received)


def test_a_server_that_hangs_up_mid_answer_is_a_connection_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        await writer.drain()
        writer.close()

    async def test(r: Route) -> tuple[int, str]:
        with pytest.raises(UpstreamError) as caught:
            await passthrough.instance.complete(r, HELLO)
        return caught.value.status, str(caught.value.code)

    assert with_server(handler, test) == (502, "upstream_connection_error")
