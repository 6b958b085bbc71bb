"""Backing services: the readiness check of the Celery broker, and what a request gets when one is down.

A probe must answer quickly and truthfully, so the broker check opens its own short-lived connection with a
short timeout and no retries (a pooled client would retry with backoff for seconds, and could report a
connection that died a moment ago as fine).
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import redis.exceptions
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError

from gateway.errors import GatewayError

BROKER_TIMEOUT_SECONDS = 2.0


# The database or the cache could not be reached (refused, reset, timed out): not a bug of the portal, so a
# request that needed them gets a 503 the client may retry, never a 500.
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError, InterfaceError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)


def unreachable(e: Exception) -> GatewayError:
    store = "cache" if isinstance(e, redis.exceptions.RedisError) else "database"
    return GatewayError(503, f"The portal's {store} is unreachable right now. Try again shortly.",
                        code="service_unavailable", headers={"Retry-After": "5"})


async def check_broker(url: str | None = None, timeout: float = BROKER_TIMEOUT_SECONDS) -> str:
    """"ok", or "error: <exception class>" (never the URL: it may hold a password)."""
    url = url or settings.CELERY_BROKER_URL
    scheme = urlsplit(url).scheme
    try:
        if scheme in ("redis", "rediss"):
            await _ping_redis(url, timeout)
        elif scheme == "filesystem":
            return _check_folder()
        else:
            # amqp and the rest: kombu's own connect, in a thread (it is synchronous), bounded by the timeout.
            await asyncio.wait_for(sync_to_async(_kombu_connect, thread_sensitive=False)(url, timeout), timeout * 2)
        return "ok"
    except Exception as e:
        return f"error: {type(e).__name__}"


async def _ping_redis(url: str, timeout: float) -> None:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        await client.ping()
    finally:
        await client.aclose()


def _check_folder() -> str:
    """The filesystem transport (the embedded default): its queue folder must exist and be writable."""
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in")
    if not isinstance(folder, str) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return "error: queue folder missing or not writable"
    return "ok"


def _kombu_connect(url: str, timeout: float) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=timeout, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
