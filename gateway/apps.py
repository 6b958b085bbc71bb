from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Models and providers"  # the console's name for it (breadcrumbs, app page)
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway import services

        services.register()
