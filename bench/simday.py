"""`make simulate-day`: a day on the free tiers, on a moved clock, against mocks that enforce the real limits.

    .venv/bin/python bench/simday.py                 # 24 simulated hours (a few minutes on 2 cores)
    .venv/bin/python bench/simday.py --hours 1       # one simulated hour (the test suite's short run)

The portal runs as production runs it: gunicorn with 2 uvicorn workers on PostgreSQL + Redis when
DATABASE_URL and REDIS_URL are set (point them at a scratch database and Redis db: the run wipes both), else
the embedded default (SQLite in the run directory, no Redis, one worker). It is set up with the built-in
catalog (`manage.py load_catalog`, 33 models), three model groups of two deployments each, and five apps with
their own user keys and key limits.

In front of it, mock providers (one HTTP server each, in this process) enforce the catalog's limits per model
as the providers do: RPM and TPM over the last 60 s, RPD per day in the provider's time zone (Gemini: midnight
Pacific), answering a request beyond a limit with that provider's own 429 (Gemini's RESOURCE_EXHAUSTED with
its quotaId, OpenRouter's, GitHub's RateLimitReached, Copilot's) and counting it as an overstep. They count
every request they receive.

Time: the portal reads its clock offset from PORTAL_FAKE_CLOCK_FILE; this process writes that file and its
mocks read the same offset, so both see one simulated time. The clock runs at real speed while requests are
on their way and jumps to the next arrival once nothing is between the portal's admission and a mock's
receipt (a request the mocks have not seen for a while is waiting for a slot in the portal; those are let
through by small jumps). So 24 hours take a few minutes, and a request admitted at a simulated instant reaches
its mock at that instant, as it would in real life.

It writes `bench/results/simday-<hours>h.md`, `.json` and `.png` (per simulated hour: served per provider,
waited, refused) and exits 1 when a check fails (an overstep, an avoidable refusal, records != responses).

Internal sub-command: `simday.py django setup|usage ...` (run with the portal's environment).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import zoneinfo
from collections import Counter, defaultdict
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

PYTHON = sys.executable
RESULTS = ROOT / "bench" / "results"
# A Monday a few days ahead of any run: the simulated time must never be behind the real one (Redis expires
# keys in real time), and the day is seeded, so runs compare.
SIM_START_HOUR = 4  # 04:00 UTC: the day then holds Gemini's midnight (08:00 UTC) and UTC midnight
PACIFIC = zoneinfo.ZoneInfo("America/Los_Angeles")
OUTAGE = ("github_models", 14.0, 15.0)  # provider, from, to (simulated UTC hours): GitHub Models answers 503
GEMINI_KEY = "gemini-test-key-0123456789"  # what tests/mock_gemini.py accepts
MAX_TOKENS = 200
# While requests wait for a slot in the portal, the clock moves in steps of this many simulated seconds.
WAIT_STEP = 5.0
# A request the mocks have not seen this long after it was sent (and after the last jump) waits in the portal.
# Long enough for a request the portal admitted to reach its mock on a busy 2-core box: were the clock to jump
# while one is on its way, the mock would count it later than the portal did.
HOLD = 1.0
# The portal counts a request for the rest of its second plus 60 s (README, "Sliding minutes").
PORTAL_MINUTE = 61.0
# A request the portal admitted just before refusing another may reach its mock up to this much later.
PORTAL_GRACE = 1.0


# --- the simulated clock -----------------------------------------------------------------------------------------


class SimClock:
    """Simulated time = real time + an offset, written to the file the portal reads (gateway/clock.py)."""

    def __init__(self, path: Path, start: float) -> None:
        self.path = path
        self.offset = 0.0
        self.set(start)

    def now(self) -> float:
        return time.time() + self.offset

    def set(self, at: float) -> None:
        self.offset = at - time.time()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(self.offset))
        tmp.replace(self.path)  # atomic: a reader never sees a half-written number

    def jump_to(self, at: float) -> None:
        if at > self.now():
            self.set(at)


# --- the mock providers ------------------------------------------------------------------------------------------


@dataclass
class ModelLimits:
    rpm: int | None
    tpm: int | None
    rpd: int | None
    tz: str


@dataclass
class Accepted:
    at: float
    tokens: int
    sim_id: int


@dataclass
class ModelLedger:
    """What one provider counts for one model: the requests it accepted, per minute and per day."""

    limits: ModelLimits
    accepted: list[Accepted] = field(default_factory=list)
    per_day: Counter[dt.date] = field(default_factory=Counter)

    def day(self, at: float) -> dt.date:
        return dt.datetime.fromtimestamp(at, zoneinfo.ZoneInfo(self.limits.tz)).date()

    def window(self, at: float, seconds: float) -> list[Accepted]:
        out = []
        for entry in reversed(self.accepted):
            if entry.at <= at - seconds:
                break
            out.append(entry)
        return out

    def exceeded(self, at: float, tokens: int, minute: float = 60.0) -> str | None:
        """Which limit one more request of `tokens` would exceed at `at` ("rpd", "rpm", "tpm"), else None."""
        lim = self.limits
        if lim.rpd is not None and self.per_day[self.day(at)] + 1 > lim.rpd:
            return "rpd"
        recent = self.window(at, minute) if (lim.rpm is not None or lim.tpm is not None) else []
        if lim.rpm is not None and len(recent) + 1 > lim.rpm:
            return "rpm"
        if lim.tpm is not None and sum(e.tokens for e in recent) + tokens > lim.tpm:
            return "tpm"
        return None

    def room_at(self, at: float, tokens: int) -> bool:
        """Whether, after the run, one more request fits at simulated time `at`: by the requests received up to
        PORTAL_GRACE after it (those the portal admitted just before `at` were still on their way), in the last
        PORTAL_MINUTE, and in the provider's day so far."""
        lim = self.limits
        times = [e.at for e in self.accepted]  # in arrival order, and the clock only moves forward
        hi = bisect.bisect_right(times, at + PORTAL_GRACE)
        if lim.rpd is not None:
            tz = zoneinfo.ZoneInfo(lim.tz)
            midnight = dt.datetime.combine(self.day(at), dt.time(), tz).timestamp()
            if hi - bisect.bisect_left(times, midnight) + 1 > lim.rpd:
                return False
        recent = self.accepted[bisect.bisect_right(times, at - PORTAL_MINUTE):hi]
        if lim.rpm is not None and len(recent) + 1 > lim.rpm:
            return False
        return lim.tpm is None or sum(e.tokens for e in recent) + tokens <= lim.tpm

    def accept(self, at: float, tokens: int, sim_id: int) -> None:
        self.accepted.append(Accepted(at, tokens, sim_id))
        self.per_day[self.day(at)] += 1


_MARK = re.compile(rb"\[sim:(\d+)(:long)?\]")
_long_reply: ContextVar[bool] = ContextVar("long_reply", default=False)


@dataclass
class Arrival:
    at: float
    provider: str
    model: str
    sim_id: int
    verdict: str  # served | over-rpm | over-tpm | over-rpd | outage
    real: float = field(default_factory=time.monotonic)


