"""Login throttling with django-ratelimit: failed attempts counted per client IP and per username.

Only failures count, so a user who logs in and out all day is never locked out; once LOGIN_RATE failures
are reached in the window, every further attempt (even with the right password) gets a 429 until the
window ends. The admin's and the self-service login share the counters.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.template.response import TemplateResponse
from django_ratelimit.core import get_usage

log = logging.getLogger("accounts.auth")

View = Callable[..., HttpResponseBase]


def _username(group: str, request: HttpRequest) -> str:
    return request.POST.get("username", "").strip().lower()


def _usages(request: HttpRequest, increment: bool) -> list[dict[str, Any]]:
    checks: list[tuple[str, Any]] = [("login:ip", "ip")]
    if _username("", request):
        checks.append(("login:username", _username))
    usages = []
    for group, key in checks:
        usage = get_usage(request, group=group, key=key, rate=settings.LOGIN_RATE, method="POST",
                          increment=increment)
        if usage is not None:
            usages.append(usage)
    return usages


def is_throttled(request: HttpRequest) -> int | None:
    """Seconds until the caller may try again, or None when it may try now."""
    blocked = [u for u in _usages(request, increment=False) if u["count"] >= u["limit"]]
    if not blocked:
        return None
    return max(1, *(int(u["time_left"]) for u in blocked))


def throttled_login(view: View) -> View:
    """Wrap a login view: refuse POSTs over the limit with 429, count the ones that fail."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method != "POST":
            return view(request, *args, **kwargs)
        retry_after = is_throttled(request)
        if retry_after is not None:
            log.warning("login throttled: user=%s ip=%s", _username("", request), request.META.get("REMOTE_ADDR"))
            throttled = TemplateResponse(
                request, "accounts/throttled.html", {"retry_after": retry_after}, status=429
            )
            throttled["Retry-After"] = str(retry_after)
            return throttled
        response = view(request, *args, **kwargs)
        # A failed login re-renders the form (200); a successful one redirects.
        if response.status_code == 200:
            _usages(request, increment=True)
        return response

    return wrapper
