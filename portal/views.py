"""The portal's own pages: the landing page at /, the seed's /ui address sent to the admin login, and the
console's static files (with SERVE_STATIC, the default)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.views import static as django_static


def landing(request: HttpRequest) -> HttpResponse:
    """Where a browser pointed at the portal's address lands: users to their keys, operators to the admin."""
    return render(request, "portal/landing.html", {"api_base": request.build_absolute_uri("/v1")})


def ui_redirect(request: HttpRequest, rest: str = "") -> HttpResponseRedirect:
    """LiteLLM Proxy's web UI lived at /ui (login with UI_USERNAME / UI_PASSWORD); here that is the admin."""
    return HttpResponseRedirect(f"{reverse('admin:login')}?next={reverse('admin:index')}")


def static(request: HttpRequest, path: str) -> HttpResponseBase:
    """A file of STATIC_ROOT, as Django's `serve` finds it (404, Last-Modified, 304 on If-Modified-Since), sent
    whole. `serve` answers with a FileResponse, a sync iterator: under ASGI Django reads it chunk by chunk, each
    read a hop to a thread, and warns on every file. The admin's files are a few hundred KB at most, read here
    in the view's own thread."""
    response = django_static.serve(request, path, document_root=str(settings.STATIC_ROOT))
    if not isinstance(response, FileResponse):
        return response  # a 304
    try:
        whole = HttpResponse(b"".join(cast(Iterator[bytes], response.streaming_content)))
    finally:
        response.close()
    for name, value in response.items():
        # The length is the body's, as CommonMiddleware sets it: not the size stat() saw before the read.
        if name.lower() != "content-length":
            whole[name] = value
    return whole
