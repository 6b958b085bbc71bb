"""A simulated hour on the free tiers (bench/simday.py, the short version of `make simulate-day`).

The portal runs under gunicorn in front of mock providers that enforce the catalog's real limits; the hour is
10:00-11:00 UTC of the simulated day (the morning peak, with a coding agent's burst beyond claude-sonnet-4.5's
10 RPM). It runs on the embedded default (SQLite, quotas in one process): the run wipes the database and Redis
db it is given, so it is never handed the test run's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def simulate_hour(out: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    done = subprocess.run(
        [sys.executable, "bench/simday.py", "--hours", "1", "--start-hour", "10", "--scale", "0.6", "--no-mlflow",
         "--quiet", "--out", str(out), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    report = out / "simday-1h.json"
    assert report.exists(), f"no report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.returncode, json.loads(report.read_text()), done.stdout + done.stderr


def test_a_simulated_hour_never_oversteps_a_limit_nor_refuses_what_a_deployment_could_serve(tmp_path):
    code, figures, output = simulate_hour(tmp_path)
    assert figures["sent"] >= 200
    # The hour reached a limit (the agent's burst), so the two zeros below mean something.
    assert figures["refused_by_kind"].get("no-room", 0) > 0
    assert figures["oversteps"] == 0, figures["oversteps_by_model"]
    assert figures["avoidable_refusals"] == 0, figures["avoidable_examples"]
    assert figures["usage"]["records"] == figures["responses"] == figures["sent"]
    assert figures["usage"]["missing"] == figures["usage"]["duplicates"] == 0
    assert figures["served"] + figures["refused_429"] == figures["sent"], figures["other_errors"]
    assert code == 0, output[-3000:]
    assert (tmp_path / "simday-1h.md").exists()


def test_the_simulation_catches_a_portal_that_counts_wrong(tmp_path):
    # The portal is told claude-sonnet-4.5 allows twice its 10 RPM and gemini-2.5-flash only 3 a day: the burst
    # must then reach the provider beyond its limit, and flash's refusals must show as avoidable.
    code, figures, _ = simulate_hour(tmp_path, "--miscount")
    assert figures["oversteps_by_model"].get("github_copilot:claude-sonnet-4.5 over-rpm", 0) > 0
    assert figures["avoidable_refusals"] > 0
    assert {e["model"] for e in figures["avoidable_examples"]} == {"google/gemini-2.5-flash"}
    assert code == 1
