"""The short-lived Copilot token on the /v1 path: from memory, the shared cache, the database or an exchange.

The /v1 path never blocks the event loop: GitHub is called with the shared async client and the database through
sync_to_async, only when the memory copy is missing or about to expire.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.core.cache import cache

from gateway import clock, crypto, redact
from gateway.models import CopilotAuth
from gateway.upstreams.copilot.github import REFRESH_MARGIN, CopilotToken, GitHubError, exchange_token
from gateway.upstreams.copilot.headers import DEFAULT_API_BASE, copilot_headers
from gateway.upstreams.errors import UpstreamError

if TYPE_CHECKING:
    from gateway.catalog import Route

log = logging.getLogger(__name__)

# How long a worker trusts its memory copy before looking at the shared cache again (a disconnect or a
# reconnect in the admin reaches every worker within this time).
RECHECK_SECONDS = 60.0
CACHE_KEY = "gateway:copilot-token:{}"


# provider id -> (token, when to look at the shared cache again)
_memory: dict[int, tuple[CopilotToken, float]] = {}
# provider id -> (error, until): a provider found unconnected or revoked answers from here for a few
# seconds instead of costing a database query (or a GitHub call) per request; connecting clears it.
_unusable: dict[int, tuple[UpstreamError, float]] = {}
UNUSABLE_SECONDS = 5.0
# One refresh at a time per provider and event loop, so a burst after expiry exchanges once.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Lock]] = weakref.WeakKeyDictionary()


def not_connected(route: Route, detail: str = "") -> UpstreamError:
    return UpstreamError(
        503,
        f"GitHub Copilot is not connected for provider '{route.provider_name}'{detail}. An operator must connect "
        f"it in the admin: Providers → {route.provider_name} → Connect GitHub Copilot.",
        code="copilot_not_connected",
    )


def reconnect_required(route: Route) -> UpstreamError:
    return UpstreamError(
        401,
        f"GitHub rejected the GitHub Copilot login of provider '{route.provider_name}' (revoked or expired). "
        f"An operator must reconnect it in the admin: Providers → {route.provider_name} → Connect GitHub Copilot.",
        code="copilot_reconnect_required",
        upstream_status=401,
    )


def token_rejected(route: Route, error: UpstreamError) -> UpstreamError:
    """Copilot refused even a freshly exchanged token: the seat or the login has a problem."""
    return UpstreamError(
        401,
        f"GitHub Copilot rejected the portal's Copilot token for provider '{route.provider_name}' twice "
        f"({error.message}). Check the account's Copilot seat, or reconnect it in the admin: "
        f"Providers → {route.provider_name} → Connect GitHub Copilot.",
        code="copilot_token_rejected",
        upstream_status=401,
    )


async def after_rejection(route: Route, error: UpstreamError, attempt: int) -> None:
    """An upstream call failed: raise its error, unless Copilot rejected its short-lived token (a 401 before
    expires_at). Then the token is dropped, so the caller's next attempt exchanges a fresh one; a second
    rejection says the seat or the login has a problem. Both upstream paths retry through this."""
    if route.kind != "github_copilot" or error.upstream_status != 401:
        raise error
    await aforget(route.provider_id)
    if attempt >= 2:
        raise token_rejected(route, error)


def _lock(provider_id: int) -> asyncio.Lock:
    locks = _locks.setdefault(asyncio.get_running_loop(), {})
    if provider_id not in locks:
        locks[provider_id] = asyncio.Lock()
    return locks[provider_id]


async def session_for(route: Route) -> CopilotToken:
    """A Copilot token for the route's provider that is good for at least REFRESH_MARGIN more seconds."""
    now = clock.now()
    entry = _memory.get(route.provider_id)
    if entry and entry[0].fresh(now) and now < entry[1]:
        return entry[0]
    if (known := _unusable.get(route.provider_id)) and now < known[1]:
        error = known[0]
        raise UpstreamError(error.status, error.message, code=error.code, upstream_status=error.upstream_status)
    async with _lock(route.provider_id):
        entry = _memory.get(route.provider_id)
        if entry and entry[0].fresh(now) and now < entry[1]:
            return entry[0]  # another request refreshed it while we waited
        try:
            token = await _from_cache(route.provider_id, now) or await _from_db_or_github(route, now)
        except UpstreamError as e:
            if e.code in ("copilot_not_connected", "copilot_reconnect_required"):
                _unusable[route.provider_id] = (e, now + UNUSABLE_SECONDS)
            raise
        _unusable.pop(route.provider_id, None)
        redact.register(token.token)
        _memory[route.provider_id] = (token, now + RECHECK_SECONDS)
        return token


