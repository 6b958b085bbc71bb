"""The URL conf the gateway's requests are resolved against: gateway/urls.py's routes alone, with the site's
error handlers.

The site's root URL conf lists the admin, the key pages and the management API before the gateway, so a /v1
request resolved there is matched against all of them first (about thirty regular expressions a request).
portal/asgi.py's gateway handler points each of its requests here instead; the routes are the same objects.
"""

from gateway.urls import urlpatterns

handler400 = "portal.errors.bad_request"
handler404 = "portal.errors.not_found"
handler500 = "portal.errors.server_error"

__all__ = ["handler400", "handler404", "handler500", "urlpatterns"]
