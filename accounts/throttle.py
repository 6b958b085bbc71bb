"""Brakes on guessing: failed logins (per client IP and per username) and invalid API keys (per client IP).

Both are one mechanism, a sliding window counted in the Django cache (Redis when configured), so every worker
and host adds to the same numbers. Only failures are counted: a good key or a good password costs nothing
here. Past the limit, every further attempt from that address (or for that username) is refused, the right
key or password included, until the failures inside the window drop below the limit: otherwise the refusal
would tell a guesser which guesses are wrong, and the success which one is right.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponseBase
from django.template.response import TemplateResponse

log = logging.getLogger("accounts.auth")

View = Callable[..., HttpResponseBase]

# The clock the windows are read on. The gateway hands its own over when it starts (gateway.apps), which tests
# move forward instead of sleeping; accounts cannot import it (the gateway imports accounts).
now: Callable[[], float] = time.time


class SlidingWindow:
    """At most `limit` failures per key within any `window` seconds.

    The window is cut into SLICES slices; a failure is counted in the cache entry of its slice (one atomic
    incr), and the count is the sum of the slice now and the SLICES slices before it (one get_many). That sum
    covers every span of `window` seconds that ends now, so no span of `window` seconds ever holds more than
    `limit` failures that were answered as plain failures: the strict side of a sliding window, at the price
    of remembering a failure for up to one slice (window / SLICES) longer. A fixed window instead lets
    twice the limit through around its boundary (40 of a limit of 20 within 3 s, measured).

    The limit and the window are read from settings at each use (`limit` and `window` are callables), so a
    change in a test applies at once.
    """

    SLICES = 10

    def __init__(self, name: str, limit: Callable[[], int], window: Callable[[], float]) -> None:
        self.name = name
        self.limit = limit
        self.window = window

    def _keys(self, key: str, at: float) -> tuple[list[str], float]:
        """The cache keys of the slices the count at `at` adds up, oldest first; and the slice length."""
        size = self.window() / self.SLICES
        current = int(at // size)
        # Hashed: a username may hold spaces or be longer than some caches accept in a key.
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return [f"throttle:{self.name}:{digest}:{i}" for i in range(current - self.SLICES, current + 1)], size

    def _timeout(self) -> int:
        return math.ceil(self.window() * (1 + 2 / self.SLICES)) + 5

    def failed(self, key: str) -> tuple[int, int | None]:
        """Count one failure: the count now, and the Retry-After seconds once it is at the limit (else None)."""
        at = now()
        keys, size = self._keys(key, at)
        cache.add(keys[-1], 0, timeout=self._timeout())
        cache.incr(keys[-1])
        return self._state(keys, cache.get_many(keys), size, at)

    async def afailed(self, key: str) -> tuple[int, int | None]:
        at = now()
        keys, size = self._keys(key, at)
        await cache.aadd(keys[-1], 0, timeout=self._timeout())
        await cache.aincr(keys[-1])
        return self._state(keys, await cache.aget_many(keys), size, at)

    def blocked(self, key: str) -> int | None:
        """The Retry-After seconds while the key is at the limit; None when it may try (nothing counted)."""
        at = now()
        keys, size = self._keys(key, at)
        return self._state(keys, cache.get_many(keys), size, at)[1]

    def _state(self, keys: Sequence[str], found: dict[str, Any], size: float, at: float) -> tuple[int, int | None]:
        counts = [int(found.get(k) or 0) for k in keys]
        total = sum(counts)
        return total, self._retry_after(counts, total, size, at)

    def _retry_after(self, counts: list[int], total: int, size: float, at: float) -> int | None:
        left, limit = total, self.limit()
        if left < limit:
            return None
        # The oldest slices drop out of the sum one by one (the first one when the next slice begins): the
        # key may try again once what is left is under the limit.
        first = int(at // size) - self.SLICES
        for i, count in enumerate(counts):
            left -= count
            if left < limit:
                return max(1, math.ceil((first + i + self.SLICES + 1) * size - at))
        raise AssertionError("unreachable: the sum drops to 0")



# --- invalid API keys (the gateway's /v1 and the management API's master key) ---------------------------------


class KeyFailures:
    """Invalid keys per client IP: AUTH_FAILURE_LIMIT within any AUTH_FAILURE_WINDOW seconds.

    Each worker also remembers the addresses it has seen reach the limit, and refuses them before looking at a
    key at all (no I/O for that, and none for a good key). A worker that has not yet seen an address fail since
    it reached the limit learns it at its next failure from it, which the shared count answers with a 429: so
    no more than AUTH_FAILURE_LIMIT invalid keys from one address get a 401 within any window, however many
    workers it spreads them over (the one exception: while the cache is away nothing is counted).
    """

    MEMO_MAX = 10_000

    def __init__(self) -> None:
        self.window = SlidingWindow(
            "keys", lambda: settings.AUTH_FAILURE_LIMIT, lambda: settings.AUTH_FAILURE_WINDOW
        )
        self._blocked: dict[str, float] = {}  # ip -> clock time the block ends

    def retry_after(self, ip: str) -> int | None:
        """Seconds until a blocked address may try again, from this worker's memory; None when not blocked."""
        until = self._blocked.get(ip)
        if until is None:
            return None
        left = until - now()
        if left <= 0:
            self._blocked.pop(ip, None)
            return None
        return max(1, math.ceil(left))

    async def fail(self, ip: str) -> int | None:
        """Count one invalid key from `ip`; the Retry-After seconds when that was one too many."""
        if settings.AUTH_FAILURE_LIMIT <= 0 or not ip:
            return None
        try:
            count, retry_after = await self.window.afailed(ip)
        except Exception as e:
            # The cache is down (Redis away): answer the 401 as usual rather than fail the request.
            log.warning("could not count an invalid key from %s: %s", ip, type(e).__name__)
            return None
        return self._counted(ip, count, retry_after)

    def fail_sync(self, ip: str) -> int | None:
        """fail() for sync callers (the management API's master key)."""
        if settings.AUTH_FAILURE_LIMIT <= 0 or not ip:
            return None
        try:
            count, retry_after = self.window.failed(ip)
        except Exception as e:
            log.warning("could not count an invalid key from %s: %s", ip, type(e).__name__)
            return None
        return self._counted(ip, count, retry_after)

    def _counted(self, ip: str, count: int, retry_after: int | None) -> int | None:
        """Remember a block; a 429 for a failure past the limit, a plain 401 for the one that reached it."""
        if retry_after is None:
            return None
        if ip not in self._blocked:
            if len(self._blocked) >= self.MEMO_MAX:
                self._blocked.clear()  # garbage from many addresses must not grow this without bound
            log.warning("ip %s sent %d invalid API keys within %gs; refused for %ss", ip, count,
                        settings.AUTH_FAILURE_WINDOW, retry_after)
        self._blocked[ip] = now() + retry_after
        return retry_after if count > settings.AUTH_FAILURE_LIMIT else None

    def reset(self) -> None:
        """Forget every block of this process (tests; the shared counts expire by themselves)."""
        self._blocked.clear()


