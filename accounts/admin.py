"""The operators' view of users and their keys. The secret is never shown; a new key's plaintext once."""

from __future__ import annotations

import weakref
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, Q, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts import services, usage
from accounts.forms import ApiKeyAdminForm, KeyPolicyForm
from accounts.models import ApiKey, ApiKeyModelLimit, KeyPolicy
from tracking import usage as tracking_usage
from tracking.templatetags.spend import usd

User = get_user_model()


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked"), ("expired", "expired")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "active":
            return queryset.active()
        if self.value() == "revoked":
            return queryset.revoked()
        if self.value() == "expired":
            return queryset.expired()
        return queryset


class ModelLimitInline(admin.TabularInline):
    model = ApiKeyModelLimit
    extra = 0
    fields = ["public_model", "rpm", "rpd", "tokens_per_day", "tokens_per_month"]
    verbose_name_plural = "per-model limits (blank fields inherit the key's)"


STATUS_COLOURS = {"active": "#1a7f37", "revoked": "#b42318", "expired": "#8a6d00"}


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    form = ApiKeyAdminForm
    # Narrow enough for 1280 px: the prefix under the name, the expiry under the status. The spend column
    # follows "today".
    list_display = ["name_and_prefix", "owner", "status_and_expiry", "usage_today", "spend_30_days", "last_used",
                    "models"]
    list_filter = [StatusFilter, "created", "expires", "last_used"]
    list_select_related = ["owner"]
    search_fields = ["name", "prefix", "owner__username", "owner__email"]
    autocomplete_fields = ["owner"]
    readonly_fields = ["key_prefix", "status_badge", "created", "last_used", "revoked_at", "spend"]
    inlines = [ModelLimitInline]
    actions = ["revoke", "extend_30_days"]
    # request -> plaintext of the key it created, from save_model to response_add (gone with the request).
    _new_tokens: weakref.WeakKeyDictionary[HttpRequest, str] = weakref.WeakKeyDictionary()
    date_hierarchy = "created"
    fieldsets = [
        (None, {"fields": ["owner", "name", "key_prefix", "status_badge", "expires", "allowed_models"]}),
        ("Limits", {"fields": ["rpm", "rpd", "tokens_per_day", "tokens_per_month", "max_budget", "budget_duration"]}),
        ("Metadata", {"fields": ["tags", "created", "last_used", "revoked_at"]}),
        ("Spend", {"fields": ["spend"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        # Today's use and 30 days' spend for the whole page in the list's one query (subqueries, no N+1).
        return super().get_queryset(request).annotate(
            **usage.today_annotations(), spent_30_days=tracking_usage.cost_subquery("key_id")
        )

    @admin.display(description="spent (30 days)", ordering="spent_30_days")
    def spend_30_days(self, obj: ApiKey) -> str:
        return usd(getattr(obj, "spent_30_days", None) or 0)

    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:  # nothing to show read-only before the key exists
            return [
                (None, {"fields": ["owner", "name", "expires", "allowed_models"]}),
                ("Limits", {"fields": ["rpm", "rpd", "tokens_per_day", "tokens_per_month", "max_budget",
                                       "budget_duration"]}),
                ("Metadata", {"fields": ["tags"]}),
            ]
        return self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        # A key stays with the user it was issued to.
        return [*self.readonly_fields, "owner"] if obj is not None else self.readonly_fields

    @admin.display(description="today")
    def usage_today(self, obj: Any) -> str:
        """Requests and tokens since midnight UTC (from the usage records, as on the key's page), and the key's
        own limits against its live counters when it has any (per-model limits are on the key's page)."""
        requests, tokens = obj.requests_today or 0, obj.tokens_today or 0
        limits = services.gateway.key_summary(obj.pk, obj.key_limits())
        limits = "" if limits == "—" else limits  # a key without limits of its own
        return format_html(
            "{} req · {} tok{}", f"{requests:,}", f"{tokens:,}",
            format_html('<div class="quiet-small">{}</div>', limits) if limits else "",
        )

    @admin.display(description="name", ordering="name")
    def name_and_prefix(self, obj: ApiKey) -> str:
        return format_html('{}<div class="quiet-small"><code>{}</code></div>', obj.name, self.key_prefix(obj))

    @admin.display(description="status", ordering="expires")
    def status_and_expiry(self, obj: ApiKey) -> str:
        expires = f"expires {obj.expires:%Y-%m-%d}" if obj.expires else "never expires"
        return format_html('{}<div class="quiet-small">{}</div>', self.status_badge(obj), expires)

    @admin.display(description="spend (USD)")
    def spend(self, obj: ApiKey) -> SafeString:
        return render_to_string("tracking/_spend_periods.html", usage.key_spend(obj.pk))

    @admin.display(description="key", ordering="prefix")
    def key_prefix(self, obj: ApiKey) -> str:
        return obj.display_prefix if obj.prefix else "—"

    @admin.display(description="status")
    def status_badge(self, obj: ApiKey) -> str:
        state = obj.status
        return format_html('<strong style="color:{}">{}</strong>', STATUS_COLOURS[state], state)

    @admin.display(description="models")
    def models(self, obj: ApiKey) -> str:
        if not obj.allowed_models:
            return "all"
        shown = ", ".join(obj.allowed_models[:3])
        return shown + (f" +{len(obj.allowed_models) - 3} more" if len(obj.allowed_models) > 3 else "")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token = obj.generate()
        super().save_model(request, obj, form, change)
        obj.log_created(request.user)
        # For response_add, in this request's memory only: a message would carry it in the `messages` cookie.
        self._new_tokens[request] = token

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        """The new key's plaintext, once, as the answer to the POST that created it (nowhere else)."""
        token = self._new_tokens.pop(request, None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "API key created",
            "key": obj, "token": token,
        }
        response = TemplateResponse(request, "admin/accounts/apikey/created.html", context, status=201)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.revoke(actor=request.user)  # type: ignore[attr-defined]
        self.message_user(request, f"{count} key(s) revoked.")

    @admin.action(description="Extend expiry by 30 days")
    def extend_30_days(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        extended = sum(key.extend(30, actor=request.user) for key in queryset)
        skipped = queryset.count() - extended
        note = f" {skipped} skipped (revoked, or never expire)." if skipped else ""
        self.message_user(request, f"{extended} key(s) extended by 30 days.{note}")


class KeyPolicyInline(admin.StackedInline):
    model = KeyPolicy
    form = KeyPolicyForm
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name = verbose_name_plural = "API key policy and budget"
    readonly_fields = ["budget_left"]
    fieldsets = [
        (None, {"fields": ["max_keys", "allowed_models"]}),
        ("Limits given to keys this user creates", {"fields": ["rpm", "rpd", "tokens_per_day", "tokens_per_month"]}),
        ("The user's budget, shared by all their keys", {"fields": ["max_budget", "budget_duration", "budget_left"]}),
    ]

    @admin.display(description="spent / left")
    def budget_left(self, obj: KeyPolicy) -> str:
        """The user's budget against the live counter all their keys count on."""
        budget = services.gateway.user_budget(obj.user_id, obj.user_budget()) if obj.pk else None
        if budget is None:
            return "—"
        every = "in total" if budget["period"] == "total" else f"per {budget['period']}"
        resets = f" (resets {budget['resets_at']:%Y-%m-%d %H:%M} UTC)" if budget["resets_at"] else ""
        spent, left, limit = (f"${budget[name]:,.2f}" for name in ("spend", "remaining", "limit"))
        return f"{spent} spent, {left} left of {limit} {every}{resets}"


admin.site.unregister(User)


@admin.register(User)
class PortalUserAdmin(UserAdmin):
    inlines = [KeyPolicyInline]
    list_display = ["username", "email", "is_staff", "is_active", "active_keys", "spend_30_days", "last_login"]
    readonly_fields = ["spend"]

    @admin.display(description="spent (30 days)", ordering="spent_30_days")
    def spend_30_days(self, obj: Any) -> str:
        return usd(getattr(obj, "spent_30_days", None) or 0)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is None else [*fieldsets, ("Spend", {"fields": ["spend"]})]

    @admin.display(description="spend (USD), all keys")
    def spend(self, obj: Any) -> SafeString:
        return render_to_string("tracking/_spend_periods.html", usage.user_spend(obj.pk))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        now = timezone.now()
        active = Q(api_keys__revoked_at__isnull=True) & (Q(api_keys__expires__isnull=True) |
                                                         Q(api_keys__expires__gt=now))
        return super().get_queryset(request).annotate(
            n_active_keys=Count("api_keys", filter=active), spent_30_days=tracking_usage.cost_subquery("user_id")
        )

    @admin.display(description="active keys", ordering="n_active_keys")
    def active_keys(self, obj: Any) -> int:
        return int(obj.n_active_keys)

