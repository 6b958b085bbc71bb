"""The benchmark's Django side, run as a subprocess with the portal's environment (DATABASE_URL, REDIS_URL, ...).

    python bench/portal_setup.py setup --mock http://127.0.0.1:P --paced http://127.0.0.1:Q
    python bench/portal_setup.py usage --expect 1234 --timeout 15

`setup` creates the catalog the benchmark calls and the API keys it calls with, and prints them as JSON.
`usage` waits until the usage records of the run are written (or the timeout passes) and prints their counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402

# Limits far above anything a 2-core run can send, so quotas are checked on every request but never refuse.
DEPLOYMENT_LIMITS = {"rpm": 1_000_000, "rpd": 100_000_000, "tpm": 2_000_000_000}
KEY_LIMITS = {"rpm": 1_000_000, "rpd": 100_000_000, "tokens_per_day": 10**12, "tokens_per_month": 10**13}
MODEL_LIMITED = "bench-model"
MODEL_PACED = "bench-stream-paced"
MODEL_UNLIMITED = "bench-model-nolimits"
MODEL_EMBED = "bench-embed"  # the large-inputs case's embeddings model (no limits)


def setup(mock_url: str, paced_url: str) -> dict[str, Any]:
    from gateway.models import Deployment, Provider, ProviderKind

    def provider(name: str, base: str) -> Provider:
        row, _ = Provider.objects.update_or_create(
            name=name, defaults={"kind": ProviderKind.OPENAI_COMPATIBLE, "api_base": base + "/v1", "enabled": True}
        )
        row.set_secret("sk-bench-upstream-key")
        row.save()
        return row

    mock, paced = provider("bench-mock", mock_url), provider("bench-mock-paced", paced_url)
    for public, row, limits in (
        (MODEL_LIMITED, mock, DEPLOYMENT_LIMITS),
        (MODEL_PACED, paced, DEPLOYMENT_LIMITS),
        (MODEL_UNLIMITED, mock, {"rpm": None, "rpd": None, "tpm": None}),
    ):
        Deployment.objects.update_or_create(
            public_name=public, provider=row, upstream_model="bench-model", defaults={"enabled": True, **limits}
        )
    Deployment.objects.update_or_create(
        public_name=MODEL_EMBED, provider=mock, upstream_model="bench-embed",
        defaults={"enabled": True, "model_info": {"mode": "embedding"}},
    )
    models = {"limited": MODEL_LIMITED, "paced": MODEL_PACED, "unlimited": MODEL_UNLIMITED, "embed": MODEL_EMBED}
    return {"models": models, **keys()}


def keys() -> dict[str, Any]:
    """A real user key with high limits, and one without limits (the quota-off comparison), when accounts
    can issue keys; else the master key for both, and the report says so."""
    try:
        from accounts.models import ApiKey
    except ImportError:
        ApiKey = None
    if ApiKey is None or not hasattr(ApiKey.objects, "issue"):
        return {"key": settings.MASTER_KEY, "key_unlimited": settings.MASTER_KEY, "key_kind": "master"}
    from django.contrib.auth import get_user_model

    from accounts.principal import KeyLimits

    user, _ = get_user_model().objects.get_or_create(username="bench")
    _, limited = ApiKey.objects.issue(user, "bench (high limits)", limits=KeyLimits(**KEY_LIMITS))
    _, unlimited = ApiKey.objects.issue(user, "bench (no limits)")
    return {"key": limited, "key_unlimited": unlimited, "key_kind": "user"}


def usage(expect: int, timeout: float) -> dict[str, Any]:
    """Counts of usage records, once `expect` of them are written or `timeout` seconds have passed."""
    try:
        from tracking.models import UsageRecord
    except ImportError:
        return {"available": False}
    deadline = time.monotonic() + timeout
    waited = 0.0
    while True:
        count = UsageRecord.objects.count()
        if count >= expect or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
        waited += 0.25
    records = UsageRecord.objects
    return {
        "available": True,
        "count": count,
        "ok": records.filter(ok=True).count(),
        "streamed": records.filter(streamed=True).count(),
        "with_tokens": records.filter(total_tokens__isnull=False).count(),
        "waited_s": waited,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup")
    p_setup.add_argument("--mock", required=True)
    p_setup.add_argument("--paced", required=True)
    p_usage = sub.add_parser("usage")
    p_usage.add_argument("--expect", type=int, required=True)
    p_usage.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args()
    result = setup(args.mock, args.paced) if args.command == "setup" else usage(args.expect, args.timeout)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
