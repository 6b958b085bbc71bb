"""The upstream client's own cost: one process POSTs whole answers to the benchmark's mock upstream, through
aiohttp's pooled session (as the passthrough does through a proxy) and through the lean client
(gateway/upstreams/http1.py, the direct path), alternately, and reports CPU and wall time per request.

    .venv/bin/python bench/upstream_client.py [--requests 6000] [--rounds 3]

CPU time of this process only (the mock runs in its own), so a busy machine disturbs it less than wall time.
bench/results/2026-12-04-upstream-client.md holds a run and why the lean client stays.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import django
import orjson
import uvloop
import yarl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("PORTAL_ENV_FILE", "/dev/null")
django.setup()  # the gateway package imports its models

from bench.procs import free_port, http_status  # noqa: E402
from gateway.upstreams import http1  # noqa: E402

HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json", "User-Agent": "llm-portal"}
BODY = orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hello there"}]})
Call = Callable[[], Awaitable[object]]


async def aiohttp_call(url: yarl.URL) -> tuple[Call, Callable[[], Awaitable[None]]]:
    # As gateway/upstreams/client.py builds it and passthrough._via_session uses it.
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"],
                                    cookie_jar=aiohttp.DummyCookieJar())
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)

    async def call() -> object:
        async with asyncio.timeout(60):
            response = await session.post(url, data=BODY, headers=HEADERS, timeout=timeout)
            body = await response.read()
            response.release()
        return orjson.loads(body)

    return call, session.close


async def lean_call(url: yarl.URL) -> tuple[Call, Callable[[], Awaitable[None]]]:
    pool = http1.Pool()

    async def call() -> object:
        async with asyncio.timeout(60):
            answer = await pool.post(url, HEADERS, BODY, connect_timeout=10, cap=64 * 1024 * 1024)
        return orjson.loads(answer.body)

    async def close() -> None:
        pool.close()

    return call, close


async def measure(make: Callable[[yarl.URL], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]],
                  url: yarl.URL, requests: int, concurrency: int) -> tuple[float, float]:
    call, close = await make(url)
    try:
        for _ in range(200):  # warm the pool
            await call()

        async def worker(n: int) -> None:
            for _ in range(n):
                await call()

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        return (time.process_time() - cpu) * 1e6 / requests, (time.perf_counter() - wall) * 1e6 / requests
    finally:
        await close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    mock = subprocess.Popen([sys.executable, "-m", "tests.mock_upstream", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if http_status(f"http://127.0.0.1:{port}/v1/models") == 200:
                break
            time.sleep(0.1)
        url = yarl.URL(f"http://127.0.0.1:{port}/v1/chat/completions")
        print("| round | c | aiohttp CPU µs/req | lean CPU µs/req | aiohttp wall µs/req | lean wall µs/req |")
        print("| --- | --- | --- | --- | --- | --- |")
        for round_ in range(1, args.rounds + 1):
            for concurrency in (1, 64):
                a = uvloop.run(measure(aiohttp_call, url, args.requests, concurrency))
                b = uvloop.run(measure(lean_call, url, args.requests, concurrency))
                print(f"| {round_} | {concurrency} | {a[0]:.0f} | {b[0]:.0f} | {a[1]:.0f} | {b[1]:.0f} |", flush=True)
    finally:
        mock.terminate()
        mock.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
