"""The catalog: providers (where requests go), deployments (what clients ask for) and the settings of an
imported LiteLLM config."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from gateway import crypto
from gateway.models.catalog_base import CatalogModel
from gateway.models.quota import QuotaPool
from gateway.models.validators import ENV_PREFIX, validate_api_base, validate_proxy_url, validate_timezone


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


class Provider(CatalogModel):
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
    # Set by load_catalog when it created the provider disabled for want of a credential; the next
    # load_catalog that finds the credential enables it. Switching `enabled` by hand clears it.
    awaiting_credential = models.BooleanField(
        default=False,
        editable=False,
        help_text="Disabled by load_catalog until its credential is set; load_catalog then enables it.",
    )
    extra = models.JSONField(default=dict, blank=True, help_text="Extra LiteLLM parameters for every call.")
    proxy_url = models.CharField(
        "proxy URL",
        max_length=500,
        blank=True,
        validators=[validate_proxy_url],
        help_text="Send this provider's calls through this HTTP proxy (e.g. http://proxy.internal:3128), whatever "
        "HTTPS_PROXY, HTTP_PROXY and NO_PROXY say. Leave empty to follow those environment variables.",
    )
    reset_timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text="Daily quotas reset at midnight in this time zone (Gemini: America/Los_Angeles).",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self._state.adding and self.reset_timezone == "UTC":
            # A new provider counts days the way its kind does (Gemini: Pacific time) unless told otherwise.
            from gateway.upstreams.providers import default_reset_timezone

            self.reset_timezone = default_reset_timezone(self.kind)
        super().save(*args, **kwargs)

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

    def waiting_for(self) -> str:
        """What this provider still needs before it can be called, in the operator's words ("" = nothing): the
        environment variable to set, or the admin field or page to fill in. `make run` prints it."""
        from gateway.upstreams import providers

        if providers.credential_ready(self):
            return ""
        if self.kind == ProviderKind.GITHUB_COPILOT:
            return f"a GitHub login: admin → Providers → {self.name} → Connect GitHub Copilot"
        if self.kind in (ProviderKind.LM_STUDIO, ProviderKind.OPENAI_COMPATIBLE):
            return self._variable_or_field(self.api_base, providers.kind_of(self.kind).base_env, "API base")
        return self._variable_or_field(self.credential_ref, providers.kind_of(self.kind).key_env, "credential")

    def _variable_or_field(self, value: str, kind_variable: str, field: str) -> str:
        if value.startswith(ENV_PREFIX):
            return value[len(ENV_PREFIX) :]
        if not value and kind_variable:
            return f"{kind_variable} (or the {field} field in the admin)"
        return f"the {field} field in the admin (Providers → {self.name})"

    def set_enabled_by_operator(self, enabled: bool) -> None:
        """An operator's choice: from now on load_catalog leaves `enabled` alone."""
        self.enabled, self.awaiting_credential = enabled, False
        self.save(update_fields=["enabled", "awaiting_credential", "updated"])

    def how_to_enable(self) -> str:
        """First-run help for a disabled provider: the variable or admin field that brings it into rotation."""
        if self.kind == ProviderKind.GITHUB_COPILOT:
            return "Connect GitHub Copilot on the provider's page (a GitHub device login), then tick Enabled."
        missing = [ref[len(ENV_PREFIX):] for ref in (self.api_base, self.credential_ref)
                   if ref.startswith(ENV_PREFIX) and not os.environ.get(ref[len(ENV_PREFIX):])]
        if missing:
            names = " and ".join(missing)
            return (f"Set {names} in .env and restart (it is enabled at start when set), "
                    "or paste a key into the provider's API key field and tick Enabled.")
        if not self.credential_ref and not self.credential_encrypted:
            return "Paste a key into the provider's API key field and tick Enabled."
        return "Switched off by an operator: tick Enabled on the provider's page, or use the Enable action."

    def enable_if_awaiting_credential(self) -> bool:
        """Enable a provider load_catalog disabled for want of a credential (call when the credential arrives,
        e.g. after the Copilot login). A provider an operator disabled stays disabled."""
        if self.enabled or not self.awaiting_credential:
            return False
        self.enabled, self.awaiting_credential = True, False
        self.save(update_fields=["enabled", "awaiting_credential", "updated"])
        return True


class Billing(models.TextChoices):
    """How a deployment's calls are charged (gateway.pricing turns this into a price)."""

    AUTO = "auto", "Automatic: free tier for LM Studio, GitHub Models, Copilot, Gemini and OpenRouter :free models"
    FREE = "free", "Free tier: costs 0; the list price is shown as the value of the use"
    PAID = "paid", "Paid: the price below, else LiteLLM's cost map"


class Deployment(CatalogModel):
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
    tpd = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per day")
    pool = models.ForeignKey(
        QuotaPool, null=True, blank=True, on_delete=models.SET_NULL, related_name="deployments",
        help_text="A quota shared with other deployments (e.g. OpenRouter's account-wide free allowance).",
    )
    max_wait_seconds = models.FloatField(
        default=0,
        help_text="When every deployment of this model is rate-limited, hold a request up to this long for a "
        "slot instead of answering 429.",
    )
    # LiteLLM's per-deployment litellm_params of the same names; empty = router_settings / litellm_settings of the
    # imported config, else UPSTREAM_TIMEOUT (timeouts) and no retry.
    timeout = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)], verbose_name="timeout (seconds)",
        help_text="The whole answer must arrive within this; a stream must start within it unless a stream "
        "timeout is set. Past it the next deployment is tried (504 when none is left). Empty: the config's "
        "router_settings.timeout or litellm_settings.request_timeout, else UPSTREAM_TIMEOUT (also the ceiling).",
    )
    stream_timeout = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)], verbose_name="stream timeout (seconds)",
        help_text="A stream's first chunk must arrive within this (later silences: STREAM_IDLE_TIMEOUT).",
    )
    num_retries = models.PositiveSmallIntegerField(
        null=True, blank=True, verbose_name="retries",
        help_text="Calls of this deployment again after a failure (5xx, timeout, connection), before the next "
        "deployment; never after a 429 or a 4xx. Empty: the config's router_settings.num_retries or "
        "litellm_settings.num_retries, else 0.",
    )
    billing = models.CharField(max_length=8, choices=Billing.choices, default=Billing.AUTO)
    input_price_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(Decimal(0))],
        verbose_name="input price (USD / 1M tokens)",
        help_text="Your price; empty = LiteLLM's cost map. On a free tier it is the list price of the use.",
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(Decimal(0))],
        verbose_name="output price (USD / 1M tokens)",
    )
    cost_map_model = models.CharField(
        max_length=300, blank=True, verbose_name="cost map entry",
        help_text="The LiteLLM cost-map name to price this by, when the automatic match is wrong or missing "
        "(e.g. gpt-4.1, gemini/gemini-2.5-flash, deepinfra/google/gemma-3-12b-it).",
    )
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

    def litellm_model(self) -> str:
        """The model string LiteLLM routes on, e.g. gemini/gemini-2.5-flash."""
        prefix = self.provider.litellm_prefix
        return f"{prefix}/{self.upstream_model}" if prefix else self.upstream_model


    def clean(self) -> None:
        if (self.input_price_per_mtok is None) != (self.output_price_per_mtok is None):
            raise ValidationError("Set both prices (input and output), or neither to use LiteLLM's cost map.")


class ConfigSetting(CatalogModel):
    """Top-level sections of an imported LiteLLM config (router_settings, …), kept verbatim."""

    key = models.CharField(max_length=100, unique=True)
    value = models.JSONField(default=dict, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key
