"""Security headers on every page of the Django side (the admin, the key pages, the management API).

Django's own SecurityMiddleware and XFrameOptionsMiddleware add X-Content-Type-Options, Referrer-Policy,
Cross-Origin-Opener-Policy and X-Frame-Options (see the SECURE_* settings); this adds what Django lacks: a
Content-Security-Policy and a Permissions-Policy. A view that sets its own policy keeps it (the key pages'
is stricter still, see accounts/pages.py). The /v1 paths never come here: they skip this middleware stack.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

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