async def _from_cache(provider_id: int, now: float) -> CopilotToken | None:
    cached = await cache.aget(CACHE_KEY.format(provider_id))
    if not isinstance(cached, dict):
        return None
    try:
        token = CopilotToken(crypto.decrypt(cached["token"]), float(cached["expires_at"]), str(cached["api_base"]))
    except (KeyError, TypeError, ValueError):
        return None
    return token if token.fresh(now) else None


async def _from_db_or_github(route: Route, now: float) -> CopilotToken:
    github_token, stored, revoked = await sync_to_async(CopilotAuth.load_for_call)(route.provider_id)
    if revoked:
        raise reconnect_required(route)
    if not github_token:
        raise not_connected(route)
    redact.register(github_token)
    if stored is not None and stored.fresh(now):
        token = stored
    else:
        token = await _exchange(route, github_token)
        await sync_to_async(CopilotAuth.store_copilot_token)(route.provider_id, token)
    ttl = int(token.expires_at - REFRESH_MARGIN - now)
    if ttl > 0:
        value = {"token": crypto.encrypt(token.token), "expires_at": token.expires_at, "api_base": token.api_base}
        await cache.aset(CACHE_KEY.format(route.provider_id), value, timeout=ttl)
    return token


async def _exchange(route: Route, github_token: str) -> CopilotToken:
    try:
        return await exchange_token(github_token, route.proxy_url)
    except GitHubError as e:
        where = f"GitHub Copilot (provider '{route.provider_name}')"
        if e.status == 401:
            await sync_to_async(CopilotAuth.mark_revoked_for)(route.provider_id)
            raise reconnect_required(route) from None
        if e.status in (403, 404):
            raise not_connected(route, f": the GitHub account has no Copilot access ({e})") from None
        if e.status == 429:
            raise UpstreamError(429, f"{where}: {e}", code="rate_limit_exceeded", type="rate_limit_error",
                                upstream_status=429) from None
        log.warning("Copilot token exchange failed for provider %s: %s", route.provider_name, e)
        raise UpstreamError(502, f"{where}: could not get a Copilot token: {e}", code="copilot_token_error",
                            upstream_status=e.status or 500) from None


def forget(provider_id: int) -> None:
    """Drop the cached Copilot token everywhere (reconnect, disconnect, or Copilot rejected it)."""
    _memory.pop(provider_id, None)
    _unusable.pop(provider_id, None)
    cache.delete(CACHE_KEY.format(provider_id))


async def aforget(provider_id: int) -> None:
    _memory.pop(provider_id, None)
    await cache.adelete(CACHE_KEY.format(provider_id))
    await sync_to_async(CopilotAuth.drop_copilot_token)(provider_id)


def forget_all() -> None:
    """Empty this process's memory copies (tests; the shared cache is cleared separately)."""
    _memory.clear()
    _unusable.clear()
    _locks.clear()


async def call_kwargs(route: Route, body: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM arguments for a Copilot call: OpenAI-compatible, at the account's API host, as an editor.

    Messages pass unchanged: system messages stay system messages (LiteLLM's github_copilot provider
    would turn them into assistant messages unless told otherwise).
    """
    token = await session_for(route)
    api_base = token.api_base
    # An operator-set base URL wins over the one GitHub named (a proxy, a test server).
    if route.api_base and route.api_base.rstrip("/") != DEFAULT_API_BASE:
        api_base = route.api_base
    headers = {**copilot_headers(body.get("messages")), **(kwargs.get("extra_headers") or {})}
    return {
        **kwargs,
        "model": f"openai/{route.upstream_model}",
        "api_base": api_base,
        "api_key": token.token,
        "extra_headers": headers,
    }
