"""The catalog: providers (where requests go) and deployments (what clients ask for)."""

from __future__ import annotations

import os
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from gateway import crypto

ENV_PREFIX = "os.environ/"


def validate_api_base(value: str) -> None:
    if value.startswith(ENV_PREFIX) or value.startswith(("http://", "https://")):
        return
    raise ValidationError("Enter an http(s) URL or os.environ/NAME.")


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, Ollama, …)"
    OPENROUTER = "openrouter", "OpenRouter"
    GEMINI = "gemini", "Google Gemini"
    GITHUB_MODELS = "github_models", "GitHub Models"
    GITHUB_COPILOT = "github_copilot", "GitHub Copilot"
    LM_STUDIO = "lm_studio", "LM Studio"
    ANTHROPIC = "anthropic", "Anthropic"
    LITELLM = "litellm", "Other (LiteLLM model string)"


# The LiteLLM provider prefix each kind maps to ("" = the model string carries it).
LITELLM_PREFIX: dict[str, str] = {
    ProviderKind.OPENAI: "openai",
    ProviderKind.OPENAI_COMPATIBLE: "openai",
    ProviderKind.OPENROUTER: "openrouter",
    ProviderKind.GEMINI: "gemini",
    ProviderKind.GITHUB_MODELS: "github",
    ProviderKind.GITHUB_COPILOT: "github_copilot",
    ProviderKind.LM_STUDIO: "lm_studio",
    ProviderKind.ANTHROPIC: "anthropic",
    ProviderKind.LITELLM: "",
}


class Provider(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    api_base = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_api_base],
        help_text="Leave empty for the provider's default. A URL, or os.environ/NAME to read it from the environment.",
    )
    credential_ref = models.CharField(
        max_length=200,
        blank=True,
        help_text="Read the key from the environment: os.environ/NAME (LiteLLM's convention).",
    )
    credential_encrypted = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    extra = models.JSONField(default=dict, blank=True, help_text="Extra LiteLLM parameters for every call.")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        from gateway import catalog

        catalog.invalidate()

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        result = super().delete(*args, **kwargs)
        from gateway import catalog

        catalog.invalidate()
        return result

    def set_secret(self, plaintext: str) -> None:
        """Store a literal key encrypted; an os.environ/ reference is kept as a reference."""
        if plaintext.startswith(ENV_PREFIX):
            self.credential_ref, self.credential_encrypted = plaintext, ""
        elif plaintext:
            self.credential_ref, self.credential_encrypted = "", crypto.encrypt(plaintext)
        else:
            self.credential_ref, self.credential_encrypted = "", ""

    def api_key(self) -> str:
        """The plaintext key for upstream calls ("" when none is configured)."""
        if self.credential_ref.startswith(ENV_PREFIX):
            return os.environ.get(self.credential_ref[len(ENV_PREFIX) :], "")
        if self.credential_encrypted:
            return crypto.decrypt(self.credential_encrypted)
        return ""

    def credential_display(self) -> str:
        """What the admin may show: the reference, or that a secret is stored — never the secret."""
        if self.credential_ref:
            state = "set" if self.api_key() else "NOT SET"
            return f"{self.credential_ref} ({state})"
        if self.credential_encrypted:
            return "stored encrypted"
        return "none"

    def resolved_api_base(self) -> str:
        """The base URL to call: an os.environ/ reference is read now, so .env changes apply on restart."""
        if self.api_base.startswith(ENV_PREFIX):
            return os.environ.get(self.api_base[len(ENV_PREFIX) :], "")
        return self.api_base

    @property
    def litellm_prefix(self) -> str:
        return LITELLM_PREFIX.get(self.kind, "")


class Deployment(models.Model):
    """One way to serve a public model name; several may share a name (routing picks)."""

    public_name = models.CharField(max_length=200, db_index=True, help_text="The model name clients send.")
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="deployments")
    upstream_model = models.CharField(max_length=300, help_text="The provider's model id.")
    litellm_params = models.JSONField(default=dict, blank=True, help_text="Extra LiteLLM parameters.")
    model_info = models.JSONField(default=dict, blank=True)
    extra = models.JSONField(default=dict, blank=True, help_text="Other keys from an imported config, kept.")
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per minute")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per minute")
    rpd = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per day")
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(default=0, help_text="Lower is tried first.")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["public_name", "priority", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["public_name", "provider", "upstream_model"], name="unique_deployment_per_provider"
            )
        ]

    def __str__(self) -> str:
        return f"{self.public_name} → {self.provider.name}/{self.upstream_model}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        from gateway import catalog

        catalog.invalidate()

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        result = super().delete(*args, **kwargs)
        from gateway import catalog

        catalog.invalidate()
        return result

    def litellm_model(self) -> str:
        """The model string LiteLLM routes on, e.g. gemini/gemini-2.5-flash."""
        prefix = self.provider.litellm_prefix
        return f"{prefix}/{self.upstream_model}" if prefix else self.upstream_model


class ConfigSetting(models.Model):
    """Top-level sections of an imported LiteLLM config (router_settings, …), kept verbatim."""

    key = models.CharField(max_length=100, unique=True)
    value = models.JSONField(default=dict, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key
