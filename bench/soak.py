"""`make soak`: 50,000 mixed requests through the production setup; nothing may grow or go missing.

    .venv/bin/python bench/soak.py                  # 50,000 requests (about ten minutes on 2 cores)
    .venv/bin/python bench/soak.py --requests 5000  # a shorter run

It serves a fresh portal as in production (gunicorn, 2 uvicorn workers, PostgreSQL database `portal_soak` on
127.0.0.1:5432, Redis db 13 on 127.0.0.1:6379) in front of a mock upstream whose models answer normally,
fail with 500, refuse with 429, or stream slowly; and sends a mix of requests with a user key: plain and
streamed completions, upstream failures, and streams the client leaves after two events. It measures the web
tier (gunicorn's master and workers) after the first 5,000 requests and at the end: memory (sum of VmRSS),
open file descriptors, its connections to PostgreSQL (pg_stat_activity of its database, and its own sockets)
and to Redis (CLIENT LIST of its db, and its own sockets). Then it stops the portal with SIGTERM and checks
that every request it sent has exactly one usage record (by the x-request-id each response carried, and the
run's tag sent in x-portal-tags). It prints the figures and exits 1 when a check fails.

Internal sub-commands: `soak.py mock --port P` (the mock upstream with the soak's per-model behaviours) and
`soak.py django setup|usage ...` (run with the portal's environment).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

PYTHON = sys.executable
POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
POSTGRES_DB = "portal_soak"
REDIS_DB = 13
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
WORKERS = 2
RSS_CHECKPOINT = 5000
RSS_TOLERANCE = 0.10

# Public model -> upstream model; the mock answers each upstream model its own way (see serve_mock).
MODELS = {"soak-ok": "mock-ok", "soak-500": "mock-500", "soak-429": "mock-429", "soak-slow": "mock-slow"}
# The mix, by request number modulo 20: (kind, public model, stream).
MIX: tuple[tuple[str, str, bool], ...] = (
    *(("ok", "soak-ok", False),) * 8,
    *(("ok-stream", "soak-ok", True),) * 6,
    ("disconnect", "soak-slow", True), ("disconnect", "soak-slow", True),
    ("upstream-500", "soak-500", False), ("upstream-500", "soak-500", True),
    ("upstream-429", "soak-429", False), ("upstream-429", "soak-429", True),
)
# What each kind may answer: the portal's statuses for upstream failures (502 after its retries; a parked
# deployment gives 429/503 without calling it), and 200 for the rest.
EXPECTED = {"ok": {200}, "ok-stream": {200}, "disconnect": {200}, "upstream-500": {502, 503, 429},
            "upstream-429": {429, 503}}


# --- the mock upstream (a child process) -----------------------------------------------------------------------


def serve_mock(port: int) -> None:
    from tests.mock_upstream import Behaviour, MockUpstream

    async def main() -> None:
        server = MockUpstream("127.0.0.1", port, behaviour=Behaviour(chunks=10), record=False)
        server.set_behaviour("mock-ok", Behaviour(chunks=10))
        server.set_behaviour("mock-500", Behaviour(status=500))
        server.set_behaviour("mock-429", Behaviour(status=429, headers={"Retry-After": "1"}))
        server.set_behaviour("mock-slow", Behaviour(chunks=40, chunk_delay=0.02))
        await server.start_async()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.aclose()

    asyncio.run(main())


# --- the Django side (a child process with the portal's environment) ------------------------------------------


def django_command(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    parser = argparse.ArgumentParser(prog="soak.py django")
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup")
    p_setup.add_argument("--mock", required=True)
    p_usage = sub.add_parser("usage")
    p_usage.add_argument("--run", required=True)
    p_usage.add_argument("--ids", required=True, help="file with one request id a line")
    args = parser.parse_args(argv)
    result = setup_portal(args.mock) if args.command == "setup" else count_usage(args.run, Path(args.ids))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


def setup_portal(mock_url: str) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from accounts.models import ApiKey
    from gateway.models import Deployment, Provider, ProviderKind

    provider, _ = Provider.objects.update_or_create(
        name="soak-mock", defaults={"kind": ProviderKind.OPENAI_COMPATIBLE, "api_base": mock_url + "/v1",
                                    "enabled": True})
    provider.set_secret("sk-soak-upstream-key")
    provider.save()
    for public, upstream_model in MODELS.items():
        # A daily limit far too high to refuse: every request is counted (Redis and the DailyCounter rows).
        Deployment.objects.update_or_create(public_name=public, provider=provider, upstream_model=upstream_model,
                                            defaults={"enabled": True, "rpd": 10**8})
    user, _ = get_user_model().objects.get_or_create(username="soak")
    _, key = ApiKey.objects.issue(user, "soak")
    return {"key": key}


def count_usage(run: str, ids_file: Path) -> dict[str, Any]:
    from django.db.models import Count

    from tracking.models import UsageRecord

    sent = set(ids_file.read_text().split())
    tagged = UsageRecord.objects.filter(tags__soak=run)
    recorded = list(tagged.values_list("request_id", flat=True))
    per_id = tagged.values("request_id").annotate(n=Count("id")).filter(n__gt=1).count()
    recorded_set = set(recorded)
    return {
        "sent_with_id": len(sent),
        "records": len(recorded),
        "duplicates": per_id + (len(recorded) - len(recorded_set)),
        "missing": len(sent - recorded_set),
        "extra": len(recorded_set - sent),
        "by_error_code": dict(tagged.values_list("error_code").annotate(n=Count("id")).order_by()),
    }


# --- measuring the web tier ----------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _connections_by_remote_port(inodes: set[str]) -> dict[int, int]:
    """Established TCP connections among `inodes`, counted by remote port (from /proc/net/tcp and tcp6)."""
    counts: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes and fields[3] == "01":  # 01 = ESTABLISHED
                    port = int(fields[2].rsplit(":", 1)[1], 16)
                    counts[port] = counts.get(port, 0) + 1
    return counts


@dataclass
class Snapshot:
    requests_done: int
    processes: int
    rss_mb: float
    pss_mb: float | None
    open_fds: int
    db_sockets: int
    redis_sockets: int
    pg_stat_activity: int
    redis_clients_db: int


def snapshot(portal_pid: int, done: int) -> Snapshot:
    from bench.procs import descendants, memory_of_tree

    pids = descendants(portal_pid)
    memory = memory_of_tree(portal_pid)
    fds = 0
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        inodes |= _socket_inodes(pid)
    by_port = _connections_by_remote_port(inodes)
    return Snapshot(done, memory.processes, memory.rss_mb, memory.pss_mb, fds, by_port.get(5432, 0),
                    by_port.get(6379, 0), pg_connections(), redis_clients())


def pg_connections() -> int:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [POSTGRES_DB]).fetchone()
    return int(row[0]) if row else 0


def redis_clients() -> int:
    """Clients connected to the soak's Redis db (others share the server, on other dbs)."""
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        return sum(1 for entry in client.client_list() if str(entry.get("db")) == str(REDIS_DB))
    finally:
        client.close()


