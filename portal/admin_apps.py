from django.contrib.admin.apps import AdminConfig


class PortalAdminConfig(AdminConfig):
    """Django's admin with the portal's own site (portal.admin_site): every @admin.register lands there."""

    default_site = "portal.admin_site.PortalAdminSite"
