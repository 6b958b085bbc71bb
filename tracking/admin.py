"""Operators' view of usage: the records (filterable, CSV), the dashboard, and the body logging rules."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from tracking import export, recorder, usage
from tracking.models import BodyLoggingRule, ModelUsageRun, UsageRecord
from tracking.templatetags.spend import usd

CSV_FIELDS = [
    "request_id", "created", "ended", "endpoint", "key_id", "key_name", "user_id", "username", "model",
    "deployment_id", "provider", "upstream_model", "status", "ok", "error_code", "streamed",
    "client_disconnected", "attempts", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
    "total_tokens", "tokens_counted", "cost_usd", "list_cost_usd", "client_ip", "tags", "exported_at",
]
DASHBOARD_DAYS = (1, 7, 14, 30, 90)


def dashboard_days(request: HttpRequest) -> int:
    """The dashboard's period from ?days= (one of DASHBOARD_DAYS; 14 otherwise)."""
    try:
        days = int(request.GET.get("days", 14))
    except ValueError:
        return 14
    return days if days in DASHBOARD_DAYS else 14


def milliseconds(value: float | None) -> str:
    """"611 ms", "7.5 ms", "12,040 ms": whole milliseconds, a decimal only where it still means something."""
    if value is None:
        return "–"
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"


class EstimatedCountPaginator(Paginator):
    """Unfiltered lists on PostgreSQL use the planner's row estimate: COUNT(*) of millions of rows is slow."""

    @cached_property
    def count(self) -> int:
        query = getattr(self.object_list, "query", None)
        if connection.vendor == "postgresql" and query is not None and not query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [UsageRecord._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] > 10_000:
                return int(row[0])
        return super().count