class World:
    """Everything the mocks know: limits, what they accepted, what they refused, and the request ids seen."""

    def __init__(self, clock: SimClock, limits: dict[tuple[str, str], ModelLimits], outage: tuple[float, float]):
        self.clock = clock
        self.ledgers = {key: ModelLedger(value) for key, value in limits.items()}
        self.outage = outage
        self.arrivals: list[Arrival] = []
        self.seen: dict[int, float] = {}  # sim id -> real time the latest attempt reached a mock
        self.failed_attempt: set[int] = set()  # ids whose latest attempt got an error (a retry may follow)
        self.unknown: Counter[str] = Counter()

    def in_outage(self, provider: str, at: float) -> bool:
        return provider == OUTAGE[0] and self.outage[0] <= at < self.outage[1]

    def recovering(self, provider: str, at: float) -> bool:
        """In the outage or just after it: the portal parks a failing deployment with a back-off of up to
        QUOTA_MAX_BACKOFF_SECONDS (60 s), by design."""
        return provider == OUTAGE[0] and self.outage[0] <= at < self.outage[1] + 60

    def arrive(self, provider: str, model: str, body: bytes, reply_tokens: int) -> tuple[str, ModelLedger | None]:
        at = self.clock.now()
        mark = _MARK.search(body)
        sim_id = int(mark.group(1)) if mark else -1
        self.seen[sim_id] = time.monotonic()
        ledger = self.ledgers.get((provider, model))
        if ledger is None:
            self.unknown[f"{provider}:{model}"] += 1
        tokens = len(body) // 4 + reply_tokens
        if self.in_outage(provider, at):
            verdict = "outage"
        elif ledger is not None and (over := ledger.exceeded(at, tokens)):
            verdict = f"over-{over}"
        else:
            verdict = "served"
            if ledger is not None:
                ledger.accept(at, tokens, sim_id)
        if verdict == "served":
            self.failed_attempt.discard(sim_id)
        else:
            self.failed_attempt.add(sim_id)
        self.arrivals.append(Arrival(at, provider, model, sim_id, verdict))
        return verdict, ledger

    def has_room(self, provider: str, model: str, at: float, tokens: int) -> bool:
        """Room for one more request at `at` by the provider's own counts, read with the portal's one-second
        granularity (a request counts for 61 s): the room the portal is meant to find."""
        ledger = self.ledgers.get((provider, model))
        if ledger is None or self.recovering(provider, at):
            return False
        return ledger.room_at(at, tokens)


Refusal = tuple[dict[str, Any], dict[str, str]]  # a 429's body and headers


def _openrouter_429(model: str, over: str, lim: ModelLimits, reset_ms: int) -> Refusal:
    what = "free-models-per-day" if over == "rpd" else "free-models-per-min"
    limit = lim.rpd if over == "rpd" else lim.rpm
    headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset_ms)}
    body = {"error": {"message": f"Rate limit exceeded: {what}. ", "code": 429, "metadata": {"headers": headers}},
            "user_id": "user_sim"}
    return body, headers


def _github_429(model: str, over: str, lim: ModelLimits, wait: int) -> Refusal:
    window = ("UserByModelByDay", "86400s", lim.rpd) if over == "rpd" else ("UserByModelByMinute", "60s", lim.rpm)
    message = (f"Rate limit of {window[2]} per {window[1]} exceeded for {window[0]}. "
               f"Please wait {wait} seconds before retrying.")
    return {"error": {"code": "RateLimitReached", "message": message, "details": message}}, {"Retry-After": str(wait)}


def _copilot_429(model: str, over: str, lim: ModelLimits, wait: int) -> Refusal:
    body = {"error": {"message": "Sorry, you have been rate-limited. Please wait a moment before trying again.",
                      "code": "rate_limited"}}
    return body, {"Retry-After": str(wait)}


def _seconds_to_reset(ledger: ModelLedger, over: str, at: float) -> int:
    if over == "rpd":
        tz = zoneinfo.ZoneInfo(ledger.limits.tz)
        tomorrow = dt.datetime.combine(ledger.day(at) + dt.timedelta(days=1), dt.time(), tz)
        return max(int(tomorrow.timestamp() - at) + 1, 1)
    recent = ledger.window(at, 60.0)
    return max(int(recent[-1].at + 60 - at) + 1, 1) if recent else 1


def make_mocks(world: World) -> dict[str, Any]:
    """One server per provider kind of the catalog, each enforcing its models' limits in its own format."""
    from tests.mock_gemini import MockGemini, quota_exhausted
    from tests.mock_upstream import Behaviour, MockUpstream, RecordedRequest, _Connection, _route

    short = Behaviour(chunks=8)
    long = Behaviour(chunks=48, chunk_delay=0.004)

    class Enforcing(MockUpstream):
        provider = ""

        def behaviour_for(self, model: str | None) -> Behaviour:
            return long if _long_reply.get() else short

        def model_of(self, request: RecordedRequest) -> str | None:
            if request.method == "POST" and _route(request.path) == "/chat/completions":
                return str((request.json or {}).get("model", ""))
            return None

        async def refuse(self, conn: _Connection, verdict: str, ledger: ModelLedger | None, model: str,
                         keep_alive: bool) -> bool:
            if verdict == "outage":
                body = {"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable."}}
                return await self._send_json(conn, 503, body, keep_alive)
            assert ledger is not None
            over = verdict.removeprefix("over-")
            wait = _seconds_to_reset(ledger, over, world.clock.now())
            payload, headers = self.rate_limited(model, over, ledger.limits, wait)
            return await self._send_json(conn, 429, payload, keep_alive, headers)

        def rate_limited(self, model: str, over: str, lim: ModelLimits, wait: int) -> Refusal:
            return _copilot_429(model, over, lim, wait)

        async def _dispatch(self, conn: _Connection, request: RecordedRequest, keep_alive: bool) -> bool:
            if request.method == "GET" and request.path == "/copilot_internal/v2/token":
                # GitHub's exchange of the OAuth token for a short-lived Copilot token naming its API host.
                expires = int(world.clock.now()) + 1800
                return await self._send_json(conn, 200, {
                    "token": f"tid=sim;exp={expires};sku=plus", "expires_at": expires, "refresh_in": 1500,
                    "endpoints": {"api": self.url}}, keep_alive)
            model = self.model_of(request)
            if model is None:
                return await super()._dispatch(conn, request, keep_alive)
            mark = _MARK.search(request.body)
            is_long = bool(mark and mark.group(2))
            verdict, ledger = world.arrive(self.provider, model, request.body, 48 if is_long else 8)
            if verdict != "served":
                return await self.refuse(conn, verdict, ledger, model, keep_alive)
            token = _long_reply.set(is_long)
            try:
                return await super()._dispatch(conn, request, keep_alive)
            finally:
                _long_reply.reset(token)

    class OpenRouter(Enforcing):
        provider = "openrouter"

        def rate_limited(self, model: str, over: str, lim: ModelLimits, wait: int) -> Refusal:
            return _openrouter_429(model, over, lim, int((world.clock.now() + wait) * 1000))

    class GitHubModels(Enforcing):
        provider = "github_models"

        def rate_limited(self, model: str, over: str, lim: ModelLimits, wait: int) -> Refusal:
            return _github_429(model, over, lim, wait)

    class Copilot(Enforcing):
        provider = "github_copilot"

    class LMStudio(Enforcing):
        provider = "lm_studio"

    class Gemini(MockGemini):
        provider = "gemini"
        _path = re.compile(r"^/v1beta/models/([^/:]+):(generateContent|streamGenerateContent)$")

        def behaviour_for(self, model: str | None) -> Behaviour:
            return long if _long_reply.get() else short

        async def _dispatch(self, conn: _Connection, request: RecordedRequest, keep_alive: bool) -> bool:
            match = self._path.match(request.path)
            if not match or request.method != "POST":
                return await super()._dispatch(conn, request, keep_alive)
            model = match.group(1)
            mark = _MARK.search(request.body)
            is_long = bool(mark and mark.group(2))
            verdict, ledger = world.arrive(self.provider, model, request.body, 48 if is_long else 8)
            if verdict == "outage":
                return await self._error(conn, 503, "The model is overloaded. Please try again later.", keep_alive)
            if verdict != "served":
                assert ledger is not None
                over = verdict.removeprefix("over-")
                wait = _seconds_to_reset(ledger, over, world.clock.now())
                body = quota_exhausted(per_day=over == "rpd", retry_delay=f"{wait}s", model=model)
                return await self._send_json(conn, 429, body, keep_alive)
            token = _long_reply.set(is_long)
            try:
                return await super()._dispatch(conn, request, keep_alive)
            finally:
                _long_reply.reset(token)

    return {"openrouter": OpenRouter(record=False), "gemini": Gemini(record=False, api_key=GEMINI_KEY),
            "github_models": GitHubModels(record=False), "github_copilot": Copilot(record=False),
            "lm_studio": LMStudio(record=False)}


