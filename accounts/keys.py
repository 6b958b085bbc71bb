"""Turning a bearer token into a Principal on the /v1 hot path, without a database query per request.

Three layers, cheapest first:
1. an in-process memo per key prefix, trusted for API_KEY_REFRESH_SECONDS (so a burst costs nothing);
2. the shared Django cache (Redis across workers and hosts): one `get_many` of the key's entry and its
   version number;
3. the database, only when the entry is missing or older than the version.

A change to a key (revoke, edit, owner deactivated, the owner's policy and so their budget) bumps its
version in the shared cache and drops the memo in this process: in-process it applies to the next request;
other workers see it at their next check, within API_KEY_REFRESH_SECONDS. The version is bumped again after
the transaction commits, so a worker that read the row just before the commit cannot keep a stale entry.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, transaction

from accounts.models import ApiKey, KeyPolicy, digest, parse_prefix
from accounts.principal import Principal

log = logging.getLogger(__name__)

ENTRY_TTL = 300  # seconds; the version check, not the TTL, is what makes changes visible
MISSING_TTL = 60
MEMO_MAX = 10_000


@dataclass(frozen=True)
class Entry:
    """What the hot path needs about one prefix. principal is None when the key cannot be used."""

    version: int
    secret_hash: str = ""
    expires_at: float | None = None
    principal: Principal | None = None


def entry_key(prefix: str) -> str:
    return f"accounts:apikey:{prefix}"


def version_key(prefix: str) -> str:
    return f"accounts:apikey-version:{prefix}"


_memo: dict[str, tuple[Entry, float]] = {}
_touched: dict[str, float] = {}
_background: set[asyncio.Task[None]] = set()


async def resolve_token(token: str) -> Principal | None:
    """The Principal of a valid, unexpired, unrevoked user key; None for anything else."""
    prefix = parse_prefix(token)
    if prefix is None:
        return None
    entry = await _entry(prefix)
    if entry.principal is None or not hmac.compare_digest(entry.secret_hash, digest(token)):
        return None
    if entry.expires_at is not None and entry.expires_at <= time.time():
        return None
    _touch_later(prefix, entry.principal.key_id)
    return entry.principal


async def _entry(prefix: str) -> Entry:
    held = _memo.get(prefix)
    now = time.monotonic()
    if held is not None:
        if now - held[1] < settings.API_KEY_REFRESH_SECONDS:
            return held[0]
        # This request re-checks the key; the key's other requests meanwhile use the entry held (no herd of
        # cache reads, each a thread hop). A revocation in this process drops the memo, so it is never late.
        _memo[prefix] = (held[0], now)
    found = await cache.aget_many([entry_key(prefix), version_key(prefix)])
    version = int(found.get(version_key(prefix)) or 0)
    entry = found.get(entry_key(prefix))
    if not isinstance(entry, Entry) or entry.version != version:
        entry = await sync_to_async(load_entry)(prefix, version)
        ttl = ENTRY_TTL if entry.principal is not None else MISSING_TTL
        await cache.aset(entry_key(prefix), entry, ttl)
    _remember(prefix, entry)
    return entry


def _remember(prefix: str, entry: Entry) -> None:
    if len(_memo) >= MEMO_MAX:
        # Garbage tokens with well-formed prefixes could otherwise grow this without bound.
        _memo.clear()
    _memo[prefix] = (entry, time.monotonic())


def load_entry(prefix: str, version: int) -> Entry:
    """Read one key with its owner, the owner's policy (their budget) and the key's per-model limits (two
    queries), as of `version`."""
    key = ApiKey.objects.select_related("owner", "owner__key_policy").filter(prefix=prefix).first()
    if key is None:
        return Entry(version)
    if not key.is_active or not key.owner.is_active:
        return Entry(version, key.secret_hash)
    limits, model_limits = key.principal_limits()
    principal = Principal(
        is_master=False,
        key_id=key.pk,
        key_name=key.name,
        user_id=key.owner_id,
        username=key.owner.get_username(),
        allowed_models=frozenset(key.allowed_models),
        limits=limits,
        model_limits=model_limits,
        tags={str(k): str(v) for k, v in key.tags.items()},
        user_budget=KeyPolicy.for_user(key.owner).user_budget(),
    )
    expires_at = key.expires.timestamp() if key.expires is not None else None
    return Entry(version, key.secret_hash, expires_at, principal)


def invalidate(prefix: str) -> None:
    """Every worker must re-read this key: now, and again once the current transaction commits."""
    _bump(prefix)
    transaction.on_commit(lambda: _bump(prefix))


def _bump(prefix: str) -> None:
    _memo.pop(prefix, None)
    key = version_key(prefix)
    # Dropping the entry too covers a version number lost to eviction and restarted from 0.
    cache.delete(entry_key(prefix))
    cache.add(key, 0, timeout=None)
    try:
        cache.incr(key)
    except ValueError:  # evicted between add and incr
        cache.set(key, 1, timeout=None)


def _touch_later(prefix: str, key_id: int | None) -> None:
    """Record last_used in the background, at most once a minute per key and process."""
    if key_id is None:
        return
    now = time.monotonic()
    if now - _touched.get(prefix, -1e9) < 60:
        return
    if len(_touched) >= MEMO_MAX:
        _touched.clear()
    _touched[prefix] = now
    task = asyncio.get_running_loop().create_task(_touch(key_id))
    # The loop keeps only weak references to tasks; hold one until it is done.
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _touch(key_id: int) -> None:
    try:
        await sync_to_async(ApiKey.objects.touch)(key_id)
    except DatabaseError as e:
        log.warning("could not record last_used of api key %s: %s", key_id, type(e).__name__)


async def drain() -> None:
    """Wait for pending last_used writes (tests; a graceful shutdown)."""
    loop = asyncio.get_running_loop()
    while pending := [task for task in _background if task.get_loop() is loop and not task.done()]:
        await asyncio.gather(*pending)
