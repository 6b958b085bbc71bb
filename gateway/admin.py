"""Operators edit providers and deployments here; secrets are write-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from gateway import catalog, playground, pricing, quota
from gateway import upstreams as upstream
from gateway.models import ConfigSetting, Deployment, Provider, ProviderKind, QuotaPool
from gateway.upstreams import copilot


class ProviderForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. A literal key is stored encrypted; os.environ/NAME stores a reference. "
        "Leave empty to keep the current credential.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored credential.")

    class Meta:
        model = Provider
        fields = ["name", "kind", "api_base", "proxy_url", "reset_timezone", "enabled", "extra"]

    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.set_secret("")
        elif self.cleaned_data.get("api_key"):
            provider.set_secret(self.cleaned_data["api_key"].strip())
        if "enabled" in self.changed_data:
            provider.awaiting_credential = False  # the operator decided; load_catalog no longer enables it
        if commit:
            provider.save()
        return provider


class FirstRunBanner:
    """Changelists that show the banner of disabled providers (templates/admin/gateway/change_list.html)."""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        off = Provider.objects.filter(enabled=False).order_by("name")
        return super().changelist_view(request, {"disabled_providers": off, **(extra_context or {})})  # type: ignore[misc]


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    fields = ["public_name", "upstream_model", "rpm", "tpm", "rpd", "priority", "enabled"]
    show_change_link = True


@admin.register(Provider)
class ProviderAdmin(FirstRunBanner, admin.ModelAdmin[Provider]):
    form = ProviderForm
    # Narrow enough for 1280 px; the base URL and extra parameters are on the provider's page.
    list_display = ["name", "kind", "credential", "deployment_count", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "api_base"]
    inlines = [DeploymentInline]
    actions = ["enable", "disable"]
    readonly_fields = ["copilot_login"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        return super().get_queryset(request).annotate(n_deployments=Count("deployments"))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view  # staff only, CSRF-protected, never cached
        return [
            path("<int:provider_id>/copilot/", view(self.copilot_view), name="gateway_provider_copilot"),
            path("<int:provider_id>/copilot/poll/", view(self.copilot_poll), name="gateway_provider_copilot_poll"),
            *super().get_urls(),
        ]

    @admin.display(description="GitHub Copilot")
    def copilot_login(self, obj: Provider | None) -> str:
        if obj is None or obj.pk is None or obj.kind != ProviderKind.GITHUB_COPILOT:
            return "—"
        url = reverse("admin:gateway_provider_copilot", args=[obj.pk])
        return format_html('<a href="{}">Connect GitHub Copilot</a> (login, seat and quota)', url)

    def _copilot_provider(self, request: HttpRequest, provider_id: int) -> Provider:
        provider = get_object_or_404(Provider, pk=provider_id, kind=ProviderKind.GITHUB_COPILOT)
        if not self.has_change_permission(request, provider):
            raise PermissionDenied
        return provider

    def copilot_view(self, request: HttpRequest, provider_id: int) -> HttpResponse:
        provider = self._copilot_provider(request, provider_id)
        if request.method == "POST":
            ok, message = copilot.handle_action(provider, request.POST.get("action", ""))
            self.message_user(request, message, messages.SUCCESS if ok else messages.ERROR)
            return redirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            **copilot.page_context(provider),
            "opts": self.opts,
            "title": f"Connect GitHub Copilot: {provider.name}",
            "poll_url": reverse("admin:gateway_provider_copilot_poll", args=[provider.pk]),
        }
        return TemplateResponse(request, "admin/gateway/copilot_connect.html", context)

    def copilot_poll(self, request: HttpRequest, provider_id: int) -> JsonResponse:
        """The page's JavaScript asks here until GitHub says the user entered the code."""
        provider = self._copilot_provider(request, provider_id)
        if request.method != "POST":
            return JsonResponse({"status": "error", "message": "Use POST."}, status=405)
        try:
            return JsonResponse(copilot.poll_connect(provider))
        except copilot.GitHubError as e:
            return JsonResponse({"status": "error", "message": f"GitHub: {e}"}, status=502)

    @admin.display(description="credential")
    def credential(self, obj: Provider) -> str:
        return obj.credential_display()

    @admin.display(description="models", ordering="n_deployments")
    def deployment_count(self, obj: Any) -> int:
        return int(obj.n_deployments)

    @admin.action(description="Enable selected providers")
    def enable(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            provider.set_enabled_by_operator(True)

    @admin.action(description="Disable selected providers")
    def disable(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            provider.set_enabled_by_operator(False)


@admin.register(Deployment)
class DeploymentAdmin(FirstRunBanner, admin.ModelAdmin[Deployment]):
    # Narrow enough for 1280 px (the rest is on the deployment's page; the live detail on the quota board).
    # Prices and cost columns go after "used now / today" (issue 19's spend work).
    list_display = ["public_name", "served_by", "usage_today", "priority", "serving"]
    list_filter = ["enabled", "provider__kind", "provider"]
    list_select_related = ["provider", "pool"]
    search_fields = ["public_name", "upstream_model"]
    actions = ["enable", "disable", "test_call"]
    fieldsets = [
        (None, {"fields": ["public_name", "provider", "upstream_model", "priority", "enabled"]}),
        ("Limits", {"fields": ["rpm", "tpm", "rpd", "tpd", "pool", "max_wait_seconds"]}),
        ("Timeouts and retries", {"fields": ["timeout", "stream_timeout", "num_retries"]}),
        ("Price", {"fields": ["billing", "input_price_per_mtok", "output_price_per_mtok", "cost_map_model",
                              "price_in_effect"]}),
        ("Advanced", {"classes": ["collapse"], "fields": ["litellm_params", "model_info", "extra"]}),
    ]
    readonly_fields = ["price_in_effect"]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view  # staff only, CSRF-protected, never cached
        return [
            path("playground/", view(self.playground_view), name="gateway_playground"),
            path("playground/chat/", view(self.playground_chat), name="gateway_playground_chat"),
            *super().get_urls(),
        ]

    def _may_play(self, request: HttpRequest) -> None:
        # A playground call spends the providers' quota, as the Test action does: for those who may change models.
        if not self.has_change_permission(request):
            raise PermissionDenied

    def playground_view(self, request: HttpRequest) -> HttpResponse:
        self._may_play(request)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Playground",
            "models": playground.model_choices(),
            "chat_url": reverse("admin:gateway_playground_chat"),
        }
        return TemplateResponse(request, "admin/gateway/playground.html", context)

    def playground_chat(self, request: HttpRequest) -> HttpResponseBase:
        """The page's JavaScript posts here; the answer streams back from the portal's own /v1."""
        self._may_play(request)
        if request.method != "POST":
            return JsonResponse({"error": {"message": "Use POST."}}, status=405)
        try:
            chat = playground.parse(request.body, {m["name"] for m in playground.model_choices()})
        except playground.PlaygroundError as e:
            return JsonResponse({"error": {"message": str(e)}}, status=400)
        stream = playground.relay(chat, playground.api_base(request), request.user.get_username())
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response

    @admin.display(description="price in effect")
    def price_in_effect(self, obj: Deployment | None) -> str:
        """How calls are charged with the saved settings (free or not; which price, from where)."""
        if obj is None or obj.pk is None:
            return "— (save first)"
        return pricing.for_deployment(obj).describe()

    @admin.display(description="served by", ordering="provider__name")
    def served_by(self, obj: Deployment) -> str:
        return format_html('{}<div class="quiet-small">{}</div>', obj.provider.name, obj.upstream_model)

    @admin.display(description="enabled", ordering="enabled")
    def serving(self, obj: Deployment) -> str:
        """On only when the deployment AND its provider are: a deployment of a disabled provider serves nothing."""
        if not obj.enabled:
            return format_html('<span class="state-off">off</span>')
        if not obj.provider.enabled:
            return format_html('<span class="state-off" title="{}">off</span><div class="quiet-small">provider {} is '
                               'disabled</div>', obj.provider.how_to_enable(), obj.provider.name)
        return format_html('<span class="state-on">on</span>')

    @admin.display(description="used now / today")
    def usage_today(self, obj: Deployment) -> str:
        return quota_summary(catalog.deployment_limits(obj))

    @admin.action(description="Enable selected models")
    def enable(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset:
            deployment.enabled = True
            deployment.save(update_fields=["enabled", "updated"])

    @admin.action(description="Disable selected models")
    def disable(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset:
            deployment.enabled = False
            deployment.save(update_fields=["enabled", "updated"])

    # Spends a request of the provider's quota: for those who may change models, not mere viewers.
    @admin.action(description="Test: send a one-token request", permissions=["change"])
    def test_call(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        deployments = list(queryset.select_related("provider", "pool"))
        results = upstream.probe_all([catalog.route_for(d) for d in deployments])
        for deployment, result in zip(deployments, results, strict=True):
            if result.ok:
                self.message_user(request, f"{deployment}: answered in {result.latency_ms:.0f} ms.", messages.SUCCESS)
            else:
                text = f"{deployment}: failed after {result.latency_ms:.0f} ms: {result.message}"
                self.message_user(request, text, messages.ERROR)


def quota_summary(limits: Any) -> str:
    return quota.summary(list(limits))


@admin.register(QuotaPool)
class QuotaPoolAdmin(admin.ModelAdmin[QuotaPool]):
    list_display = ["name", "rpm", "tpm", "rpd", "tpd", "reset_timezone", "usage_today"]

    @admin.display(description="used now / today")
    def usage_today(self, obj: QuotaPool) -> str:
        return quota_summary(
            quota.Limit("pool", obj.name, "", n, getattr(obj, n), obj.reset_timezone)
            for n in ("rpm", "tpm", "rpd", "tpd")
            if getattr(obj, n) is not None
        )


@admin.register(ConfigSetting)
class ConfigSettingAdmin(admin.ModelAdmin[ConfigSetting]):
    list_display = ["key", "updated"]
