"""Upstream failures: the error type every upstream path raises, and how a provider's HTTP error becomes ours.

Shared by the passthrough and the LiteLLM path, so a 429 with Retry-After, a revoked key or an oversized answer
reaches the client the same way whichever path called the provider.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from django.conf import settings

from gateway import redact
from gateway.catalog import Route
from gateway.errors import GatewayError


class UpstreamError(GatewayError):
    """A provider failed; `retryable` says whether another deployment may be tried."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after_seconds: float | None = None,
        per_day: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(status, message, **kwargs)
        self.upstream_status = upstream_status
        # What the provider said about its rate limit: how long to wait, and whether the day is used up.
        self.retry_after_seconds = retry_after_seconds
        self.per_day = per_day

    @property
    def retryable(self) -> bool:
        return self.status in (429, 502, 503, 504) or (self.upstream_status or 0) >= 500


def too_large(route: Route, cap: int) -> UpstreamError:
    return UpstreamError(502, f"Provider '{route.provider_name}' (model '{route.public_name}') sent a response "
                         f"larger than the limit of {cap} bytes (MAX_UPSTREAM_RESPONSE_BYTES).",
                         code="upstream_response_too_large", upstream_status=502)


def check_size(result: dict[str, Any], route: Route) -> dict[str, Any]:
    """Refuse an answer over MAX_UPSTREAM_RESPONSE_BYTES. On the LiteLLM path this runs after LiteLLM has read
    the whole body (it offers no hook to stop earlier), so it bounds what reaches clients and records, not the
    worker's peak memory; the passthrough stops reading at the cap."""
    cap = settings.MAX_UPSTREAM_RESPONSE_BYTES
    if len(orjson.dumps(result)) > cap:
        raise too_large(route, cap)
    return result



_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> float | None:
    """Seconds from "37", "37s", "1m30s", "6m0s", "250ms" or "1.5s" (OpenAI, Gemini and Retry-After styles)."""
    text = text.strip().strip('"')
    try:
        return float(text)
    except ValueError:
        pass
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        return None
    h, mins, secs, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + secs + ms / 1000


_QUOTA_ID = re.compile(r'quotaId["\']?\s*[:=]\s*["\']?([A-Za-z0-9_-]+)')
_RETRY_DELAY = re.compile(r'retryDelay["\']?\s*[:=]\s*["\']?([0-9.]+s)')


def parse_rate_limit_parts(headers: dict[str, str], text: str) -> tuple[float | None, bool]:
    """How long the provider wants us to wait, and whether it is the daily quota that ran out.

    Reads Retry-After / retry-after-ms / x-ratelimit-reset-requests headers and Gemini's error body
    (QuotaFailure quotaId such as GenerateRequestsPerDayPerProjectPerModel-FreeTier, RetryInfo retryDelay).
    """
    seconds: float | None = None
    if "retry-after-ms" in headers:
        seconds = (parse_duration(headers["retry-after-ms"]) or 0) / 1000 or None
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if seconds is None and name in headers:
            seconds = parse_duration(headers[name])
    if seconds is None and (m := _RETRY_DELAY.search(text)):
        seconds = parse_duration(m.group(1))
    per_day = any("PerDay" in q or "per_day" in q.lower() for q in _QUOTA_ID.findall(text))
    return seconds, per_day



def _detail(text: str) -> str:
    """The provider's own message from an OpenAI-style error body, else the text itself (cut short)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()[:500]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return text.strip()[:500]


def error_for_status(
    route: Route, status: int, text: str, headers: Any, *, raw: str | None = None
) -> UpstreamError:
    """The error our client gets for a provider's HTTP error status (shared by every upstream path)."""
    where = f"provider '{route.provider_name}' (model '{route.public_name}')"
    detail = redact.redact(_detail(text))
    lowered = {str(k).lower(): str(v) for k, v in dict(headers or {}).items()}
    if status == 429:
        seconds, per_day = parse_rate_limit_parts(lowered, raw if raw is not None else text)
        out_headers = {"Retry-After": str(math.ceil(seconds))} if seconds is not None else {}
        return UpstreamError(
            429,
            f"Rate limited by {where}: {detail}",
            code="insufficient_quota" if per_day else "rate_limit_exceeded",
            type="insufficient_quota" if per_day else "requests",
            headers=out_headers,
            upstream_status=status,
            retry_after_seconds=seconds,
            per_day=per_day,
        )
    if status in (401, 403):
        return UpstreamError(
            status,
            f"{where} rejected the portal's credentials ({status}): {detail}. Check the provider's key in the admin.",
            code="upstream_auth_error",
            upstream_status=status,
        )
    if status == 404:
        return UpstreamError(404, f"{where} does not know this model: {detail}", code="model_not_found",
                             upstream_status=status)
    if 400 <= status < 500:
        return UpstreamError(400 if status in (413, 422) else status, f"{where} rejected the request: {detail}",
                             code="upstream_bad_request", upstream_status=status)
    return UpstreamError(502, f"{where} failed ({status}): {detail}", code="upstream_error", upstream_status=status)

