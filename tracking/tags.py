"""User-supplied tags of a call: the key's tags, the `x-portal-tags` header and the body's `metadata`.

Header forms: a JSON object (`{"team": "data"}`) or `name=value` pairs separated by commas
(`team=data, run=eval-7`). `x-mlflow-experiment: NAME` is a shortcut for the `mlflow_experiment` tag,
which sends the call's MLflow trace to that experiment. Later sources win: key < header < body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

MAX_TAGS = 32
MAX_NAME = 64
MAX_VALUE = 250
EXPERIMENT_TAG = "mlflow_experiment"


def clean(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    """Plain string names and values, bounded in count and size (tags come from untrusted clients)."""
    out: dict[str, str] = {}
    if not isinstance(raw, Mapping):
        return out
    for name, value in raw.items():
        if len(out) >= MAX_TAGS:
            break
        if value is None or isinstance(value, (dict, list)):
            continue
        key = str(name).strip()[:MAX_NAME]
        if key:
            out[key] = str(value).strip()[:MAX_VALUE]
    return out


def parse_header(value: str) -> dict[str, str]:
    value = value.strip()
    if not value:
        return {}
    if value.startswith("{"):
        try:
            return clean(orjson.loads(value))
        except orjson.JSONDecodeError:
            return {}
    pairs = (item.partition("=") for item in value.split(","))
    return clean({name: v for name, sep, v in pairs if sep})


def from_headers(meta: Mapping[str, Any]) -> dict[str, str]:
    """Tags sent as headers, read from a request's META (the WSGI-style names: HTTP_X_PORTAL_TAGS); cheap, as it
    runs on the request path."""
    tags = parse_header(str(meta.get("HTTP_X_PORTAL_TAGS", "")))
    if experiment := str(meta.get("HTTP_X_MLFLOW_EXPERIMENT", "")).strip():
        tags[EXPERIMENT_TAG] = experiment[:MAX_VALUE]
    return tags


def merge(key_tags: Mapping[str, Any] | None, call_tags: Mapping[str, Any] | None, body: Any) -> dict[str, str]:
    metadata = body.get("metadata") if isinstance(body, dict) else None
    return {**clean(key_tags), **clean(call_tags), **clean(metadata)}
