"""The portal's own pages: the landing page at /, and the seed's /ui address sent to the admin login."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse


def landing(request: HttpRequest) -> HttpResponse:
    """Where a browser pointed at the portal's address lands: users to their keys, operators to the admin."""
    return render(request, "portal/landing.html", {"api_base": request.build_absolute_uri("/v1")})


def ui_redirect(request: HttpRequest, rest: str = "") -> HttpResponseRedirect:
    """LiteLLM Proxy's web UI lived at /ui (login with UI_USERNAME / UI_PASSWORD); here that is the admin."""
    return HttpResponseRedirect(f"{reverse('admin:login')}?next={reverse('admin:index')}")
