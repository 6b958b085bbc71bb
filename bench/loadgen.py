"""The benchmark's load generator: a small aiohttp client with a keep-alive pool, one pool per level.

A level is `concurrency` workers sharing one request budget (`requests`, or `seconds` of wall time, whichever
ends first), after an unmeasured warm-up that opens every pooled connection. The client's own cost is in every
figure, so the benchmark measures each level directly against the mock too and reports the difference.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

ERROR_SAMPLES = 3


@dataclass(frozen=True)
class Target:
    """Where a level sends its requests: the mock directly, the portal, or LiteLLM Proxy."""

    name: str  # direct | portal | litellm
    url: str  # the full /v1/chat/completions URL
    model: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LevelResult:
    target: str
    model: str
    stream: bool
    concurrency: int
    sent: int = 0  # measured requests, warm-up excluded
    warmup: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    ttfts: list[float] = field(default_factory=list)  # streams: to the first content chunk
    events: list[int] = field(default_factory=list)  # streams: data events received (incl. [DONE])
    error_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "model": self.model,
            "stream": self.stream,
            "concurrency": self.concurrency,
            "sent": self.sent,
            "warmup": self.warmup,
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 3),
            "rps": round(self.rps, 1),
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "error_samples": self.error_samples,
        }
        if self.stream:
            out["ttft_p50_ms"] = ms(percentile(self.ttfts, 50))
            out["ttft_p99_ms"] = ms(percentile(self.ttfts, 99))
            out["events_min"] = min(self.events, default=0)
            out["events_max"] = max(self.events, default=0)
        return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 3)


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say hello, benchmark."}]}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def _has_content(line: bytes) -> bool:
    """Whether an SSE data line carries generated text (the role chunk's empty content does not count)."""
    try:
        payload = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return False
    for choice in payload.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content"):
            return True
    return False


class _Worker:
    """Shared state of one level's workers: the budget and the results."""

    def __init__(self, session: aiohttp.ClientSession, target: Target, stream: bool, result: LevelResult) -> None:
        self.session = session
        self.target = target
        self.stream = stream
        self.result = result
        self.body = request_body(target.model, stream)
        self.headers = {"content-type": "application/json", **target.headers}

    def _error(self, message: str) -> None:
        self.result.errors += 1
        if len(self.result.error_samples) < ERROR_SAMPLES:
            self.result.error_samples.append(message[:300])

    async def one(self, measure: bool) -> None:
        started = time.perf_counter()
        ttft: float | None = None
        events = 0
        try:
            async with self.session.post(self.target.url, data=self.body, headers=self.headers) as response:
                if response.status != 200:
                    text = await response.text()
                    self._error(f"HTTP {response.status}: {text}")
                    return
                if not self.stream:
                    payload = await response.read()
                    if b'"choices"' not in payload:
                        self._error(f"no choices in body: {payload[:200]!r}")
                        return
                else:
                    done = False
                    async for line in response.content:
                        if not line.startswith(b"data:"):
                            continue
                        events += 1
                        if line.startswith(b"data: [DONE]"):
                            done = True
                        elif b'"error"' in line and line.startswith(b'data: {"error"'):
                            self._error(f"error event: {line[:200]!r}")
                            return
                        elif ttft is None and _has_content(line):
                            ttft = time.perf_counter() - started
                    if not done or ttft is None:
                        self._error(f"stream ended without [DONE] or content ({events} events)")
                        return
        except (TimeoutError, aiohttp.ClientError) as e:
            self._error(f"{type(e).__name__}: {e}")
            return
        if measure:
            self.result.latencies.append(time.perf_counter() - started)
            if self.stream:
                self.result.ttfts.append(ttft or 0.0)
                self.result.events.append(events)


async def run_level(
    target: Target, *, stream: bool, concurrency: int, requests: int, seconds: float, warmup: int | None = None
) -> LevelResult:
    """Drive one level; the measured phase stops starting requests after `requests` or `seconds`."""
    result = LevelResult(target.name, target.model, stream, concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, keepalive_timeout=60)
    # Generous: a stuck request must end as an error, not hang the benchmark.
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        worker = _Worker(session, target, stream, result)
        # Warm-up: every connection of the pool opened and used twice, plus some slack for the server's caches.
        planned = warmup if warmup is not None else max(2 * concurrency, 20)
        # Warm-up errors stay in `errors`: a level that failed anywhere never looks clean.
        result.warmup = await _drive(worker, concurrency, planned, seconds, measure=False)
        started = time.perf_counter()
        result.sent = await _drive(worker, concurrency, requests, seconds, measure=True)
        result.elapsed = time.perf_counter() - started
    return result


async def _drive(worker: _Worker, concurrency: int, requests: int, seconds: float, *, measure: bool) -> int:
    """Run `requests` requests over `concurrency` workers (fewer if `seconds` pass first); returns how many."""
    issued = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            await worker.one(measure)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return issued


# The large-inputs case: what one request may legitimately carry (OpenAI's limit of 2,048 embedding inputs, of
# ~500 characters each: about 1 MB), and a chat body of the same size.
LARGE_EMBEDDINGS_INPUTS = [f"word{i:04d} " * 55 for i in range(2048)]
LARGE_CHAT_CONTENT = "benchmark " * 100_000


async def send_large(url: str, headers: dict[str, str], models: tuple[str, str], stop: asyncio.Event,
                     counts: dict[str, int]) -> None:
    """Large embeddings and large chat requests, one after another, until `stop` (one client of several)."""
    embed, chat = models
    bodies = [("/v1/embeddings", orjson.dumps({"model": embed, "input": LARGE_EMBEDDINGS_INPUTS})),
              ("/v1/chat/completions", orjson.dumps({"model": chat, "messages": [
                  {"role": "user", "content": LARGE_CHAT_CONTENT}]}))]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        turn = 0
        while not stop.is_set():
            path, body = bodies[turn % 2]
            turn += 1
            try:
                async with session.post(url + path, data=body, headers={**headers, "Content-Type":
                                                                         "application/json"}) as response:
                    await response.read()
                    counts["ok" if response.status == 200 else "errors"] += 1
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1


async def run_level_beside_large(target: Target, large_url: str, models: tuple[str, str], *, clients: int,
                                 requests: int, seconds: float) -> tuple[LevelResult, dict[str, int]]:
    """An ordinary non-streaming level at concurrency 1 while `clients` clients send large requests."""
    stop, counts = asyncio.Event(), {"ok": 0, "errors": 0}
    senders = [asyncio.create_task(send_large(large_url, target.headers, models, stop, counts))
               for _ in range(clients)]
    await asyncio.sleep(0.5)  # the large requests are in flight
    try:
        result = await run_level(target, stream=False, concurrency=1, requests=requests, seconds=seconds)
    finally:
        stop.set()
        await asyncio.gather(*senders)
    return result, counts


def merge(parts: list[LevelResult]) -> LevelResult:
    """Several rounds of one level as one result (rounds interleaved with another level cancel drift)."""
    first = parts[0]
    out = LevelResult(first.target, first.model, first.stream, first.concurrency)
    for part in parts:
        out.sent += part.sent
        out.warmup += part.warmup
        out.errors += part.errors
        out.elapsed += part.elapsed
        out.latencies += part.latencies
        out.ttfts += part.ttfts
        out.events += part.events
        out.error_samples += part.error_samples[: ERROR_SAMPLES - len(out.error_samples)]
    return out