# --- the day's traffic -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    name: str
    limits: dict[str, int]  # the key's own limits (KeyLimits fields)
    per_minute: float  # requests a minute at full intensity (0 = bursts only)
    models: tuple[tuple[str, float], ...]
    stream: float = 0.5
    disconnect: float = 0.0  # of streams, the client leaves after two events
    long: float = 0.0  # of streams, a long answer
    steady: bool = False  # the same rate all day (a cron job), not following the peaks
    bursts: tuple[tuple[float, int, str], ...] = ()  # (simulated UTC hour, requests at once, model)


APPS: tuple[App, ...] = (
    App("chat-web", {"rpm": 20, "rpd": 1500}, 2.4,
        (("gpt-4o-mini", .35), ("google/gemini-2.5-flash", .25), ("gpt-oss-20b", .2),
         ("google/gemini-2.5-flash-lite", .2)), stream=.5, disconnect=.08),
    App("coding-agent", {}, 1.6,
        (("anthropic/claude-sonnet-4.5", .4), ("gemini-2.5-pro", .3), ("gpt-4.1", .3)), stream=.9, disconnect=.04,
        long=.3, bursts=((10.25, 14, "anthropic/claude-sonnet-4.5"), (19.75, 14, "anthropic/claude-sonnet-4.5"))),
    App("ide-plugin", {"rpm": 30}, 1.2,
        (("anthropic/claude-haiku-4.5", .4), ("copilot/grok-code-fast-1", .3), ("google/gemini-3-flash-preview", .3)),
        stream=.7, disconnect=.05),
    App("tiny-script", {"rpm": 3, "rpd": 60}, .25, (("gemma-3-12b", .5), ("google/gemini-2.0-flash", .5)),
        stream=0, steady=True, bursts=((9.0, 6, "gemma-3-12b"), (19.0, 6, "google/gemini-2.0-flash"))),
    App("nightly-batch", {"rpm": 60, "rpd": 400}, 0, (("google/gemini-2.5-flash-lite", 1.0),), stream=0,
        bursts=((5.5, 40, "google/gemini-2.5-flash-lite"), (13.0, 40, "google/gemini-2.5-flash-lite"),
                (23.5, 40, "google/gemini-2.5-flash-lite"), (20.0, 30, "gpt-oss-20b"))),
)
# Model groups: one public name served by two providers (the first tried first).
GROUPS: dict[str, tuple[str, ...]] = {
    "gpt-4o-mini": ("github/gpt-4o-mini", "copilot/gpt-4o-mini"),
    "gpt-4.1": ("github/gpt-4.1", "copilot/gpt-4.1"),
    "gemini-2.5-pro": ("google/gemini-2.5-pro", "copilot/gemini-2.5-pro"),
    "gpt-oss-20b": ("openrouter/gpt-oss-20b", "gpt-oss-20b"),  # the free tier first, the local one after
}
# Models whose requests may wait for a slot (max_wait_seconds): the batch's and the agent's.
MAX_WAIT = {"google/gemini-2.5-flash-lite": 90.0, "anthropic/claude-sonnet-4.5": 30.0, "gpt-4o-mini": 20.0}


def intensity(hour: float) -> float:
    """Relative load by simulated UTC hour: a morning and an evening peak, a quiet night."""
    h = hour % 24
    if 7 <= h < 11:
        return 1.0
    if 17 <= h < 22:
        return 1.2
    if 11 <= h < 17:
        return .5
    if h >= 22 or h < 1:
        return .25
    return .08


@dataclass
class Planned:
    sim_id: int
    at: float
    app: str
    model: str
    stream: bool
    disconnect: bool
    long: bool


def plan_day(start: float, hours: float, seed: int, scale: float) -> list[Planned]:
    rng = random.Random(seed)
    out: list[Planned] = []
    start_hour = dt.datetime.fromtimestamp(start, dt.UTC).hour

    def add(app: App, at: float, model: str) -> None:
        stream = rng.random() < app.stream
        out.append(Planned(0, at, app.name, model, stream, stream and rng.random() < app.disconnect,
                           stream and rng.random() < app.long))

    for app in APPS:
        if app.per_minute:
            t = 0.0
            while True:
                hour = start_hour + t / 3600
                rate = app.per_minute * scale * (1.0 if app.steady else intensity(hour)) / 60
                t += rng.expovariate(rate)
                if t >= hours * 3600:
                    break
                add(app, start + t, rng.choices([m for m, _ in app.models], [w for _, w in app.models])[0])
        for burst_hour, count, model in app.bursts:
            offset = ((burst_hour - start_hour) % 24) * 3600
            if offset < hours * 3600:
                for _ in range(count):  # a burst is an event of the day: --scale leaves it whole
                    add(app, start + offset + rng.random() * 0.5, model)
    out.sort(key=lambda p: p.at)
    for i, p in enumerate(out, 1):
        p.sim_id = i
    return out


# --- sending it --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    planned: Planned
    sent_sim: float = 0.0
    answered_sim: float = 0.0  # when the response head arrived
    status: int = 0
    code: str = ""
    message: str = ""
    request_id: str = ""
    events: int = 0
    done: bool = False
    error: str = ""  # a transport failure
    refusal: str = ""  # key | outage | no-room (429s only)
    avoidable: list[str] = field(default_factory=list)
    # From sending to the arrival at the mock that served it (simulated seconds): the wait for a slot.
    waited: float = 0.0


