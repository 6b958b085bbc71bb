from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("gateway.urls")),
]

if settings.SERVE_STATIC:
    urlpatterns.append(re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}))

handler400 = "portal.errors.bad_request"
handler404 = "portal.errors.not_found"
handler500 = "portal.errors.server_error"
