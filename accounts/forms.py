"""Forms of the self-service page and the admin's key form."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from django import forms
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, KeyPolicy

EXPIRY_CHOICES = [("7", "in 7 days"), ("30", "in 30 days"), ("90", "in 90 days"), ("365", "in a year"),
                  ("never", "never")]


def catalog_names() -> list[str]:
    """Every enabled public model name, sorted (from the gateway: see accounts.services)."""
    return services.gateway.enabled_models()


class CreateKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses this key, e.g. \"laptop\" or \"ci-bot\".")
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="90", label="Expires")
    models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to allow every model you may use.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.policy = KeyPolicy.for_user(user)
        models = cast(forms.MultipleChoiceField, self.fields["models"])
        models.choices = [(n, n) for n in self.policy.selectable_models(catalog_names())]

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the key a name.")
        if ApiKey.objects.owned_by(self.user).active().filter(name=name).exists():
            raise forms.ValidationError("You already have an active key with this name.")
        return name

    def expires(self) -> datetime | None:
        choice = self.cleaned_data["expires_in"]
        return None if choice == "never" else timezone.now() + timedelta(days=int(choice))

    def allowed_models(self) -> list[str]:
        return self.policy.clamp(self.cleaned_data.get("models") or [])


class ApiKeyAdminForm(forms.ModelForm):
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Tick none to allow every enabled model.",
    )

    class Meta:
        model = ApiKey
        fields = ["owner", "name", "expires", "allowed_models", "rpm", "rpd", "tokens_per_day", "tokens_per_month",
                  "tags"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Names the key already has stay listed even when that model is switched off, so none is lost.
        current = list(self.instance.allowed_models or []) if self.instance.pk else []
        names = sorted(set(catalog_names()) | set(current))
        cast(forms.MultipleChoiceField, self.fields["allowed_models"]).choices = [(n, n) for n in names]
        self.initial["allowed_models"] = current

    def clean_allowed_models(self) -> list[str]:
        return sorted(set(self.cleaned_data.get("allowed_models") or []))


class KeyPolicyForm(forms.ModelForm):
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Models this user may pick for their own keys. Tick none to allow every enabled model.",
    )

    class Meta:
        model = KeyPolicy
        fields = ["max_keys", "allowed_models", "rpm", "rpd", "tokens_per_day", "tokens_per_month"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        current = list(self.instance.allowed_models or []) if self.instance.pk else []
        names = sorted(set(catalog_names()) | set(current))
        cast(forms.MultipleChoiceField, self.fields["allowed_models"]).choices = [(n, n) for n in names]
        self.initial["allowed_models"] = current

    def clean_allowed_models(self) -> list[str]:
        return sorted(set(self.cleaned_data.get("allowed_models") or []))