# --- the load -----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    no_answer: int = 0

    def count(self, kind: str, outcome: str) -> None:
        kinds = self.by_kind.setdefault(kind, {})
        kinds[outcome] = kinds.get(outcome, 0) + 1

    def wrong(self, message: str) -> None:
        if len(self.unexpected) < 20:
            self.unexpected.append(message[:300])


async def one_request(session: Any, url: str, headers: dict[str, str], n: int, tally: Tally) -> None:
    import aiohttp

    kind, model, stream = MIX[n % len(MIX)]
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": f"soak request {n}"}],
                         "stream": stream})
    try:
        async with session.post(url, data=body, headers=headers) as response:
            request_id = response.headers.get("x-request-id")
            if request_id:
                tally.request_ids.append(request_id)
            else:
                tally.wrong(f"{kind} #{n}: no x-request-id (HTTP {response.status})")
            if response.status not in EXPECTED[kind]:
                tally.wrong(f"{kind} #{n}: HTTP {response.status}: {(await response.text())[:200]}")
            if kind == "disconnect" and response.status == 200:
                events = 0
                async for line in response.content:
                    events += line.startswith(b"data:")
                    if events >= 2:
                        break
                response.close()  # hang up mid-stream: the portal must cancel the upstream call
                tally.count(kind, "left")
                return
            payload = await response.read()
            if response.status == 200 and stream and not payload.rstrip().endswith(b"data: [DONE]"):
                tally.wrong(f"{kind} #{n}: stream did not end with [DONE]: {payload[-200:]!r}")
            if response.status == 200 and stream is False and b'"choices"' not in payload:
                tally.wrong(f"{kind} #{n}: no choices: {payload[:200]!r}")
            tally.count(kind, str(response.status))
    except (TimeoutError, aiohttp.ClientError) as e:
        tally.no_answer += 1
        tally.wrong(f"{kind} #{n}: no answer: {type(e).__name__}: {e}")


