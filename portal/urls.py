from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path

from accounts.views import admin_login
from gateway.board_api import QuotaBoardView
from portal import views

urlpatterns = [
    path("", views.landing, name="landing"),
    # LiteLLM Proxy's web UI address: bookmarks and habits land on the admin login.
    re_path(r"^ui(?:/(?P<rest>.*))?$", views.ui_redirect),
    # Before admin.site.urls: the admin's login, throttled per IP and username.
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
    path("keys/", include("accounts.urls")),
    path("api/quota/", QuotaBoardView.as_view(), name="api-quota"),
    path("api/", include("accounts.api_urls")),
    path("", include("gateway.urls")),
]

if settings.SERVE_STATIC:
    urlpatterns.append(re_path(r"^static/(?P<path>.*)$", views.static))

handler400 = "portal.errors.bad_request"
handler404 = "portal.errors.not_found"
handler500 = "portal.errors.server_error"
