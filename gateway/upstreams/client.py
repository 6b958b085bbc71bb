"""The portal's one HTTP client for upstream calls: a pooled aiohttp session per event loop, and its proxy rules.

Every call the portal makes to a provider (the passthrough's streams, whole answers through a proxy, Copilot's
device login and token exchange) goes through `session()`; a whole answer on a direct connection goes through
`lean_pool()` (gateway/upstreams/http1.py says why). A worker has one event loop, so one session and one connection
pool; tests and admin actions that run their own short-lived loops get theirs, closed by `aclose()` or
`run_closing()`.

Proxies follow curl's rules: `https_proxy`/`HTTPS_PROXY` for https URLs, `http_proxy`/`HTTP_PROXY` for http
ones, `all_proxy`/`ALL_PROXY` for both, and `no_proxy`/`NO_PROXY` (host names, domain suffixes, `*`) for the
hosts to reach directly. A provider's own proxy URL (set in the admin) wins over all of them. The session is
not built with `trust_env=True`: that would also read `~/.netrc` on every request and send what it finds to
providers; the proxy is decided here and passed per request.
"""

from __future__ import annotations

import asyncio
import functools
import os
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import yarl

from gateway.upstreams import http1

T = TypeVar("T")

# Read on every call, so an operator's change (or a test's) applies without a restart; lower case first, as curl.
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                   "no_proxy", "NO_PROXY")

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_pools: dict[asyncio.AbstractEventLoop, http1.Pool] = {}


def session() -> aiohttp.ClientSession:
    """This event loop's pooled session, created on first use (a session belongs to the loop it was made on)."""
    loop = asyncio.get_running_loop()
    current = _sessions.get(loop)
    if current is None or current.closed:
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
        # No cookie jar: one session serves every user, so a provider's Set-Cookie must not follow the next
        # user's request (and filtering a jar costs time on every request).
        current = aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"],
                                        cookie_jar=aiohttp.DummyCookieJar())
        _sessions[loop] = current
    return current


def lean_pool() -> http1.Pool:
    """This event loop's pool of the lean client, for whole answers on a direct connection."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = http1.Pool()
    return pool


async def aclose() -> None:
    """Close this loop's session, its lean pool and their connections (at shutdown, or when a short-lived loop
    ends)."""
    loop = asyncio.get_running_loop()
    pool = _pools.pop(loop, None)
    if pool is not None:
        pool.close()
    current = _sessions.pop(loop, None)
    if current is not None:
        await current.close()
    # Sessions and pools of loops that are gone cannot be closed any more; forget them.
    for held in (_sessions, _pools):
        for gone in [gone for gone in held if gone.is_closed()]:
            del held[gone]


def run_closing(call: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """`call`, closing the session afterwards if it was made for this loop during the call.

    For sync code that calls upstreams through async_to_sync (admin actions, the Copilot connect page): that may
    run on a loop of its own, whose connections must not outlive it; on a worker's own loop the session stays.
    """

    async def wrapped() -> T:
        loop = asyncio.get_running_loop()
        existed = loop in _sessions or loop in _pools
        try:
            return await call()
        finally:
            if not existed:
                await aclose()

    return wrapped


def environment_proxies() -> bool:
    """Whether any proxy variable is set (NO_PROXY alone counts: it must then be obeyed by every path)."""
    return any(os.environ.get(name) for name in PROXY_VARIABLES)


def proxy_for(url: yarl.URL, provider_proxy: str = "") -> str | None:
    """The proxy a request to `url` goes through, or None for a direct connection."""
    if provider_proxy:
        return provider_proxy
    return _from_environment(_proxy_values(), url.scheme,
                             url.raw_host or "", url.explicit_port)


# os.environ's own mapping, which its setters keep in step (bytes on POSIX): eight os.environ.get calls cost a
# few dozen Python calls on every upstream call, eight gets on this dict almost nothing.
_RAW_ENVIRON = getattr(os.environ, "_data", None)
_RAW_PROXY_NAMES = tuple(os.fsencode(name) for name in PROXY_VARIABLES) if isinstance(_RAW_ENVIRON, dict) else ()


def _proxy_values() -> tuple[object, ...]:
    if _RAW_PROXY_NAMES:
        return tuple(_RAW_ENVIRON.get(name) for name in _RAW_PROXY_NAMES)  # type: ignore[union-attr]
    return tuple(os.environ.get(name) for name in PROXY_VARIABLES)


@functools.lru_cache(maxsize=256)
def _from_environment(values: tuple[object, ...], scheme: str, host: str, port: int | None) -> str | None:
    if not any(values):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    # NO_PROXY entries may name a host with its port (curl accepts both forms). On Linux proxy_bypass reads
    # no_proxy/NO_PROXY (urllib's proxy_bypass_environment).
    if urllib.request.proxy_bypass(host) or (port is not None and urllib.request.proxy_bypass(f"{host}:{port}")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"  # curl's default scheme for a bare host:port