key_failures = KeyFailures()


# --- logins (the admin's and the key page's) ----------------------------------------------------------------


def _rate() -> tuple[int, float]:
    """LOGIN_RATE ("10/m", "20/5m") as (failures, seconds); settings checks its shape at start."""
    count, _, period = settings.LOGIN_RATE.partition("/")
    match = re.fullmatch(r"(\d*)([smhd])", period)
    if match is None:
        raise ValueError(f"LOGIN_RATE {settings.LOGIN_RATE!r}")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return int(count), int(match[1] or 1) * unit


login_by_ip = SlidingWindow("login-ip", lambda: _rate()[0], lambda: _rate()[1])
login_by_username = SlidingWindow("login-user", lambda: _rate()[0], lambda: _rate()[1])


def _username(request: HttpRequest) -> str:
    return request.POST.get("username", "").strip().lower()


def _checks(request: HttpRequest) -> list[tuple[SlidingWindow, str]]:
    checks = [(login_by_ip, str(request.META.get("REMOTE_ADDR") or ""))]
    if username := _username(request):
        checks.append((login_by_username, username))
    return checks


def is_throttled(request: HttpRequest) -> int | None:
    """Seconds until the caller may try again, or None when it may try now."""
    waits = [w for window, key in _checks(request) if (w := window.blocked(key)) is not None]
    return max(waits) if waits else None


def _count_failure(request: HttpRequest) -> None:
    for window, key in _checks(request):
        try:
            window.failed(key)
        except Exception as e:
            log.warning("could not count a failed login: %s", type(e).__name__)


def throttled_login(view: View) -> View:
    """Wrap a login view: refuse POSTs over the limit with 429, count the ones that fail."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method != "POST":
            return view(request, *args, **kwargs)
        retry_after = is_throttled(request)
        if retry_after is not None:
            log.warning("login throttled: user=%s ip=%s", _username(request), request.META.get("REMOTE_ADDR"))
            throttled = TemplateResponse(
                request, "accounts/throttled.html", {"retry_after": retry_after}, status=429
            )
            throttled["Retry-After"] = str(retry_after)
            return throttled
        response = view(request, *args, **kwargs)
        # A failed login re-renders the form (200); a successful one redirects.
        if response.status_code == 200:
            _count_failure(request)
        return response

    return wrapper
