"""Security headers, and no NUL characters, on every page of the Django side (admin, key pages, management API).

Django's own SecurityMiddleware and XFrameOptionsMiddleware add X-Content-Type-Options, Referrer-Policy,
Cross-Origin-Opener-Policy and X-Frame-Options (see the SECURE_* settings); this adds what Django lacks: a
Content-Security-Policy and a Permissions-Policy. A view that sets its own policy keeps it (the key pages'
is stricter still, see accounts/pages.py). The /v1 paths never come here: they skip this middleware stack.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBadRequest, HttpResponseBase, JsonResponse

# The admin loads its scripts from /static/ only; an inline script needs this response's nonce
# (`nonce="{{ request.csp_nonce }}"`). Styles allow inline: Django's admin has a <style> block in its change
# list. Nothing is loaded from, posted to, or framed by another origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Powerful browser features the portal never uses, off for its pages and anything they could embed.
PERMISSIONS_POLICY = (
    "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), "
    "usb=()"
)


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        nonce = secrets.token_urlsafe(16)
        request.csp_nonce = nonce  # type: ignore[attr-defined]
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(nonce=nonce)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response


class RefuseNulMiddleware:
    """400 for a request with a NUL character in its path, query or body.

    PostgreSQL refuses NUL in text, so one in a form field, a lookup or a filter (`?owner=%00`) would reach
    the database and come back as a 500. Nothing legitimate contains one. The /v1 paths never come here; the
    usage recorder strips NUL from what it stores instead.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if has_nul(request):
            message = "NUL characters are not allowed in a request."
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": message}, status=400)
            return HttpResponseBadRequest(message)
        return self.get_response(request)


def has_nul(request: HttpRequest) -> bool:
    query = request.META.get("QUERY_STRING", "")
    if "\x00" in request.path or "%00" in query or "\x00" in query:
        return True
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return False
    body = request.body  # read once; Django keeps it for request.POST and DRF
    if b"\x00" in body:
        return True
    if request.content_type == "application/x-www-form-urlencoded":
        return b"%00" in body
    return b"\\u0000" in body  # JSON's escape for it