class ModelFilter(admin.SimpleListFilter):
    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Models seen in the last 90 days: a DISTINCT over the indexed recent range, not the whole table.
        since = timezone.now() - dt.timedelta(days=90)
        names = UsageRecord.objects.since(since).order_by("model").values_list("model", flat=True).distinct()
        return [(name, name or "(none)") for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        value = self.value()
        return queryset if value is None else queryset.filter(model=value)


class KeyFilter(admin.SimpleListFilter):
    title = "API key"
    parameter_name = "key"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        since = timezone.now() - dt.timedelta(days=90)
        keys = (
            UsageRecord.objects.since(since).exclude(key_name="").order_by("key_name")
            .values_list("key_name", flat=True).distinct()
        )
        return [(name, name) for name in keys]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        value = self.value()
        return queryset if value is None else queryset.filter(key_name=value)


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("ok", "OK"), ("error", "Error"), ("4xx", "4xx"), ("5xx", "5xx"), ("left", "Client left")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        match self.value():
            case "ok":
                return queryset.filter(ok=True)
            case "error":
                return queryset.filter(ok=False)
            case "4xx":
                return queryset.filter(status__gte=400, status__lt=500)
            case "5xx":
                return queryset.filter(status__gte=500)
            case "left":
                return queryset.filter(client_disconnected=True)
        return queryset


def csv_response(queryset: QuerySet[UsageRecord], filename: str = "usage.csv") -> StreamingHttpResponse:
    # An async iterator: under ASGI a sync one would be read whole into memory before the first byte.
    response = StreamingHttpResponse(csv_lines(queryset), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class _Echo:
    def write(self, value: str) -> str:
        return value


async def csv_lines(queryset: QuerySet[UsageRecord], page_size: int = 2000) -> AsyncIterator[str]:
    """The rows newest first, read in keyset pages (id below the last one) off the event loop."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_FIELDS)
    before: int | None = None
    while True:
        rows = await sync_to_async(_csv_page)(queryset, before, page_size)
        if not rows:
            return
        yield "".join(writer.writerow([_cell(value) for value in row[1:]]) for row in rows)
        before = rows[-1][0]


def _csv_page(queryset: QuerySet[UsageRecord], before: int | None, size: int) -> list[tuple[Any, ...]]:
    page = queryset.order_by("-id")
    if before is not None:
        page = page.filter(id__lt=before)
    return list(page.values_list("id", *CSV_FIELDS)[:size])


def _cell(value: Any) -> Any:
    # Key names and tags come from users: a leading = + - @ would run as a formula in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    return value


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin[UsageRecord]):
    # Eight narrow columns fit 1280 px; user, request id, route and MLflow are on the record's page.
    list_display = ["when", "model", "key", "outcome", "latency", "tokens", "cost", "provider"]
    list_display_links = ["when"]
    list_filter = [ModelFilter, KeyFilter, StatusFilter, "streamed", ("created", admin.DateFieldListFilter)]
    search_fields = ["=request_id", "key_name", "username"]
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 100
    actions = ["export_csv"]
    change_list_template = "tracking/usagerecord_change_list.html"
    fieldsets = [
        (None, {"fields": ["request_id", "created", "ended", "endpoint", "model", "status", "ok", "error_code",
                           "error_message"]}),
        ("Who", {"fields": ["key_link", "user_link", "client_ip", "tags"]}),
        ("Route", {"fields": ["deployment_link", "provider", "upstream_model", "attempts", "streamed",
                              "client_disconnected"]}),
        ("Usage and timing", {"fields": ["prompt_tokens", "completion_tokens", "total_tokens", "tokens_counted",
                                         "latency", "ttft"]}),
        ("Cost", {"fields": ["cost_usd", "list_cost_usd"]}),
        ("Bodies", {"fields": ["request_body", "response_body", "bodies_truncated"], "classes": ["collapse"]}),
        ("MLflow", {"fields": ["exported_at", "mlflow_experiment", "trace_link"]}),
    ]
    readonly_fields = ["key_link", "user_link", "deployment_link", "latency", "ttft", "trace_link"]

    @admin.display(description="when", ordering="created")
    def when(self, obj: UsageRecord) -> str:
        return timezone.localtime(obj.created).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="key", ordering="key_name")
    def key(self, obj: UsageRecord) -> str:
        return format_html('{}<div class="quiet-small">{}</div>', obj.key_name or "(master key)", obj.username)

    @admin.display(description="status", ordering="status")
    def outcome(self, obj: UsageRecord) -> str:
        state = "state-on" if obj.ok else "state-off"
        notes = [n for n, on in (("stream", obj.streamed), ("client left", obj.client_disconnected)) if on]
        return format_html('<span class="{}">{}</span><div class="quiet-small">{}</div>', state, obj.status,
                           " · ".join(notes) or obj.error_code.replace("_", " "))

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: UsageRecord) -> str:
        return milliseconds(obj.latency_ms)

    @admin.display(description="time to first token", ordering="ttft_ms")
    def ttft(self, obj: UsageRecord) -> str:
        return milliseconds(obj.ttft_ms)

    @admin.display(description="tokens", ordering="total_tokens")
    def tokens(self, obj: UsageRecord) -> str:
        return "–" if obj.total_tokens is None else f"{obj.total_tokens:,}"

    @admin.display(description="API key")
    def key_link(self, obj: UsageRecord) -> str:
        if obj.key_id is None:
            return obj.key_name or "master key"
        url = reverse("admin:accounts_apikey_change", args=[obj.key_id])
        return format_html('<a href="{}">{}</a> (#{})', url, obj.key_name or "key", obj.key_id)

    @admin.display(description="user")
    def user_link(self, obj: UsageRecord) -> str:
        if obj.user_id is None:
            return obj.username or "–"
        url = reverse("admin:auth_user_change", args=[obj.user_id])
        return format_html('<a href="{}">{}</a>', url, obj.username or f"user #{obj.user_id}")

    @admin.display(description="deployment")
    def deployment_link(self, obj: UsageRecord) -> str:
        if obj.deployment_id is None:
            return "–"
        url = reverse("admin:gateway_deployment_change", args=[obj.deployment_id])
        return format_html('<a href="{}">{} → {}/{}</a>', url, obj.model, obj.provider, obj.upstream_model)

    @admin.display(description="MLflow trace")
    def trace_link(self, obj: UsageRecord) -> str:
        if not obj.mlflow_trace_id:
            return "not exported yet"
        url = reverse("admin:tracking_usagerecord_trace", args=[obj.pk])
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, obj.mlflow_trace_id)

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, obj: UsageRecord) -> str:
        """What the call cost; on a free tier, 0 and what it was worth at list price."""
        if obj.cost_usd == 0 and obj.list_cost_usd:
            return f"{usd(0)} (list {usd(obj.list_cost_usd)})"
        return usd(obj.cost_usd)

    # Records are facts: read-only (deletion stays possible, e.g. for a data-protection request).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Export selected records as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> StreamingHttpResponse:
        return csv_response(queryset)

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="tracking_dashboard"),
            path("export.csv", self.admin_site.admin_view(self.export_view), name="tracking_usagerecord_csv"),
            path("<int:pk>/trace/", self.admin_site.admin_view(self.trace_view), name="tracking_usagerecord_trace"),
        ]
        return own + super().get_urls()

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """CSV of the list as currently filtered and searched (same query string as the list)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist: ChangeList = self.get_changelist_instance(request)
        return csv_response(changelist.get_queryset(request))

    def trace_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """To the record's trace in the MLflow UI (its experiment id is looked up when asked, not stored)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        url = export.trace_url(get_object_or_404(UsageRecord, pk=pk))
        if not url:
            raise Http404("This record is not in MLflow yet.")
        return redirect(url)

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        days = dashboard_days(request)
        data = usage.dashboard(days)
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "opts": self.model._meta,
            "data": data,
            "spend": usage.spend_dashboard(days),
            "day_choices": DASHBOARD_DAYS,
        }
        return TemplateResponse(request, "tracking/dashboard.html", context)


@admin.register(BodyLoggingRule)
class BodyLoggingRuleAdmin(admin.ModelAdmin[BodyLoggingRule]):
    list_display = ["__str__", "model", "key_id", "enabled", "note", "created"]
    list_filter = ["enabled"]
    fields = ["model", "key_id", "enabled", "note"]

    def save_model(self, request: HttpRequest, obj: BodyLoggingRule, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        recorder.recorder.forget_rules()  # this process at once; other workers within a few seconds


@admin.register(ModelUsageRun)
class ModelUsageRunAdmin(admin.ModelAdmin[ModelUsageRun]):
    list_display = ["model", "last_day", "run_id"]
    readonly_fields = ["model", "run_id", "last_day", "claimed_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
