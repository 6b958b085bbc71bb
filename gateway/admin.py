"""Operators edit providers and deployments here; secrets are write-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from gateway.models import ConfigSetting, Deployment, Provider


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
        fields = ["name", "kind", "api_base", "enabled", "extra"]

    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.set_secret("")
        elif self.cleaned_data.get("api_key"):
            provider.set_secret(self.cleaned_data["api_key"].strip())
        if commit:
            provider.save()
        return provider


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    fields = ["public_name", "upstream_model", "rpm", "tpm", "rpd", "priority", "enabled"]
    show_change_link = True


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin[Provider]):
    form = ProviderForm
    list_display = ["name", "kind", "api_base", "credential", "deployment_count", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "api_base"]
    inlines = [DeploymentInline]
    actions = ["enable", "disable"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        return super().get_queryset(request).annotate(n_deployments=Count("deployments"))

    @admin.display(description="credential")
    def credential(self, obj: Provider) -> str:
        return obj.credential_display()

    @admin.display(description="models", ordering="n_deployments")
    def deployment_count(self, obj: Any) -> int:
        return int(obj.n_deployments)

    @admin.action(description="Enable selected providers")
    def enable(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            provider.enabled = True
            provider.save(update_fields=["enabled", "updated"])

    @admin.action(description="Disable selected providers")
    def disable(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            provider.enabled = False
            provider.save(update_fields=["enabled", "updated"])


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin[Deployment]):
    list_display = ["public_name", "provider", "upstream_model", "rpm", "tpm", "rpd", "priority", "enabled"]
    list_filter = ["enabled", "provider__kind", "provider"]
    list_select_related = ["provider"]
    search_fields = ["public_name", "upstream_model"]
    actions = ["enable", "disable"]
    fieldsets = [
        (None, {"fields": ["public_name", "provider", "upstream_model", "priority", "enabled"]}),
        ("Limits", {"fields": ["rpm", "tpm", "rpd"]}),
        ("Advanced", {"classes": ["collapse"], "fields": ["litellm_params", "model_info", "extra"]}),
    ]

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


@admin.register(ConfigSetting)
class ConfigSettingAdmin(admin.ModelAdmin[ConfigSetting]):
    list_display = ["key", "updated"]
