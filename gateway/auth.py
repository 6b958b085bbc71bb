"""Who is calling /v1: the master key, or a user's API key; and the per-IP brake on guessing keys."""

from __future__ import annotations

import hmac
import logging
import math
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from gateway import clock
from gateway.errors import GatewayError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyLimits:
    """A key's own quota (None = unlimited); enforced by gateway.quota, never for the master key."""

    rpm: int | None = None
    rpd: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.rpd, self.tokens_per_day, self.tokens_per_month))


@dataclass(frozen=True)
class Principal:
    is_master: bool
    key_id: int | None = None
    key_name: str = ""
    user_id: int | None = None
    username: str = ""
    # Empty means every enabled model.
    allowed_models: frozenset[str] = field(default_factory=frozenset)
    limits: KeyLimits = field(default_factory=KeyLimits)
    # Per public model name, overriding `limits` for that model.
    model_limits: dict[str, KeyLimits] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def limits_for(self, public_name: str) -> KeyLimits:
        return self.model_limits.get(public_name, self.limits)

    def may_use(self, public_name: str) -> bool:
        return self.is_master or not self.allowed_models or public_name in self.allowed_models


MASTER = Principal(is_master=True, key_name="master")


def token_from(request: HttpRequest) -> str:
    """The key from `Authorization: Bearer <key>` or `x-api-key: <key>` ("" if none)."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def invalid_key(message: str = "Invalid API key.") -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


class FailureThrottle:
    """Invalid keys counted per client IP; past AUTH_FAILURE_LIMIT in an AUTH_FAILURE_WINDOW, the IP gets 429s.

    The count lives in the Django cache (Redis when configured), so every worker and host adds to the same
    number. Only failures touch it: a request with a good key costs one dict lookup here, no I/O. Each worker
    also remembers the IPs it has seen go over the limit, and refuses them before looking at the key at all,
    so a valid key from a blocked IP is refused too until the window ends: otherwise the 429 would tell a
    guesser which keys are wrong and the 200 which one is right, at full speed. A worker that has not yet
    seen the IP fail since the limit was reached learns it at its first failure from that IP (so at most one
    more guess per worker gets a 401 instead of a 429).
    """

    MEMO_MAX = 10_000

    def __init__(self) -> None:
        self._blocked: dict[str, float] = {}  # ip -> clock time the block ends

    def retry_after(self, ip: str) -> int | None:
        """Seconds until a blocked IP may try again; None when it is not blocked."""
        until = self._blocked.get(ip)
        if until is None:
            return None
        left = until - clock.now()
        if left <= 0:
            self._blocked.pop(ip, None)
            return None
        return max(1, math.ceil(left))

    async def fail(self, ip: str) -> int | None:
        """Count one invalid key from `ip`; the Retry-After seconds when that was one too many."""
        if settings.AUTH_FAILURE_LIMIT <= 0 or not ip:
            return None
        now, key, window = self._window(ip)
        try:
            await cache.aadd(key, 0, timeout=math.ceil(window) + 5)
            count = await cache.aincr(key)
        except Exception as e:
            # The cache is down (Redis away): answer the 401 as usual rather than fail the request.
            log.warning("could not count an invalid key from %s: %s", ip, type(e).__name__)
            return None
        return self._counted(ip, count, now)

    def fail_sync(self, ip: str) -> int | None:
        """fail() for sync callers (the management API's master key)."""
        if settings.AUTH_FAILURE_LIMIT <= 0 or not ip:
            return None
        now, key, window = self._window(ip)
        try:
            cache.add(key, 0, timeout=math.ceil(window) + 5)
            count = cache.incr(key)
        except Exception as e:
            log.warning("could not count an invalid key from %s: %s", ip, type(e).__name__)
            return None
        return self._counted(ip, count, now)

    def _window(self, ip: str) -> tuple[float, str, float]:
        now, window = clock.now(), settings.AUTH_FAILURE_WINDOW
        return now, f"auth:failures:{ip}:{int(now // window)}", window

    def _counted(self, ip: str, count: int, now: float) -> int | None:
        limit, window = settings.AUTH_FAILURE_LIMIT, settings.AUTH_FAILURE_WINDOW
        index = int(now // window)
        if count < limit:
            return None
        until = (index + 1) * window
        if ip not in self._blocked:
            if len(self._blocked) >= self.MEMO_MAX:
                self._blocked.clear()  # garbage from many addresses must not grow this without bound
            log.warning("ip %s sent %d invalid API keys within %gs; refused until the window ends", ip, count,
                        window)
        self._blocked[ip] = until
        return max(1, math.ceil(until - now)) if count > limit else None

    def reset(self) -> None:
        """Forget every block of this process (tests; the shared counts expire by themselves)."""
        self._blocked.clear()


throttle = FailureThrottle()


def too_many_failures(retry_after: int) -> GatewayError:
    return GatewayError(
        429,
        f"Too many invalid API keys from your address. Try again in {retry_after}s.",
        code="too_many_invalid_keys",
        headers={"Retry-After": str(retry_after)},
    )


async def authenticate(request: HttpRequest) -> Principal:
    ip = str(request.META.get("REMOTE_ADDR") or "")
    if (retry_after := throttle.retry_after(ip)) is not None:
        raise too_many_failures(retry_after)
    token = token_from(request)
    if not token:
        raise invalid_key(
            "Missing API key. Send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header."
        )
    # Constant time: how long the comparison takes must not tell how much of a guess was right. User keys
    # are compared the same way, as HMACs of the token (accounts.keys.resolve_token).
    if hmac.compare_digest(token.encode(), settings.MASTER_KEY.encode()):
        return MASTER
    # Imported here: accounts builds on this module's Principal.
    from accounts.keys import resolve_token
    from gateway import health

    try:
        principal = await resolve_token(token)
    except health.UNREACHABLE_ERRORS as e:
        # The key could not be looked up (cache or database away): a 503 the call's usage record shows too.
        raise health.unreachable(e) from None
    if principal is None:
        if (retry_after := await throttle.fail(ip)) is not None:
            raise too_many_failures(retry_after)
        raise invalid_key("Invalid API key: unknown, revoked or expired.")
    return principal
