"""The URL conf the gateway's requests are resolved against: gateway/urls.py's routes alone.

The site's root URL conf lists the admin, the key pages and the management API before the gateway, so a /v1
request resolved there is matched against all of them first (about thirty regular expressions a request).
portal/asgi.py's gateway handler resolves here instead; the routes are the same objects. An unknown path still
gets the site's error handlers (portal/urls.py's handler404, which answers gateway paths with an envelope).
"""

from gateway.urls import urlpatterns

__all__ = ["urlpatterns"]
