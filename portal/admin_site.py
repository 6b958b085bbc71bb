"""The operator's console: Django's admin with the portal's name, a dashboard for an index, navigation grouped
by task, and the live quota board. Models register on it as usual (`@admin.register`): it is `admin.site`."""

from __future__ import annotations

import logging
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse

log = logging.getLogger(__name__)

# Sidebar and index groups: (title, [(app label, model name), ...]). A model not named here is listed in its
# own app's group after these, so a new model is never hidden.
GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Models and providers", [("gateway", "provider"), ("gateway", "deployment"), ("gateway", "quotapool")]),
    ("Keys and users", [("accounts", "apikey"), ("auth", "user"), ("auth", "group")]),
    ("Usage", [("tracking", "usagerecord"), ("tracking", "bodyloggingrule"), ("tracking", "modelusagerun")]),
    ("Settings", [("gateway", "configsetting")]),
]
# Pages that are not model lists, shown first in their group: (group, name, url name, permission).
PAGES = [
    ("Models and providers", "Quota board", "admin:quota_board", "gateway.view_deployment"),
    # Spends the providers' quota, as the Test action does: for those who may change models.
    ("Models and providers", "Playground", "admin:gateway_playground", "gateway.change_deployment"),
    # The index shows the same dashboard; its own URL keeps the sidebar's "current page" mark right.
    ("Usage", "Dashboard", "admin:tracking_dashboard", "tracking.view_usagerecord"),
]


@cache
def version() -> str:
    pyproject = Path(settings.BASE_DIR) / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return ""


class PortalAdminSite(admin.AdminSite):
    site_title = "LLM Portal"
    index_title = "Dashboard"
    site_url = "/"
    enable_nav_sidebar = True

    @property
    def site_header(self) -> str:  # type: ignore[override]
        return f"LLM Portal {version()}".strip()

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path("quota/", self.admin_view(self.quota_board), name="quota_board"),
            *super().get_urls(),
        ]

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        apps = super().get_app_list(request, app_label)
        if app_label is not None:
            return apps  # an app's own index page: Django's grouping
        return grouped(apps, request)

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        """The dashboard: usage of the period, the quota board's most pressed limits, providers that are off."""
        from gateway import board
        from gateway.models import Provider
        from tracking import usage
        from tracking.admin import DASHBOARD_DAYS, dashboard_days

        context: dict[str, Any] = {**self.each_context(request), "title": "Dashboard", **(extra_context or {})}
        if request.user.has_perm("tracking.view_usagerecord"):  # type: ignore[union-attr]
            days = dashboard_days(request)
            context |= {"data": usage.dashboard(days), "spend": usage.spend_dashboard(days),
                        "day_choices": DASHBOARD_DAYS}
        if request.user.has_perm("gateway.view_deployment"):  # type: ignore[union-attr]
            try:
                rows = board.board()["deployments"]
            except Exception:  # the home page must open when the quota store (Redis) is down; the board says why
                log.warning("quota board unavailable on the console's home page", exc_info=True)
                rows = []
            context["pressed"] = [r for r in rows if r["limits"] or r["parked"]][:8]
            context["disabled_providers"] = Provider.objects.filter(enabled=False).order_by("name")
        context["app_list"] = self.get_app_list(request)
        request.current_app = self.name
        return TemplateResponse(request, "admin/index.html", context)

    def quota_board(self, request: HttpRequest) -> HttpResponse:
        from gateway import board

        if not request.user.has_perm("gateway.view_deployment"):  # type: ignore[union-attr]
            raise PermissionDenied
        context = {
            **self.each_context(request),
            "title": "Quota board",
            "board": board.board(),
            "api_url": reverse("api-quota"),
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/quota_board.html", context)


def grouped(apps: list[dict[str, Any]], request: HttpRequest) -> list[dict[str, Any]]:
    """Django's per-app list regrouped by the operator's tasks (see GROUPS), with the console's own pages."""
    models = {(app["app_label"], m["object_name"].lower()): m for app in apps for m in app["models"]}
    placed: set[tuple[str, str]] = set()
    out = []
    for title, members in GROUPS:
        entries = [_page(name, url) for group, name, url, perm in PAGES
                   if group == title and request.user.has_perm(perm)]  # type: ignore[union-attr]
        for member in members:
            if member in models:
                entries.append(models[member])
                placed.add(member)
        if entries:
            slug = title.lower().replace(" ", "-")
            out.append({"name": title, "app_label": slug, "app_url": entries[0]["admin_url"],
                        "has_module_perms": True, "models": entries})
    for app in apps:
        rest = [m for m in app["models"] if (app["app_label"], m["object_name"].lower()) not in placed]
        if rest:
            out.append({**app, "models": rest})
    return out


def _page(name: str, url_name: str) -> dict[str, Any]:
    return {"name": name, "object_name": name.replace(" ", ""), "admin_url": reverse(url_name), "add_url": None,
            "view_only": True, "perms": {"view": True}}
