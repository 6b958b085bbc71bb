"""`make bench`: what the portal adds between an app and its provider, measured in one run.

    .venv/bin/python bench/bench.py            # the full run (a few minutes), writes bench/results/
    .venv/bin/python bench/bench.py --quick    # a smoke run: few requests per level
    .venv/bin/python bench/bench.py --litellm  # also LiteLLM Proxy on the same mocks (make bench-litellm)

It starts two mock upstreams (tests/mock_upstream.py: unpaced, and paced at 5 ms per event), prepares a fresh
portal (PostgreSQL and Redis when they answer on 127.0.0.1, else SQLite and in-process stores), serves it with
gunicorn and 2 uvicorn workers, and drives each load level directly against the mock and through the portal
with the same client: overhead = portal - direct. It also reports start time, memory of the web tier, CPU per
request, usage records written, and the cost of quota checks. All traffic stays on 127.0.0.1; every process
it starts is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench import report  # noqa: E402
from bench.loadgen import LevelResult, Target, merge, run_level, run_level_beside_large  # noqa: E402
from bench.procs import (  # noqa: E402
    Child,
    Children,
    cpu_model,
    cpu_seconds_of_tree,
    free_port,
    load_average,
    memory_of_tree,
    supervised,
)

PYTHON = sys.executable
RESULTS_DIR = ROOT / "bench" / "results"
LITELLM_BIN = ROOT / ".venv-litellm" / "bin" / "litellm"
POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
POSTGRES_DB = "portal_bench"
REDIS_URL = "redis://127.0.0.1:6379/14"
CHUNKS = 20  # content chunks: + role chunk + finish chunk = 22 events, then [DONE]
PACE_SECONDS = 0.005
WORKERS = 2
NON_STREAMING_LEVELS = (1, 16, 32, 64)
STREAMING_LEVELS = (1, 16, 32)
QUOTA_CONCURRENCY = 32
# Short interleaved rounds, in ABBA order: a change in the machine's speed (on a shared host it swings by a fifth
# within seconds) hits both sides alike, and each round's pair gives a difference of its own.
QUOTA_ROUNDS = 16
LARGE_CLIENTS = 4  # clients sending large inputs beside the ordinary requests (the hardening issue's four)
T = TypeVar("T")
# Variables of the caller's environment the portal must not see: real provider keys, another database.
SCRUBBED_ENV = (
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PORTAL_CONFIG", "OPENROUTER_API_KEY", "GEMINI_API_KEY",
    "GITHUB_API_KEY", "LM_STUDIO_API_KEY", "LM_STUDIO_API_BASE", "MLFLOW_TRACKING_URI", "UI_USERNAME", "UI_PASSWORD",
)


@dataclass
class Plan:
    requests: int
    seconds: float
    warmup: int | None
    non_streaming: tuple[int, ...]
    streaming: tuple[int, ...]
    quota_concurrency: int | None
    litellm: bool
    quick: bool
    settle_seconds: float
    # Idle CPU burn (seconds per second) of each server process tree, by pid, measured before the load.
    idle_cpu: dict[int, float] = field(default_factory=dict)


@dataclass
class Servers:
    mock: Child
    paced: Child
    mock_url: str
    paced_url: str
    portal: Child | None = None
    portal_url: str = ""
    litellm: Child | None = None
    litellm_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """One level on a fresh event loop (uvloop when installed: the client's own cost stays small)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- backing services ---------------------------------------------------------------------------------------


def postgres_url(run_dir: Path, mode: str) -> tuple[str, str]:
    """A fresh benchmark database: PostgreSQL when it answers (recreated each run), else SQLite in run_dir."""
    if mode != "sqlite":
        try:
            import psycopg

            with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {POSTGRES_DB} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {POSTGRES_DB}")
            return f"postgres://postgres@127.0.0.1:5432/{POSTGRES_DB}", "PostgreSQL"
        except Exception as e:
            if mode == "postgres":
                raise SystemExit(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable: {e}") from None
            print(f"PostgreSQL not reachable ({type(e).__name__}); using SQLite", flush=True)
    return f"sqlite:///{run_dir / 'portal.sqlite3'}", "SQLite"


def redis_url(mode: str) -> str | None:
    """Redis db 14, flushed, when it answers; None means the portal's in-process stores."""
    if mode == "off":
        return None
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.flushdb()
        client.close()
        return REDIS_URL
    except Exception as e:
        if mode == "on":
            raise SystemExit(f"Redis at {REDIS_URL} is not usable: {e}") from None
        print(f"Redis not reachable ({type(e).__name__}); running without it", flush=True)
        return None


def redis_script_time(url: str | None) -> tuple[int, float]:
    """Calls of Lua scripts (the quota checks) so far and the microseconds Redis spent in them, from
    INFO commandstats. The server may be shared: other clients' scripts are counted too, which is small
    next to a benchmark level's thousands of calls."""
    if url is None:
        return 0, 0.0
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    scripts = [v for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro")]
    return sum(int(v["calls"]) for v in scripts), sum(float(v["usec"]) for v in scripts)


def largest_window_log(url: str | None) -> int | None:
    """Fields in the biggest per-minute window hash of the quota store: one per second of the last minute
    that saw a request, plus its total and oldest-bucket fields, however many requests came."""
    if url is None:
        return None
    import redis

    client = redis.Redis.from_url(url)
    try:
        sizes = [client.hlen(key) for key in client.scan_iter("q:*", count=1000) if client.type(key) == b"hash"]
    finally:
        client.close()
    return max(sizes, default=0)


# --- servers ------------------------------------------------------------------------------------------------


def start_mock(children: Children, name: str, delay: float) -> tuple[Child, str]:
    port = free_port()
    argv = [PYTHON, "-m", "tests.mock_upstream", "--host", "127.0.0.1", "--port", str(port), "--chunks", str(CHUNKS)]
    if delay:
        argv += ["--chunk-delay", str(delay)]
    child = children.start(name, argv, {**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/v1/models", timeout=30)
    return child, url


def portal_env(run_dir: Path, database_url: str, redis: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        WEB_CONCURRENCY=str(WORKERS),
        HOST="127.0.0.1",
        PORT=str(free_port()),
        PORTAL_DATA_DIR=str(run_dir / "data"),
        PORTAL_CONFIG=str(run_dir / "no-config.yaml"),  # never the caller's config.yaml
        GITHUB_COPILOT_TOKEN_DIR=str(run_dir / "no-copilot"),
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(40),
        LITELLM_MASTER_KEY="sk-bench-master-" + secrets.token_urlsafe(16),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        DATABASE_URL=database_url,
        LOG_LEVEL="warning",
        ACCESS_LOG="false",
        PYTHONUNBUFFERED="1",
    )
    if redis:
        env["REDIS_URL"] = redis
    return env


def run_django(env: dict[str, str], argv: list[str], timeout: float = 300) -> str:
    done = subprocess.run(
        [PYTHON, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def prepare_portal(servers: Servers) -> None:
    run_django(servers.env, ["manage.py", "prepare"])
    out = run_django(servers.env, ["bench/portal_setup.py", "setup", "--mock", servers.mock_url,
                                   "--paced", servers.paced_url])
    servers.setup = orjson.loads(out.strip().splitlines()[-1])


def start_portal(children: Children, servers: Servers) -> float:
    gunicorn = str(Path(PYTHON).with_name("gunicorn"))
    servers.portal = children.start(
        "portal", [gunicorn, "portal.asgi:application", "-c", "deploy/gunicorn.conf.py"], servers.env
    )
    servers.portal_url = f"http://127.0.0.1:{servers.env['PORT']}"
    return servers.portal.wait_http(servers.portal_url + "/health/liveliness", timeout=120)


def litellm_config(servers: Servers, path: Path) -> str:
    master = "sk-bench-litellm-" + secrets.token_urlsafe(12)
    entries = [
        (servers.setup["models"]["limited"], servers.mock_url),
        (servers.setup["models"]["paced"], servers.paced_url),
    ]
    lines = ["model_list:"]
    for name, base in entries:
        lines += [f"  - model_name: {name}", "    litellm_params:", "      model: openai/bench-model",
                  f"      api_base: {base}/v1", "      api_key: sk-bench-upstream-key"]
    lines += ["general_settings:", f"  master_key: {master}", "litellm_settings:", "  telemetry: false", ""]
    path.write_text("\n".join(lines))
    return master


def start_litellm(children: Children, servers: Servers, run_dir: Path, binary: Path) -> tuple[float, str]:
    """LiteLLM Proxy with 2 workers and no database (its Prisma mode cannot start offline), under gunicorn with
    preload like the portal: its plain uvicorn multi-worker mode kills workers still importing after 5 s."""
    config = run_dir / "litellm.yaml"
    master = litellm_config(servers, config)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", PYTHONUNBUFFERED="1",
               LITELLM_MODE="PRODUCTION")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    servers.litellm = children.start(
        "litellm", [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                    "--num_workers", str(WORKERS), "--run_gunicorn"], env
    )
    servers.litellm_url = f"http://127.0.0.1:{port}"
    return servers.litellm.wait_http(servers.litellm_url + "/health/liveliness", timeout=180), master


# --- levels -------------------------------------------------------------------------------------------------


def idle_cpu_rate(server: Child, seconds: float = 2.0) -> float:
    """CPU seconds per second the server burns doing nothing (timers, background writers)."""
    before = cpu_seconds_of_tree(server.pid)
    time.sleep(seconds)
    return (cpu_seconds_of_tree(server.pid) - before) / seconds


def measure(
    target: Target, server: Child, stream: bool, concurrency: int, plan: Plan, *, requests: int | None = None,
    seconds: float | None = None,
) -> tuple[LevelResult, float]:
    """Run one level against one target; returns it with the server tree's CPU ms per request (its idle
    burn over the level's wall time taken out, so a slow level is not charged for the server's timers)."""
    cpu_before, wall_before = cpu_seconds_of_tree(server.pid), time.perf_counter()
    result = drive(run_level(target, stream=stream, concurrency=concurrency, requests=requests or plan.requests,
                             seconds=seconds or plan.seconds, warmup=plan.warmup))
    used = cpu_seconds_of_tree(server.pid) - cpu_before
    used -= plan.idle_cpu.get(server.pid, 0.0) * (time.perf_counter() - wall_before)
    total = result.sent + result.warmup
    return result, round(max(used, 0.0) * 1000 / total, 3) if total else 0.0


def run_levels(servers: Servers, plan: Plan, litellm_key: str) -> tuple[list[dict[str, Any]], int]:
    """Every level, each against the mock directly, then the portal (then LiteLLM); returns the levels and how
    many requests the portal was sent."""
    assert servers.portal is not None
    key = {"Authorization": f"Bearer {servers.setup['key']}"}
    chat = "/v1/chat/completions"
    models = servers.setup["models"]
    matrix = [(False, "unpaced", c) for c in plan.non_streaming]
    matrix += [(True, "unpaced", c) for c in plan.streaming] + [(True, "5 ms paced", c) for c in plan.streaming]
    levels, portal_requests = [], 0
    for stream, upstream, concurrency in matrix:
        paced = upstream != "unpaced"
        mock, mock_url = (servers.paced, servers.paced_url) if paced else (servers.mock, servers.mock_url)
        model = models["paced"] if paced else models["limited"]
        runs: list[tuple[str, Target, Child]] = [
            ("direct", Target("direct", mock_url + chat, "bench-model"), mock),
            ("portal", Target("portal", servers.portal_url + chat, model, key), servers.portal),
        ]
        if servers.litellm is not None:
            litellm_headers = {"Authorization": f"Bearer {litellm_key}"}
            runs.append(("litellm", Target("litellm", servers.litellm_url + chat, model, litellm_headers),
                         servers.litellm))
        level: dict[str, Any] = {"stream": stream, "upstream": upstream, "concurrency": concurrency,
                                 "cpu_ms_per_request": {}}
        for name, target, server in runs:
            result, cpu = measure(target, server, stream, concurrency, plan)
            level[name] = result.summary()
            level["cpu_ms_per_request"][name] = cpu
            if name == "portal":
                portal_requests += result.sent + result.warmup
        levels.append(level)
        print(progress_line(level), flush=True)
    return levels, portal_requests


def run_quota_comparison(servers: Servers, plan: Plan, concurrency: int) -> tuple[dict[str, Any], int]:
    """The same non-streaming level on a deployment and key without limits and with them, interleaved in rounds
    so a change in the machine's load hits both alike; the difference is the cost of the quota checks."""
    assert servers.portal is not None
    chat = servers.portal_url + "/v1/chat/completions"
    models = servers.setup["models"]
    off = Target("portal", chat, models["unlimited"], {"Authorization": f"Bearer {servers.setup['key_unlimited']}"})
    on = Target("portal", chat, models["limited"], {"Authorization": f"Bearer {servers.setup['key']}"})
    per_round = max(plan.requests * 2 // QUOTA_ROUNDS, 1)  # 2x a level: a difference of p50s needs more samples
    redis = servers.env.get("REDIS_URL")
    parts: dict[str, list[LevelResult]] = {"without_limits": [], "with_limits": []}
    cpu: dict[str, list[float]] = {"without_limits": [], "with_limits": []}
    scripts: dict[str, list[float]] = {"without_limits": [0, 0.0], "with_limits": [0, 0.0]}
    for number in range(QUOTA_ROUNDS):
        pair = (("without_limits", off), ("with_limits", on))
        for name, target in pair if number % 2 == 0 else pair[::-1]:
            calls, usec = redis_script_time(redis)
            result, cpu_ms = measure(target, servers.portal, False, concurrency, plan,
                                     requests=per_round, seconds=plan.seconds * 2 / QUOTA_ROUNDS)
            calls_after, usec_after = redis_script_time(redis)
            scripts[name][0] += calls_after - calls
            scripts[name][1] += usec_after - usec
            parts[name].append(result)
            cpu[name].append(cpu_ms)
    merged = {name: merge(results) for name, results in parts.items()}
    sent = sum(r.sent + r.warmup for results in parts.values() for r in results)
    summary: dict[str, Any] = {"concurrency": concurrency, "rounds": QUOTA_ROUNDS}
    for name, result in merged.items():
        served = sum(r.sent + r.warmup for r in parts[name]) or 1
        summary[name] = {
            **result.summary(),
            "cpu_ms_per_request": round(sum(cpu[name]) / len(cpu[name]), 3),
            "redis_script_calls_per_request": round(scripts[name][0] / served, 2) if redis else None,
            "redis_script_ms_per_request": round(scripts[name][1] / 1000 / served, 3) if redis else None,
        }
    on_run, off_run = summary["with_limits"], summary["without_limits"]
    summary["p50_diff_ms"] = report.diff(on_run["p50_ms"], off_run["p50_ms"])
    summary["p99_diff_ms"] = report.diff(on_run["p99_ms"], off_run["p99_ms"])
    # The same difference taken round by round (the two halves of a round ran back to back), then its median:
    # a round where the machine was slow for both sides does not weigh on it.
    per_round = [b.summary()["p50_ms"] - a.summary()["p50_ms"]
                 for a, b in zip(parts["without_limits"], parts["with_limits"], strict=True)]
    summary["paired_p50_diff_ms"] = round(statistics.median(per_round), 2)
    # Work per request, which the machine's other load does not inflate: portal CPU plus Redis script time.
    summary["work_diff_ms"] = round(
        on_run["cpu_ms_per_request"] - off_run["cpu_ms_per_request"]
        + (on_run["redis_script_ms_per_request"] or 0) - (off_run["redis_script_ms_per_request"] or 0), 3
    )
    summary["largest_window_entries"] = largest_window_log(servers.env.get("REDIS_URL"))
    print(f"quota checks c={concurrency}: without limits p50 {summary['without_limits']['p50_ms']} ms, "
          f"with limits p50 {summary['with_limits']['p50_ms']} ms -> {summary['p50_diff_ms']} ms", flush=True)
    return summary, sent


def run_large_inputs(servers: Servers, plan: Plan) -> tuple[dict[str, Any], int]:
    """Ordinary requests (non-streaming, c=1) alone, then beside four clients sending large embeddings (2,048
    inputs, ~1 MB) and large chat bodies (~1 MB) to the portal: the ordinary requests' p99 is what a worker
    whose event loop stalled on a large input would show."""
    assert servers.portal is not None
    key = {"Authorization": f"Bearer {servers.setup['key_unlimited']}"}
    models = servers.setup["models"]
    target = Target("portal", servers.portal_url + "/v1/chat/completions", models["unlimited"], key)
    alone, _ = measure(target, servers.portal, False, 1, plan)
    beside, counts = drive(run_level_beside_large(target, servers.portal_url, (models["embed"],
                                                       models["unlimited"]), clients=LARGE_CLIENTS,
                                                       requests=plan.requests, seconds=plan.seconds))
    summary = {
        "clients": LARGE_CLIENTS,
        "alone": alone.summary(),
        "beside_large": beside.summary(),
        "large_requests": counts,
        "p99_diff_ms": report.diff(beside.summary()["p99_ms"], alone.summary()["p99_ms"]),
    }
    print(f"large inputs: ordinary p99 {summary['alone']['p99_ms']} ms alone, {summary['beside_large']['p99_ms']} "
          f"ms beside {LARGE_CLIENTS} clients of large requests ({counts['ok']} answered, {counts['errors']} "
          "errors)", flush=True)
    sent = alone.sent + alone.warmup + beside.sent + beside.warmup + counts["ok"] + counts["errors"]
    return summary, sent


def progress_line(level: dict[str, Any]) -> str:
    kind = f"stream {level['upstream']}" if level["stream"] else "non-stream"
    parts = [f"{kind:>18} c={level['concurrency']:<3}"]
    for name in ("direct", "portal", "litellm"):
        run = level.get(name)
        if run is None:
            continue
        figure = f"ttft p50 {run['ttft_p50_ms']} ms, " if level["stream"] else ""
        parts.append(f"{name}: {run['rps']:.0f}/s {figure}p50 {run['p50_ms']} p99 {run['p99_ms']} ms"
                     f" err {run['errors']}")
    return " | ".join(parts)


# --- the run ------------------------------------------------------------------------------------------------


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown"


def python_speed() -> float:
    """CPU nanoseconds per iteration of a plain Python loop: how fast this machine runs Python right now. On a
    shared host it moves with the neighbours' load, and every figure here moves with it."""
    started, total = time.process_time(), 0
    for i in range(2_000_000):
        total += i
    return round((time.process_time() - started) / 2_000_000 * 1e9, 1)


def run(plan: Plan, args: argparse.Namespace, children: Children, run_dir: Path) -> dict[str, Any]:
    load_before, speed_before = load_average(), python_speed()
    started = dt.datetime.now(dt.UTC)
    mock, mock_url = start_mock(children, "mock", 0.0)
    paced, paced_url = start_mock(children, "mock-paced", PACE_SECONDS)
    database_url, database = postgres_url(run_dir, args.database)
    redis = redis_url(args.redis)
    servers = Servers(mock, paced, mock_url, paced_url, env=portal_env(run_dir, database_url, redis))
    print(f"preparing the portal ({database}, {'Redis' if redis else 'no Redis'})...", flush=True)
    prepare_portal(servers)
    startup = {"portal_s": round(start_portal(children, servers), 3)}
    assert servers.portal is not None
    # CPU spent starting (imports, workers' boot): unlike the wall time, other tenants do not inflate it.
    startup["portal_cpu_s"] = round(cpu_seconds_of_tree(servers.portal.pid), 2)
    time.sleep(1.0)  # let the workers finish booting before the idle figure
    memory: dict[str, Any] = {"portal": {"idle": memory_of_tree(servers.portal.pid).as_dict()}}
    for server in (servers.mock, servers.paced, servers.portal):
        plan.idle_cpu[server.pid] = idle_cpu_rate(server, 1.0 if plan.quick else 2.0)
    print(f"portal up in {startup['portal_s']} s on {servers.portal_url}; key: {servers.setup['key_kind']}",
          flush=True)
    litellm_key = ""
    if plan.litellm:
        seconds, litellm_key = start_litellm(children, servers, run_dir, Path(args.litellm_bin))
        assert servers.litellm is not None
        startup["litellm_s"] = round(seconds, 3)
        startup["litellm_cpu_s"] = round(cpu_seconds_of_tree(servers.litellm.pid), 2)
        time.sleep(1.0)
        memory["litellm"] = {"idle": memory_of_tree(servers.litellm.pid).as_dict()}
        plan.idle_cpu[servers.litellm.pid] = idle_cpu_rate(servers.litellm, 1.0 if plan.quick else 2.0)
        print(f"LiteLLM Proxy up in {startup['litellm_s']} s", flush=True)

    levels, portal_requests = run_levels(servers, plan, litellm_key)
    quota: dict[str, Any] | None = None
    quota_c1: dict[str, Any] | None = None
    if plan.quota_concurrency is not None:
        quota, sent = run_quota_comparison(servers, plan, plan.quota_concurrency)
        portal_requests += sent
        # The same at concurrency 1, where no request queues behind another: the latency the checks add.
        quota_c1, sent = run_quota_comparison(servers, plan, 1)
        portal_requests += sent
    large_inputs, sent = run_large_inputs(servers, plan)
    portal_requests += sent
    memory["portal"]["after_load"] = memory_of_tree(servers.portal.pid).as_dict()
    if servers.litellm is not None:
        memory["litellm"]["after_load"] = memory_of_tree(servers.litellm.pid).as_dict()

    usage = orjson.loads(run_django(servers.env, ["bench/portal_setup.py", "usage", "--expect",
                                                   str(portal_requests), "--timeout", "15"]).strip().splitlines()[-1])
    usage["expected"] = portal_requests
    # What the web tier keeps once the load is over (its trimmer runs every 30 s: portal/memory.py).
    time.sleep(plan.settle_seconds)
    memory["portal"]["after_settle"] = memory_of_tree(servers.portal.pid).as_dict()
    memory["portal"]["settle_seconds"] = plan.settle_seconds
    if servers.litellm is not None:
        memory["litellm"]["after_settle"] = memory_of_tree(servers.litellm.pid).as_dict()
    load_after, speed_after = load_average(), python_speed()
    results: dict[str, Any] = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "commit": commit(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
            "loadavg_after": " ".join(f"{x:.2f}" for x in load_after),
            "busy": max(load_before[0], load_after[0]) > 0.5,
            "python_ns_per_loop": [speed_before, speed_after],
            "workers": WORKERS,
            "database": database,
            "redis": bool(redis),
            "key_kind": servers.setup["key_kind"],
            "chunks": CHUNKS,
            "pace_ms": PACE_SECONDS * 1000,
            "requests_per_level": plan.requests,
            "seconds_per_level": plan.seconds,
            "quick": plan.quick,
            "litellm": plan.litellm,
        },
        "startup": startup,
        "memory": memory,
        "idle_cpu_ms_per_s": {name: round(plan.idle_cpu[child.pid] * 1000, 2)
                              for name, child in (("mock", servers.mock), ("portal", servers.portal),
                                                  ("litellm", servers.litellm)) if child is not None},
        "levels": levels,
        "quota": quota,
        "quota_c1": quota_c1,
        "large_inputs": large_inputs,
        "usage": usage,
        "litellm": plan.litellm,
    }
    results["targets"] = report.targets(results)
    return results


def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out_dir / f"{stamp}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    latest = out_dir / "latest.md"
    latest.write_text(report.markdown(results))
    return latest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 requests or 2 s per level")
    parser.add_argument("--settle", type=float, help="seconds after the load before the last memory reading "
                        "(default 60; quick: 5)")
    parser.add_argument("--requests", type=int, help="requests per level (default 2000; quick: 200)")
    parser.add_argument("--seconds", type=float, help="time cap per level (default 10; quick: 2)")
    parser.add_argument("--levels", help="only these concurrencies, e.g. 1 or 1,16 (default: all)")
    parser.add_argument("--no-quota-compare", action="store_true", help="skip the with/without limits comparison")
    parser.add_argument("--litellm", action="store_true", help="also run LiteLLM Proxy (see make bench-litellm)")
    parser.add_argument("--litellm-bin", default=str(LITELLM_BIN), help="the litellm CLI of its own venv")
    parser.add_argument("--database", choices=("auto", "postgres", "sqlite"), default="auto")
    parser.add_argument("--redis", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR), help="where the JSON and latest.md go")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (server logs, database)")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    chosen = {int(c) for c in args.levels.split(",")} if args.levels else None

    def pick(levels: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(c for c in levels if chosen is None or c in chosen) or tuple(sorted(chosen or ()))

    non_streaming, streaming = pick(NON_STREAMING_LEVELS), pick(STREAMING_LEVELS)
    quota_c = None if args.no_quota_compare else (QUOTA_CONCURRENCY if QUOTA_CONCURRENCY in non_streaming
                                                   else max(non_streaming))
    if args.litellm and not Path(args.litellm_bin).is_file():
        raise SystemExit(f"{args.litellm_bin} not found: run `make bench-litellm`, which installs LiteLLM Proxy "
                         "in .venv-litellm first")
    return Plan(
        requests=args.requests or (200 if args.quick else 2000),
        settle_seconds=args.settle if args.settle is not None else (5.0 if args.quick else 60.0),
        seconds=args.seconds or (2.0 if args.quick else 10.0),
        warmup=10 if args.quick else None,
        non_streaming=non_streaming,
        streaming=streaming,
        quota_concurrency=quota_c,
        litellm=args.litellm,
        quick=args.quick,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    run_dir = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    children = Children(ROOT, run_dir)
    # SIGTERM ends the run like Ctrl-C does: through the finally below, which stops every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with supervised(children, run_dir, args.keep):
            results = run(plan, args, children, run_dir)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the benchmark started was stopped", file=sys.stderr)
        return 130
    latest = write_results(results, Path(args.output_dir))
    print()
    print(report.markdown(results))
    print(f"written: {latest} (and the JSON beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