async def drive(url: str, key: str, run: str, start: int, stop: int, concurrency: int, tally: Tally) -> float:
    """Requests start..stop-1 with `concurrency` clients; returns the seconds it took."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json", "x-portal-tags": f"soak={run}"}
    counter = iter(range(start, stop))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            for n in counter:
                tally.sent += 1
                await one_request(session, url, headers, n, tally)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - began


# --- the run ------------------------------------------------------------------------------------------------


def fresh_backing_services() -> tuple[str, str]:
    import psycopg
    import redis

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {POSTGRES_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {POSTGRES_DB}")
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        client.flushdb()
        client.close()
    except Exception as e:
        raise SystemExit(f"the soak needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379: {e}") from None
    return f"postgres://postgres@127.0.0.1:5432/{POSTGRES_DB}", REDIS_URL


def verdicts(first: Snapshot, middle: Snapshot, last: Snapshot, usage: dict[str, Any],
             tally: Tally) -> list[tuple[str, bool, str]]:
    """The pass/fail lines. Connection pools grow to the peak concurrency they meet (bounded by it) and then stay;
    a leak grows with the number of requests. So descriptors and connections at the end are compared with the
    most seen in the first two thirds of the run (`middle` holds those maxima): the last third must add none."""
    growth = (last.rss_mb - first.rss_mb) / first.rss_mb if first.rss_mb else 0.0

    def plateau(name: str, slack: int) -> tuple[bool, str]:
        start, peak, end = getattr(first, name), getattr(middle, name), getattr(last, name)
        return end <= peak + slack, f"{start} after the first requests, {peak} most in the first two thirds, " \
                                    f"{end} at the end"

    return [
        ("web-tier RSS end vs after the first requests", abs(growth) < RSS_TOLERANCE,
         f"{first.rss_mb} MB -> {last.rss_mb} MB ({growth:+.1%}, limit ±{RSS_TOLERANCE:.0%})"),
        ("open file descriptors", *plateau("open_fds", 4)),
        ("PostgreSQL connections (pg_stat_activity)", *plateau("pg_stat_activity", 2)),
        ("Redis clients (db 13)", *plateau("redis_clients_db", 2)),
        ("every response as expected", not tally.unexpected, f"{len(tally.unexpected)} unexpected"),
        ("one usage record per request", usage["records"] == tally.sent and usage["missing"] == 0
         and usage["duplicates"] == 0 and usage["extra"] == 0,
         f"{usage['records']} records for {tally.sent} requests (missing {usage['missing']}, duplicates "
         f"{usage['duplicates']}, extra {usage['extra']})"),
    ]


def most(snapshots: list[Snapshot]) -> Snapshot:
    """Each figure's maximum over `snapshots`."""
    return Snapshot(**{name: max(getattr(s, name) or 0 for s in snapshots) for name in Snapshot.__annotations__})


