from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from accounts import api

router = SimpleRouter()
router.register("keys", api.ApiKeyViewSet, basename="apikey")
router.register("users", api.UserUsageViewSet, basename="user")

urlpatterns = [
    path("", include(router.urls)),
    # The schema describes endpoints, not data: it is public so tools can fetch it.
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
]