class Driver:
    def __init__(self, clock: SimClock, world: World, portal: str, keys: dict[str, str],
                 routes: dict[str, list[tuple[str, str]]], run: str) -> None:
        self.clock, self.world, self.portal, self.keys, self.routes, self.run = clock, world, portal, keys, routes, run
        # Only these models' requests can wait for a slot in the portal; any other request the mocks have not
        # seen yet is on its way to them, and the clock holds still for it.
        self.may_wait = set(MAX_WAIT)
        self.outcomes: list[Outcome] = []
        self.inflight: dict[int, tuple[Outcome, float]] = {}  # sim id -> (outcome, real time sent)
        self.last_jump = time.monotonic()
        self.pending_checks: list[tuple[Outcome, float, float]] = []  # (outcome, sim time of the 429, real time)
        self.tasks: set[asyncio.Task[None]] = set()
        self.jumps: list[tuple[float, float, float]] = []  # (real time, simulated from, simulated to)

    def body(self, p: Planned) -> dict[str, Any]:
        mark = f"[sim:{p.sim_id}{':long' if p.long else ''}]"
        body: dict[str, Any] = {"model": p.model, "max_tokens": MAX_TOKENS, "messages": [
            {"role": "user", "content": f"{mark} {p.app} asks a question of about this length, as apps do."}]}
        if p.stream:
            body["stream"] = True
        return body

    async def send(self, client: Any, p: Planned) -> None:
        o = Outcome(p, sent_sim=self.clock.now())
        self.outcomes.append(o)
        self.inflight[p.sim_id] = (o, time.monotonic())
        headers = {"Authorization": f"Bearer {self.keys[p.app]}", "x-portal-tags": f"simday={self.run},app={p.app}"}
        try:
            async with client.stream("POST", f"{self.portal}/v1/chat/completions", json=self.body(p),
                                     headers=headers) as response:
                o.answered_sim, o.status = self.clock.now(), response.status_code
                o.request_id = response.headers.get("x-request-id", "")
                if response.status_code != 200:
                    error = orjson.loads(await response.aread()).get("error") or {}
                    o.code, o.message = str(error.get("code") or ""), str(error.get("message") or "")
                elif p.stream:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            o.events += 1
                            if p.disconnect and o.events >= 2:
                                break  # leaving the block closes the connection mid-stream
                else:
                    await response.aread()
        except Exception as e:  # a transport failure is a finding of the run, reported with the rest
            o.error = f"{type(e).__name__}: {e}"
        o.done = True
        self.inflight.pop(p.sim_id, None)
        if o.status == 429:
            self.classify(o)
            self.pending_checks.append((o, self.clock.now(), time.monotonic()))

    def classify(self, o: Outcome) -> None:
        if "your API key" in o.message:
            o.refusal = "key"
        elif any(self.world.recovering(provider, o.answered_sim)
                 for provider, _ in self.routes.get(o.planned.model, [])):
            o.refusal = "outage"  # during the outage, or parked in its aftermath (back-off up to 60 s)
        else:
            o.refusal = "no-room"

    def check_refusals(self) -> None:
        """A refusal was avoidable if, by the mocks' counts, some deployment of the group had room then (the
        key's own limits aside). Checked after the run, with the requests that reached the mocks just after it."""
        for o, at, _ in self.pending_checks:
            if o.refusal != "key":
                tokens = len(orjson.dumps(self.body(o.planned))) // 4 + 8
                o.avoidable = [f"{provider}:{model}" for provider, model in self.routes.get(o.planned.model, [])
                               if self.world.has_room(provider, model, at, tokens)]
        self.pending_checks = []

    def quiet(self) -> bool:
        """Nothing between the portal's admission and a mock's receipt: every request in flight has reached a
        mock (and got an answer there that ends its attempts), or has long been waiting for a slot."""
        now = time.monotonic()
        if now - self.last_jump < 0.003:
            return False
        for sim_id, (o, sent) in self.inflight.items():
            seen = self.world.seen.get(sim_id)
            if seen is not None and sim_id not in self.world.failed_attempt:
                continue  # its provider has it; the rest happens at the provider's pace
            if o.planned.model in self.may_wait and now - (seen or sent) >= HOLD and now - self.last_jump >= HOLD:
                continue  # waiting for a slot in the portal (or parked after a failed attempt)
            return False
        return True

    def waiting(self) -> bool:
        return any(o.planned.model in self.may_wait and (sim_id not in self.world.seen or
                                                         sim_id in self.world.failed_attempt)
                   for sim_id, (o, _) in self.inflight.items())

    async def run_day(self, plan: list[Planned], start: float, end: float, progress: bool) -> None:
        import httpx

        limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
            i, last_hour = 0, -1
            while i < len(plan) or self.inflight:
                now = self.clock.now()
                while i < len(plan) and plan[i].at <= now:
                    task = asyncio.create_task(self.send(client, plan[i]))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    i += 1
                await asyncio.sleep(0.002)
                deadline = time.monotonic() + 60
                while not self.quiet():
                    await asyncio.sleep(0.002)
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the portal kept {len(self.inflight)} requests for a minute of real time")
                target = plan[i].at if i < len(plan) else self.clock.now() + WAIT_STEP
                if self.waiting():
                    target = min(target, self.clock.now() + WAIT_STEP)
                if target > self.clock.now():
                    before = self.clock.now()
                    self.clock.jump_to(min(target, end + 600))
                    self.last_jump = time.monotonic()
                    self.jumps.append((self.last_jump, before, self.clock.now()))
                hour = int((self.clock.now() - start) // 3600)
                if progress and hour != last_hour:
                    last_hour = hour
                    print(f"  sim {dt.datetime.fromtimestamp(self.clock.now(), dt.UTC):%H:%M} UTC: "
                          f"{len(self.outcomes)} sent, {len(self.inflight)} in flight", flush=True)
            if self.tasks:
                await asyncio.gather(*self.tasks)
            self.check_refusals()
        served_at = {a.sim_id: a.at for a in self.world.arrivals if a.verdict == "served"}
        for o in self.outcomes:
            if o.planned.sim_id in served_at:
                o.waited = max(served_at[o.planned.sim_id] - o.sent_sim, 0.0)


# --- the Django side (a child process with the portal's environment) -----------------------------------------


def django_command(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    parser = argparse.ArgumentParser(prog="simday.py django")
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup")
    p_setup.add_argument("--urls", required=True, help="JSON: provider name -> mock base URL")
    p_setup.add_argument("--miscount", action="store_true")
    p_usage = sub.add_parser("usage")
    p_usage.add_argument("--run", required=True)
    p_usage.add_argument("--ids", required=True, help="file with one request id a line")
    p_usage.add_argument("--export-timeout", type=float, default=0.0)
    args = parser.parse_args(argv)
    result = setup_portal(orjson.loads(args.urls), args.miscount) if args.command == "setup" else \
        count_usage(args.run, Path(args.ids), args.export_timeout)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


def setup_portal(urls: dict[str, str], miscount: bool = False) -> dict[str, Any]:
    """Point the catalog's providers at the mocks, form the groups, issue the apps' keys; return the routes and
    limits the mocks enforce (read back from the portal's own rows, so both use the same figures)."""
    from django.contrib.auth import get_user_model

    from accounts.models import ApiKey
    from accounts.principal import KeyLimits
    from gateway.models import CopilotAuth, Deployment, Provider

    for provider in Provider.objects.all():
        if provider.name in urls and provider.name != "lm_studio":
            provider.api_base = urls[provider.name]
        provider.enabled, provider.awaiting_credential = True, False
        provider.save()
        if provider.name == "github_copilot":
            CopilotAuth.for_provider(provider).connect("ghu_simulated0123456789", source="device_flow")
    for group, members in GROUPS.items():
        for priority, public in enumerate(members):
            Deployment.objects.filter(public_name=public).update(public_name=group, priority=priority)
    for public, seconds in MAX_WAIT.items():
        Deployment.objects.filter(public_name=public).update(max_wait_seconds=seconds)
    User = get_user_model()
    keys = {}
    for app in APPS:
        user, _ = User.objects.get_or_create(username=app.name)
        _, keys[app.name] = ApiKey.objects.issue(user, f"{app.name} (simulated day)", limits=KeyLimits(**app.limits))
    routes: dict[str, list[tuple[str, str]]] = defaultdict(list)
    limits = []
    for d in Deployment.objects.select_related("provider").order_by("public_name", "priority", "id"):
        upstream = d.upstream_model
        routes[d.public_name].append((d.provider.name, upstream))
        tz = d.provider.reset_timezone  # set from the provider's kind when it was created (Gemini: Pacific)
        limits.append({"provider": d.provider.name, "model": upstream, "rpm": d.rpm, "tpm": d.tpm, "rpd": d.rpd,
                       "tz": tz})
    if miscount:  # after the mocks' figures are read: the portal alone believes these
        from django.db.models import F

        Deployment.objects.filter(public_name="anthropic/claude-sonnet-4.5").update(rpm=F("rpm") * 2)
        Deployment.objects.filter(public_name="google/gemini-2.5-flash").update(rpd=3)
    return {"keys": keys, "routes": routes, "limits": limits, "deployments": Deployment.objects.count()}


def count_usage(run: str, ids_file: Path, export_timeout: float) -> dict[str, Any]:
    from django.db.models import Count

    from tracking.models import UsageRecord

    sent = set(ids_file.read_text().split())
    tagged = UsageRecord.objects.filter(tags__simday=run)
    deadline = time.monotonic() + 30
    while tagged.count() < len(sent) and time.monotonic() < deadline:
        time.sleep(0.5)  # the records of the last requests are written in a batch
    recorded = list(tagged.values_list("request_id", flat=True))
    out: dict[str, Any] = {
        "records": len(recorded),
        "duplicates": len(recorded) - len(set(recorded))
        + tagged.values("request_id").annotate(n=Count("id")).filter(n__gt=1).count(),
        "missing": len(sent - set(recorded)),
        "extra": len(set(recorded) - sent),
        "by_provider": dict(tagged.filter(ok=True).values_list("provider").annotate(n=Count("id")).order_by()),
    }
    if export_timeout:
        deadline = time.monotonic() + export_timeout
        while tagged.filter(exported_at__isnull=True).exists() and time.monotonic() < deadline:
            time.sleep(1)
        done = tagged.filter(exported_at__isnull=False, ended__isnull=False)
        pairs = list(done.values_list("exported_at", "ended"))
        lags = sorted((exported - ended).total_seconds() for exported, ended in pairs)
        out["exported"] = len(lags)
        out["export_lag_p50"] = lags[len(lags) // 2] if lags else None
        out["export_lag_max"] = lags[-1] if lags else None
        if pairs:
            span = (max(e for e, _ in pairs) - min(n for _, n in pairs)).total_seconds()
            out["export_per_second"] = round(len(pairs) / max(span, 1.0), 1)
    return out


# --- running it all ----------------------------------------------------------------------------------------------


def sim_start(hour: int) -> float:
    """`hour` UTC on the Monday after the coming one: ahead of the real clock, and always a Monday."""
    today = dt.datetime.now(dt.UTC).date()
    monday = today + dt.timedelta(days=7 - today.weekday() + 7)
    return dt.datetime.combine(monday, dt.time(hour), dt.UTC).timestamp()


def portal_env(run_dir: Path, clock_file: Path, workers: int, mlflow: bool, copilot_url: str,
               lm_studio_url: str) -> dict[str, str]:
    env = {**os.environ, "PORTAL_DATA_DIR": str(run_dir), "PORTAL_FAKE_CLOCK_FILE": str(clock_file),
           "WEB_CONCURRENCY": str(workers), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1",
           "OPENROUTER_API_KEY": "sk-or-simulated", "GEMINI_API_KEY": GEMINI_KEY, "GITHUB_API_KEY": "ghp_simulated",
           "LM_STUDIO_API_BASE": lm_studio_url, "LM_STUDIO_API_KEY": "lm-studio",
           "GITHUB_COPILOT_API_URL": copilot_url, "GITHUB_COPILOT_TOKEN_DIR": str(run_dir / "copilot"),
           # Waiting requests look at the moved clock often; the real default (0.25 s) would slow the run.
           "QUOTA_WAIT_POLL_SECONDS": "0.02", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if "DATABASE_URL" not in os.environ:
        env["DATABASE_URL"] = f"sqlite:///{run_dir / 'portal.sqlite3'}"
    if mlflow:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{run_dir / 'mlflow.db'}"
        env["MLFLOW_ARTIFACT_ROOT"] = str(run_dir / "mlflow-artifacts")
        env["MLFLOW_EXPORT_INTERVAL"] = "5"
    return env


def manage(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([PYTHON, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"manage.py {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def django_json(env: dict[str, str], *argv: str) -> dict[str, Any]:
    done = subprocess.run([PYTHON, __file__, "django", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"simday.py django {argv[0]} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def wipe(env: dict[str, str]) -> None:
    """A scratch PostgreSQL database and Redis db start empty: a second run must not inherit counters."""
    if env["DATABASE_URL"].startswith("postgres"):
        manage(env, "flush", "--no-input")
    if env.get("REDIS_URL"):
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).flushdb()


async def simulate(args: argparse.Namespace) -> dict[str, Any]:
    from bench.procs import Children, free_port, supervised

    run = secrets.token_hex(4)
    run_dir = Path(tempfile.mkdtemp(prefix="simday-"))
    (run_dir / "copilot").mkdir()
    start = sim_start(args.start_hour)
    end = start + args.hours * 3600
    clock = SimClock(run_dir / "clock", start - 3 * 3600)
    outage = tuple(start + ((hour - args.start_hour) % 24) * 3600 for hour in OUTAGE[1:])
    world = World(clock, {}, outage)
    mocks = make_mocks(world)
    for mock in mocks.values():
        await mock.start_async()
    urls = {"openrouter": mocks["openrouter"].url + "/v1", "gemini": mocks["gemini"].url + "/v1beta",
            "github_models": mocks["github_models"].url + "/v1", "github_copilot": mocks["github_copilot"].url,
            "lm_studio": mocks["lm_studio"].url + "/v1"}
    redis_on = bool(os.environ.get("REDIS_URL"))
    workers = 2 if redis_on else 1  # without Redis, quotas live in one process's memory
    env = portal_env(run_dir, run_dir / "clock", workers, args.mlflow, urls["github_copilot"], urls["lm_studio"])
    children = Children(ROOT, run_dir)
    started = time.monotonic()

    def stage(name: str) -> None:
        if args.progress:
            print(f"  [{time.monotonic() - started:5.1f} s] {name}", flush=True)

    with supervised(children, run_dir, args.keep):
        manage(env, "migrate", "--no-input")
        stage("migrated")
        wipe(env)
        manage(env, "load_catalog")
        stage("catalog loaded")
        miscount = ["--miscount"] if args.miscount else []
        setup = django_json(env, "setup", "--urls", orjson.dumps(urls).decode(), *miscount)
        for row in setup["limits"]:
            world.ledgers[(row["provider"], row["model"])] = ModelLedger(
                ModelLimits(row["rpm"], row["tpm"], row["rpd"], row["tz"]))
        port = free_port()
        portal = f"http://127.0.0.1:{port}"
        gunicorn = children.start("gunicorn", [str(Path(PYTHON).with_name("gunicorn")), "portal.asgi:application",
                                               "-c", "deploy/gunicorn.conf.py"], {**env, "PORT": str(port)})
        await asyncio.to_thread(gunicorn.wait_http, f"{portal}/health/liveliness", 120)
        stage("gunicorn up")
        if args.mlflow:
            children.start("celery", [str(Path(PYTHON).with_name("celery")), "-A", "portal", "worker", "-B",
                                      "--concurrency", "1", "--loglevel", "WARNING", "--schedule",
                                      str(run_dir / "celerybeat-schedule")], env)
        driver = Driver(clock, world, portal, setup["keys"], {k: [tuple(r) for r in v] for k, v in
                                                              setup["routes"].items()}, run)
        await warm_up(portal, setup["keys"]["coding-agent"], run, clock)
        stage("warmed up")
        warm_up_refused = [a for a in world.arrivals if a.verdict != "served"]
        if warm_up_refused:
            raise RuntimeError(f"the warm-up went beyond a limit: {warm_up_refused}")
        world.arrivals.clear()  # its requests stay in the mocks' counts, as they do in the portal's
        world.seen.clear()
        clock.set(start)
        plan = plan_day(start, args.hours, args.seed, args.scale)
        print(f"simulating {args.hours} h from {dt.datetime.fromtimestamp(start, dt.UTC):%Y-%m-%d %H:%M} UTC: "
              f"{len(plan)} requests, portal with {workers} worker(s) on "
              f"{'PostgreSQL' if env['DATABASE_URL'].startswith('postgres') else 'SQLite'}"
              f"{' + Redis' if redis_on else ''}", flush=True)
        traffic_started = time.monotonic()
        await driver.run_day(plan, start, end, args.progress)
        traffic_seconds = time.monotonic() - traffic_started
        ids = run_dir / "request-ids.txt"
        ids.write_text("\n".join(o.request_id for o in driver.outcomes if o.request_id))
        usage = django_json(env, "usage", "--run", run, "--ids", str(ids),
                            "--export-timeout", "30" if args.mlflow else "0")
        compared = None
        day_arrivals = list(world.arrivals)
        if args.litellm:
            stage("side-by-side burst")
            compared = await side_by_side(args, children, world, clock, portal, setup["keys"]["coding-agent"],
                                          setup, urls, run_dir)
        world.arrivals = day_arrivals  # the day's figures are the day's alone
        for mock in mocks.values():
            await mock.aclose()
    figures = summarize(driver, world, usage, setup, args, start)
    figures["side_by_side"] = compared
    figures["real_seconds"] = round(time.monotonic() - started, 1)
    figures["traffic_seconds"] = round(traffic_seconds, 1)
    figures["compression"] = round(args.hours * 3600 / max(traffic_seconds, 1.0), 1)
    figures["workers"] = workers
    figures["store"] = ("PostgreSQL" if env["DATABASE_URL"].startswith("postgres") else "SQLite") + \
        (" + Redis" if redis_on else " (quotas in process memory)")
    return figures


# One model of each provider: every worker's first call down each of LiteLLM's paths (Gemini's, the
# OpenAI-compatible one, Copilot's token exchange) is slow, and must not fall inside the simulated day.
WARM_UP_MODELS = ("gemma-3-1b", "google/gemini-2.5-flash-lite", "copilot/gpt-5-mini", "github/gpt-5", "gpt-oss-20b")


async def warm_up(portal: str, key: str, run: str, clock: SimClock) -> None:
    """Three rounds, two simulated minutes apart (GitHub Models allows 2 a minute), of a plain and a streamed
    call to each provider, three hours before the day starts. The mocks count them like any request."""
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(3):
            await asyncio.gather(*(client.post(f"{portal}/v1/chat/completions", headers={
                "Authorization": f"Bearer {key}", "x-portal-tags": f"warmup={run}"},
                json={"model": model, "stream": stream, "messages": [{"role": "user", "content": "warm up"}]})
                for model in WARM_UP_MODELS for stream in (False, True)))
            clock.jump_to(clock.now() + 120)


# --- the side-by-side burst: the portal and LiteLLM Proxy on the same mocks -----------------------------------

# Requests sent at once, in real time, for models with no wait-for-slot: more than each deployment (or group)
# allows in a minute. LiteLLM Proxy counts minutes in real time, so it cannot run the day on the moved clock;
# this burst is what both can be given alike.
BURST: tuple[tuple[str, int], ...] = (
    ("anthropic/claude-sonnet-4.5", 14), ("anthropic/claude-opus-4.5", 6), ("gpt-4.1", 16), ("gemini-2.5-pro", 14),
    ("google/gemini-2.0-flash", 20),
)
LITELLM_BIN = ROOT / ".venv-litellm" / "bin" / "litellm"


async def burst(world: World, url: str, key: str) -> dict[str, Any]:
    """Send the burst; how many requests each gateway served, refused, and sent beyond a provider's limit."""
    import httpx

    first = len(world.arrivals)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as client:
        responses = await asyncio.gather(*(
            client.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                        json={"model": model, "max_tokens": MAX_TOKENS,
                              "messages": [{"role": "user", "content": f"burst {i}"}]})
            for model, count in BURST for i in range(count)), return_exceptions=True)
    await asyncio.sleep(0.5)
    arrivals = world.arrivals[first:]
    statuses = Counter(r.status_code if not isinstance(r, BaseException) else type(r).__name__ for r in responses)
    return {"sent": len(responses), "statuses": {str(k): v for k, v in statuses.items()},
            "reached_mocks": len(arrivals),
            "beyond_limit": sum(1 for a in arrivals if a.verdict.startswith("over-")),
            "beyond_by_model": dict(Counter(f"{a.provider}:{a.model}" for a in arrivals
                                            if a.verdict.startswith("over-")))}


def litellm_config(setup: dict[str, Any], urls: dict[str, str], path: Path) -> str:
    """The burst's models as a LiteLLM Proxy config: the same deployments, rpm and tpm (LiteLLM has no rpd),
    each provider reached as LiteLLM reaches an OpenAI-compatible server or Gemini at a given api_base."""
    limits = {(r["provider"], r["model"]): r for r in setup["limits"]}
    model_list = []
    for public, _ in BURST:
        for provider, upstream in setup["routes"][public]:
            row = limits[(provider, upstream)]
            params: dict[str, Any] = {"model": f"gemini/{upstream}" if provider == "gemini" else f"openai/{upstream}",
                                      "api_base": urls[provider],
                                      "api_key": GEMINI_KEY if provider == "gemini" else "sk-simulated"}
            params |= {k: row[k] for k in ("rpm", "tpm") if row[k] is not None}
            model_list.append({"model_name": public, "litellm_params": params})
    master = "sk-simday-litellm-" + secrets.token_urlsafe(12)
    config = {"model_list": model_list,
              # The strategy that counts rpm/tpm per deployment; with the default (simple-shuffle) they only weigh.
              "router_settings": {"routing_strategy": "usage-based-routing-v2", "num_retries": 0},
              "general_settings": {"master_key": master}, "litellm_settings": {"telemetry": False}}
    path.write_text(orjson.dumps(config).decode())  # JSON is YAML
    return master


async def side_by_side(args: argparse.Namespace, children: Any, world: World, clock: SimClock, portal: str,
                       key: str, setup: dict[str, Any], urls: dict[str, str], run_dir: Path) -> dict[str, Any]:
    from bench.procs import free_port

    out: dict[str, Any] = {}
    # A fresh day for each gateway, far from the simulated one: every window starts empty at the mocks too.
    clock.jump_to(clock.now() + 2 * 86400)
    out["portal"] = await burst(world, portal, key)
    binary = Path(args.litellm_bin)
    if not binary.is_file():
        out["litellm"] = {"skipped": f"{binary} not found (make bench-litellm installs it)"}
        return out
    config = run_dir / "litellm.yaml"
    master = litellm_config(setup, urls, config)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", PYTHONUNBUFFERED="1")
    # Two workers and no Redis, as the user's compose file runs it.
    proxy = children.start("litellm", [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port",
                                       str(port), "--num_workers", "2", "--run_gunicorn"], env)
    try:
        await asyncio.to_thread(proxy.wait_http, f"http://127.0.0.1:{port}/health/liveliness", 240)
    except RuntimeError as e:
        out["litellm"] = {"skipped": f"LiteLLM Proxy did not start: {str(e)[:300]}"}
        return out
    clock.jump_to(clock.now() + 86400)
    out["litellm"] = await burst(world, f"http://127.0.0.1:{port}", master)
    return out


# --- figures, report, plot ---------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def overstep_detail(a: Arrival, world: World, driver: Driver) -> dict[str, Any]:
    """An overstep with the accepted requests it collided with: when each reached the mock, and whether a clock
    jump came between its sending and its arrival (then the portal may have admitted it before the jump)."""
    ledger = world.ledgers[(a.provider, a.model)]
    sent = {o.planned.sim_id: o for o in driver.outcomes}

    def crossed(e: Accepted) -> bool:
        o = sent.get(e.sim_id)
        arrival = next((x for x in world.arrivals if x.sim_id == e.sim_id and x.verdict == "served"), None)
        return bool(o and arrival and any(o.sent_sim < frm and real <= arrival.real
                                          for real, frm, _ in driver.jumps))

    window = [e for e in ledger.window(a.at, 60.0) if e.at < a.at]
    return {"at": f"{dt.datetime.fromtimestamp(a.at, dt.UTC):%H:%M:%S.%f}"[:-3], "sim_id": a.sim_id,
            "window": len(window), "oldest": round(a.at - window[-1].at, 2) if window else None,
            "arrived_after_a_jump": sum(1 for e in window if crossed(e))}


def summarize(driver: Driver, world: World, usage: dict[str, Any], setup: dict[str, Any], args: argparse.Namespace,
              start: float) -> dict[str, Any]:
    outs = driver.outcomes
    served = [o for o in outs if o.status == 200 and not o.error]
    waited = [o for o in served if o.waited > 1.0]
    refused = [o for o in outs if o.status == 429]
    avoidable = [o for o in refused if o.avoidable]
    oversteps = [a for a in world.arrivals if a.verdict.startswith("over-")]
    hours = int(args.hours)
    per_hour: dict[str, list[int]] = defaultdict(lambda: [0] * hours)
    served_by: dict[int, str] = {}
    for a in world.arrivals:
        if a.verdict == "served":
            served_by[a.sim_id] = a.provider
    for o in outs:
        h = min(int((o.planned.at - start) // 3600), hours - 1)
        if o.status == 200 and not o.error:
            per_hour[f"served: {served_by.get(o.planned.sim_id, '?')}"][h] += 1
            if o.waited > 1.0:
                per_hour["served after waiting"][h] += 1
        elif o.status == 429:
            per_hour[f"refused: {o.refusal}"][h] += 1
        else:
            per_hour["other errors"][h] += 1
    records_ok = usage["records"] == len([o for o in outs if o.request_id]) and not usage["missing"] \
        and not usage["duplicates"]
    return {
        "seed": args.seed, "hours": args.hours, "scale": args.scale,
        "start_utc": f"{dt.datetime.fromtimestamp(start, dt.UTC):%Y-%m-%d %H:%M}",
        "deployments": setup["deployments"],
        "sent": len(outs),
        "served": len(served),
        "served_streams_left_by_client": sum(1 for o in served if o.planned.disconnect),
        "served_after_waiting": len(waited),
        "refused_429": len(refused),
        "refused_by_kind": dict(Counter(o.refusal for o in refused)),
        "refused_by_model": dict(Counter(f"{o.planned.model} ({o.refusal})" for o in refused).most_common()),
        "other_errors": dict(Counter(f"{o.status} {o.code or o.error[:60]}" for o in outs
                                     if o.status not in (200, 429) or o.error)),
        "avoidable_refusals": len(avoidable),
        "avoidable_examples": [{"model": o.planned.model, "message": o.message, "room_on": o.avoidable,
                                "at": f"{dt.datetime.fromtimestamp(o.answered_sim, dt.UTC):%H:%M:%S}"}
                               for o in avoidable[:5]],
        "mock_received": len(world.arrivals),
        "mock_accepted": sum(1 for a in world.arrivals if a.verdict == "served"),
        "mock_outage_503": sum(1 for a in world.arrivals if a.verdict == "outage"),
        "oversteps": len(oversteps),
        "oversteps_by_model": dict(Counter(f"{a.provider}:{a.model} {a.verdict}" for a in oversteps)),
        "overstep_details": [overstep_detail(a, world, driver) for a in oversteps[:6]],
        "unknown_models_at_mocks": dict(world.unknown),
        "accepted_by_provider": dict(Counter(a.provider for a in world.arrivals if a.verdict == "served")),
        "wait_p50_s": pct([o.waited for o in waited], .5),
        "wait_p99_s": pct([o.waited for o in waited], .99),
        "wait_max_s": max((o.waited for o in waited), default=None),
        "longest_waits": [{"model": o.planned.model, "app": o.planned.app, "waited_s": round(o.waited, 1),
                           "sent": f"{dt.datetime.fromtimestamp(o.sent_sim, dt.UTC):%H:%M:%S}"}
                          for o in sorted(waited, key=lambda o: -o.waited)[:8]],
        "responses": len([o for o in outs if o.request_id]),
        "usage": usage,
        "records_equal_responses": records_ok,
        "per_hour": dict(per_hour),
    }


def write_report(figures: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"simday-{figures['hours']:g}h"
    stem.with_suffix(".json").write_text(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() + "\n")
    plotted = plot(figures, stem.with_suffix(".png"))
    f = figures
    u = f["usage"]
    lag = ""
    if u.get("exported"):
        real_peak = max(sum(v[h] for v in f["per_hour"].values()) for h in range(int(f["hours"]))) / 3600
        lag = (f"| MLflow export (Celery beat every 5 s, MLflow on SQLite) | {u['exported']} of {u['records']} "
               f"records exported by 30 s after the traffic, {u['export_per_second']}/s; lag (record ended → "
               f"exported) p50 {u['export_lag_p50']:.0f} s, max {u['export_lag_max']:.0f} s of real time, while the "
               f"day came {f['compression']:.0f}x faster than real; the real day's busiest hour needs "
               f"{real_peak:.2f}/s |\n")
    else:
        lag = "| MLflow export | " + ("none exported by 30 s after the traffic" if "exported" in u else
                                     "not measured (--no-mlflow)") + " |\n"

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f} s"

    lines = [
        f"# A simulated day on the free tiers ({f['hours']:g} h from {f['start_utc']} UTC, seed {f['seed']})",
        "",
        f"Portal: gunicorn, {f['workers']} worker(s), {f['store']}; built-in catalog ({f['deployments']} "
        f"deployments, 4 groups of two). Mocks enforce each model's RPM/TPM/RPD as its provider does. "
        f"Run took {f['real_seconds']} s of real time ({f['traffic_seconds']} s of traffic).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests sent | {f['sent']} |",
        f"| served (200) | {f['served']} (of which {f['served_streams_left_by_client']} streams the client left) |",
        f"| served after waiting for a slot | {f['served_after_waiting']} |",
        f"| refused with 429 | {f['refused_429']}: no deployment had room {f['refused_by_kind'].get('no-room', 0)}, "
        f"key limit {f['refused_by_kind'].get('key', 0)}, outage {f['refused_by_kind'].get('outage', 0)} |",
        f"| other errors | {sum(f['other_errors'].values())} {f['other_errors'] or ''} |",
        f"| **avoidable refusals** (must be 0) | **{f['avoidable_refusals']}** |",
        f"| **requests a mock rejected for exceeding its limit** (must be 0) | **{f['oversteps']}** |",
        f"| requests the mocks received / accepted / 503 in the outage | {f['mock_received']} / {f['mock_accepted']} "
        f"/ {f['mock_outage_503']} |",
        f"| wait for a slot p50 / p99 / max (simulated) | {fmt(f['wait_p50_s'])} / {fmt(f['wait_p99_s'])} / "
        f"{fmt(f['wait_max_s'])} |",
        f"| usage records vs responses (must be equal) | {u['records']} vs {f['responses']} "
        f"(missing {u['missing']}, duplicates {u['duplicates']}) |",
        lag.rstrip("\n"),
        "",
        "Refusals by model: " + (", ".join(f"{k}: {v}" for k, v in f["refused_by_model"].items()) or "none") + ".",
        "",
        "Served by provider: " + ", ".join(f"{k}: {v}" for k, v in sorted(f["accepted_by_provider"].items())) + ".",
        "",
    ]
    if f.get("side_by_side"):
        lines += side_by_side_lines(f["side_by_side"])
    if f["oversteps_by_model"]:
        lines += ["Oversteps: " + ", ".join(f"{k}: {v}" for k, v in f["oversteps_by_model"].items()) + ".", ""]
    if f["avoidable_examples"]:
        lines += ["Avoidable refusals (first ones): " + orjson.dumps(f["avoidable_examples"]).decode(), ""]
    if plotted:
        lines += [f"![per hour]({stem.with_suffix('.png').name})", ""]
    lines += [DEFINITIONS]
    path = stem.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path


def side_by_side_lines(compared: dict[str, Any]) -> list[str]:
    what = ", ".join(f"{n} × {m}" for m, n in BURST)
    lines = [f"Side by side, one burst at once in real time on fresh windows ({what}; no wait-for-slot), same "
             "mocks, same deployments and rpm/tpm (LiteLLM Proxy 2 workers, no Redis, "
             "usage-based-routing-v2, as a LiteLLM user would run it):", "",
             "| gateway | sent | answers | reached the providers | **sent beyond a provider limit** |",
             "|---|---|---|---|---|"]
    for name, row in compared.items():
        if "skipped" in row:
            lines.append(f"| {name} | – | skipped: {row['skipped']} | – | – |")
            continue
        by_model = ", ".join(f"{k}: {v}" for k, v in row["beyond_by_model"].items())
        beyond = f"**{row['beyond_limit']}**" + (f" ({by_model})" if by_model else "")
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items()))
        lines.append(f"| {name} | {row['sent']} | {answers} | {row['reached_mocks']} | {beyond} |")
    return [*lines, ""]


DEFINITIONS = """Definitions:
- *served*: HTTP 200 (a stream the client left after two events counts as served).
- *served after waiting*: it reached the mock that served it more than 1 simulated second after it was
  sent (it waited in the portal for a slot: `max_wait_seconds` on flash-lite 90 s, claude-sonnet-4.5 30 s,
  gpt-4o-mini 20 s).
- *refused, key limit*: the 429 names the caller's key ("your API key"); *outage*: a deployment of the
  group was in the hour-long GitHub Models outage (or its 60 s back-off after it); *no deployment had room*:
  the rest.
- *avoidable refusal*: a 429 not caused by the key's own limit, although at that simulated moment the mocks'
  own counts show a deployment of the group, not in (or within 60 s after) the outage, with room for one
  more request: fewer than its RPM received in the last 61 s (the portal counts a request for the rest of its
  second plus 60 s, by design), its TPM likewise, and fewer than its RPD that day in the provider's time
  zone. The counts include requests that reached the mock up to 1 simulated second after the refusal: those
  the portal admitted just before it were still on their way.
- *overstep*: a request a mock answered with its 429 because it exceeded the model's RPM/TPM (last 60 s) or
  RPD (that day, in the provider's time zone: Gemini resets at midnight Pacific).
- TPM at the mocks counts request bytes/4 plus the reply's tokens; the portal admits on its own estimate
  (prompt/4 + max_tokens = 200), so TPM (125K-1M) never binds at this traffic.
"""


def plot(figures: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    per_hour = figures["per_hour"]
    hours = int(figures["hours"])
    start_hour = int(figures["start_utc"][-5:-3])
    labels = [f"{(start_hour + h) % 24:02d}" for h in range(hours)]
    fig, ax = plt.subplots(figsize=(12, 5))
    bottom = [0] * hours
    for name in sorted(k for k in per_hour if k.startswith("served: ")):
        ax.bar(range(hours), per_hour[name], bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, per_hour[name], strict=True)]
    refused = [sum(per_hour.get(f"refused: {k}", [0] * hours)[h] for k in ("no-room", "key", "outage"))
               for h in range(hours)]
    ax.plot(range(hours), per_hour.get("served after waiting", [0] * hours), "k--o", label="served after waiting")
    ax.plot(range(hours), refused, "r-x", label="refused (429)")
    ax.set_xticks(range(hours), labels)
    ax.set_xlabel("simulated hour (UTC); Gemini's day starts at 08, the UTC day at 00")
    ax.set_ylabel("requests")
    ax.set_title(f"A simulated day: {figures['served']} served, {figures['refused_429']} refused, "
                 f"{figures['oversteps']} oversteps, {figures['avoidable_refusals']} avoidable refusals")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def failures(figures: dict[str, Any]) -> list[str]:
    out = []
    if figures["oversteps"]:
        out.append(f"{figures['oversteps']} requests went beyond a provider's limit")
    if figures["avoidable_refusals"]:
        out.append(f"{figures['avoidable_refusals']} refusals although a deployment had room")
    if not figures["records_equal_responses"]:
        out.append(f"usage records {figures['usage']} != responses {figures['responses']}")
    if figures["unknown_models_at_mocks"]:
        out.append(f"requests for models the mocks do not know: {figures['unknown_models_at_mocks']}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["django"]:
        django_command(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--start-hour", type=int, default=SIM_START_HOUR, help="simulated UTC hour to start at")
    parser.add_argument("--miscount", action="store_true",
                        help="give the portal wrong limits on purpose (claude-sonnet-4.5 at twice its RPM, "
                             "gemini-2.5-flash at 3 RPD): the run must then find oversteps and avoidable refusals")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every app's request rate")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                        help="no Celery worker exporting to MLflow (no export lag figure)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, database)")
    parser.add_argument("--litellm", action="store_true",
                        help="after the day, the same burst to the portal and to LiteLLM Proxy (its own venv)")
    parser.add_argument("--litellm-bin", default=str(LITELLM_BIN))
    parser.add_argument("--quiet", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    figures = asyncio.run(simulate(args))
    report = write_report(figures, args.out)
    print(report.read_text())
    problems = failures(figures)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