def run(args: argparse.Namespace) -> int:
    from bench.bench import portal_env, run_django
    from bench.procs import Children, cpu_seconds_of_tree, free_port, load_average, memory_of_tree, supervised

    run_dir = Path(tempfile.mkdtemp(prefix="portal-soak-"))
    children = Children(ROOT, run_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_id = secrets.token_hex(6)
    tally = Tally()
    with supervised(children, run_dir, args.keep):
        mock_port = free_port()
        mock = children.start("mock", [PYTHON, str(Path(__file__)), "mock", "--port", str(mock_port)],
                              {**os.environ, "PYTHONUNBUFFERED": "1"})
        mock_url = f"http://127.0.0.1:{mock_port}"
        mock.wait_http(mock_url + "/v1/models", timeout=30)
        database_url, redis_url = fresh_backing_services()
        env = portal_env(run_dir, database_url, redis_url)
        print(f"soak {run_id}: {args.requests} requests, concurrency {args.concurrency}; preparing the portal...",
              flush=True)
        run_django(env, ["manage.py", "prepare"])
        key = orjson.loads(run_django(env, [str(Path(__file__)), "django", "setup", "--mock", mock_url])
                           .strip().splitlines()[-1])["key"]
        gunicorn = str(Path(PYTHON).with_name("gunicorn"))
        portal = children.start("portal", [gunicorn, "portal.asgi:application", "-c", "deploy/gunicorn.conf.py"], env)
        portal_url = f"http://127.0.0.1:{env['PORT']}"
        portal.wait_http(portal_url + "/health/readiness", timeout=120)
        url = portal_url + "/v1/chat/completions"
        time.sleep(2)  # the workers' start-up work done
        idle = memory_of_tree(portal.pid)

        checkpoint = min(RSS_CHECKPOINT, args.requests // 10) or 1
        load_before = load_average()
        seconds = asyncio.run(drive(url, key, run_id, 0, checkpoint, args.concurrency, tally))
        time.sleep(2)  # let streams the clients left wind down before counting connections
        first = snapshot(portal.pid, tally.sent)
        print(f"after {tally.sent} requests ({tally.sent / seconds:.0f}/s): {first}", flush=True)
        cpu_before = cpu_seconds_of_tree(portal.pid)
        done_at = checkpoint
        step = max((args.requests - checkpoint) // 9, 1)
        early = [first]
        while done_at < args.requests:
            end = min(done_at + step, args.requests)
            seconds += asyncio.run(drive(url, key, run_id, done_at, end, args.concurrency, tally))
            done_at = end
            current = snapshot(portal.pid, tally.sent)
            if done_at <= checkpoint + (args.requests - checkpoint) * 2 / 3:
                early.append(current)
            print(f"  {tally.sent} requests, RSS {current.rss_mb} MB, fds {current.open_fds}, "
                  f"pg {current.pg_stat_activity}, redis {current.redis_clients_db}, "
                  f"no answer {tally.no_answer}, unexpected {len(tally.unexpected)}", flush=True)
        cpu_used = cpu_seconds_of_tree(portal.pid) - cpu_before
        time.sleep(2)
        last = snapshot(portal.pid, tally.sent)
        # What the web tier keeps once the load is over (its trimmer runs every 30 s: portal/memory.py).
        print(f"load done; RSS {last.rss_mb} MB; waiting {args.settle:g} s for it to settle...", flush=True)
        time.sleep(args.settle)
        settled = memory_of_tree(portal.pid)
        # SIGTERM: gunicorn drains, and the workers write what their usage buffers still hold.
        portal.stop(grace=60)
        ids_file = run_dir / "request-ids.txt"
        ids_file.write_text("\n".join(tally.request_ids))
        usage = orjson.loads(run_django(env, [str(Path(__file__)), "django", "usage", "--run", run_id,
                                              "--ids", str(ids_file)]).strip().splitlines()[-1])
        report = {
            "run": run_id, "requests": tally.sent, "concurrency": args.concurrency,
            "seconds": round(seconds, 1), "rps": round(tally.sent / seconds, 1),
            "cpu_ms_per_request": round(cpu_used * 1000 / max(tally.sent - checkpoint, 1), 2),
            "loadavg_before": load_before, "loadavg_after": load_average(),
            "first": first.__dict__, "last": last.__dict__, "usage": usage, "outcomes": tally.by_kind,
            "rss_mb": {"idle": idle.rss_mb, "after_load": last.rss_mb, "after_settle": settled.rss_mb,
                       "settle_seconds": args.settle},
            "no_answer": tally.no_answer, "unexpected": tally.unexpected,
        }
        middle = most(early)
        report["most_in_first_two_thirds"] = middle.__dict__
        checks = verdicts(first, middle, last, usage, tally)
        report["checks"] = [{"check": c, "ok": ok, "figures": f} for c, ok, f in checks]
        print_report(report, checks)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json").write_bytes(
            orjson.dumps(report, option=orjson.OPT_INDENT_2))
        return 0 if all(ok for _, ok, _ in checks) else 1


def print_report(report: dict[str, Any], checks: list[tuple[str, bool, str]]) -> None:
    print()
    print(f"## Soak: {report['requests']} requests in {report['seconds']} s ({report['rps']}/s, "
          f"concurrency {report['concurrency']}, {report['cpu_ms_per_request']} ms CPU per request; "
          f"load average {report['loadavg_before'][0]:.1f} -> {report['loadavg_after'][0]:.1f})")
    print()
    print("| figure | after the first requests | most in the first two thirds | at the end |")
    print("|---|---|---|---|")
    first, middle, last = report["first"], report["most_in_first_two_thirds"], report["last"]
    for name in ("requests_done", "processes", "rss_mb", "pss_mb", "open_fds", "pg_stat_activity", "db_sockets",
                 "redis_clients_db", "redis_sockets"):
        print(f"| {name} | {first[name]} | {middle[name]} | {last[name]} |")
    print()
    rss = report["rss_mb"]
    print(f"web-tier RSS: idle {rss['idle']} MB, after the load {rss['after_load']} MB, "
          f"{rss['settle_seconds']:g} s later {rss['after_settle']} MB")
    print("outcomes:", ", ".join(f"{kind} {dict(sorted(v.items()))}" for kind, v in sorted(report["outcomes"].items())))
    print("usage records:", report["usage"])
    if report["unexpected"]:
        print("unexpected (first ones):", *report["unexpected"], sep="\n  ")
    print()
    for name, ok, figures in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figures}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mock"]:
        parser = argparse.ArgumentParser(prog="soak.py mock")
        parser.add_argument("--port", type=int, required=True)
        serve_mock(parser.parse_args(argv[1:]).port)
        return 0
    if argv[:1] == ["django"]:
        django_command(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="how many requests in all (default 50000)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once (default 32)")
    parser.add_argument("--output-dir", default=str(ROOT / "bench" / "results"), help="where the JSON goes")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (server logs)")
    parser.add_argument("--settle", type=float, default=60, help="seconds after the load before the last "
                        "memory reading (default 60)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
