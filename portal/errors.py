"""Error pages: JSON envelopes on gateway paths, Django's pages elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views import defaults

from gateway.errors import GatewayError
from portal.lean import is_gateway


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_gateway(request.path):
        return GatewayError(404, f"Unknown endpoint: {request.method} {request.path}.", code="unknown_url").response()
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_gateway(request.path):
        return GatewayError(500, "Internal error in the portal.", code="internal_error").response()
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_gateway(request.path):
        return GatewayError(400, "Bad request.", code="bad_request").response()
    return defaults.bad_request(request, exception)
