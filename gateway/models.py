"""The catalog: providers (where requests go) and deployments (what clients ask for)."""

from __future__ import annotations

import os
import zoneinfo
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.utils import timezone

from gateway import clock, crypto

ENV_PREFIX = "os.environ/"


def validate_api_base(value: str) -> None:
    if value.startswith(ENV_PREFIX) or value.startswith(("http://", "https://")):
        return
    raise ValidationError("Enter an http(s) URL or os.environ/NAME.")


def validate_proxy_url(value: str) -> None:
    if value.startswith(("http://", "https://")) and "://" not in value.split("://", 1)[1]:
        return
    raise ValidationError("Enter the proxy's URL, e.g. http://proxy.internal:3128.")


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"Unknown time zone {value!r}; use an IANA name like America/Los_Angeles.") from None


# The catalog's version in the shared cache: each worker compares it with its snapshot's (gateway.catalog).
CATALOG_VERSION_KEY = "gateway:catalog-version"


class LocalChanges:
    """Catalog changes made by this process: its own snapshot is dropped at the next request, not a refresh
    interval later."""

    count = 0


def bump_catalog_version() -> None:
    try:
        cache.incr(CATALOG_VERSION_KEY)
    except ValueError:
        cache.set(CATALOG_VERSION_KEY, 1, timeout=None)
    LocalChanges.count += 1


def catalog_changed() -> None:
    """Every worker must reload the catalog: at once (this process, and a version bump the others read within
    CATALOG_REFRESH_SECONDS), and again once the current transaction commits, since a worker that reloads
    before the commit reads the old rows and would keep them. Outside a transaction both happen now."""
    bump_catalog_version()
    transaction.on_commit(bump_catalog_version)


class CatalogQuerySet(models.QuerySet[Any]):
    """Writes that skip save()/delete() (the admin's "delete selected", a management command's update())
    reach the workers all the same."""

    def update(self, **kwargs: Any) -> int:
        count = super().update(**kwargs)
        catalog_changed()
        return count

    def delete(self) -> tuple[int, dict[str, int]]:
        result = super().delete()
        catalog_changed()
        return result

    def bulk_create(self, *args: Any, **kwargs: Any) -> list[Any]:
        created = super().bulk_create(*args, **kwargs)
        catalog_changed()
        return created

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        count = super().bulk_update(*args, **kwargs)
        catalog_changed()
        return count


class CatalogModel(models.Model):
    """A row the catalog snapshot is built from: every way it changes tells the workers (catalog_changed)."""

    objects = CatalogQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        catalog_changed()

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        result = super().delete(*args, **kwargs)
        catalog_changed()
        return result


class QuotaPool(CatalogModel):
    """A quota shared by several deployments, counted the way the provider counts it.

    OpenRouter's free-model allowance is account-wide: one pool for all its
    free models. Gemini counts per project per model: no pool needed.
    """

    name = models.SlugField(max_length=100, unique=True)
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per minute")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per minute")
    rpd = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per day")
    tpd = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per day")
    reset_timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

class DailyCounter(models.Model):
    """The durable copy of a daily quota counter, so a restart never hands out a fresh day.

    Redis (or memory) is the fast path; increments are flushed here in batches
    and read back when the fast path has no value for the day.
    """

    key = models.CharField(max_length=200)
    day = models.DateField()
    value = models.BigIntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "day"], name="unique_daily_counter")]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.key} {self.day}: {self.value}"


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


def _clock_now() -> datetime:
    """Now by the portal's clock, which tests move instead of sleeping through GitHub's poll interval."""
    return datetime.fromtimestamp(clock.now(), tz=UTC)


class CopilotAuth(models.Model):
    """The GitHub Copilot login of a github_copilot provider (gateway/upstreams/copilot.py does the talking).

    Holds the GitHub OAuth token (long-lived, encrypted), the Copilot token exchanged for it (short-lived,
    encrypted) and a device flow in progress. It lives in the database so the login survives restarts
    and any worker or host can answer the admin page's polls and the /v1 calls.
    """

    provider = models.OneToOneField(Provider, on_delete=models.CASCADE, related_name="copilot_auth")
    github_token_encrypted = models.TextField(blank=True, editable=False)
    source = models.CharField(max_length=20, blank=True, help_text="device_flow, token_dir (imported) or disconnected.")
    connected_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, help_text="GitHub rejected the token: reconnect.")
    device_code_encrypted = models.TextField(blank=True, editable=False)
    user_code = models.CharField(max_length=32, blank=True)
    verification_uri = models.CharField(max_length=300, blank=True)
    flow_expires_at = models.DateTimeField(null=True, blank=True)
    poll_interval = models.PositiveIntegerField(default=5)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    copilot_token_encrypted = models.TextField(blank=True, editable=False)
    copilot_expires_at = models.DateTimeField(null=True, blank=True)
    copilot_api_base = models.CharField(max_length=300, blank=True)
    account = models.JSONField(default=dict, blank=True, help_text="Seat and quota, as GitHub last reported.")
    account_checked_at = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "GitHub Copilot login"

    def __str__(self) -> str:
        return f"Copilot login of {self.provider_id}"

    @classmethod
    def for_provider(cls, provider: Provider) -> CopilotAuth:
        auth, _ = cls.objects.get_or_create(provider=provider)
        return auth

    @property
    def connected(self) -> bool:
        return bool(self.github_token_encrypted) and self.revoked_at is None

    @property
    def flow_active(self) -> bool:
        return bool(self.device_code_encrypted)

    def github_token(self) -> str:
        return crypto.decrypt(self.github_token_encrypted) if self.github_token_encrypted else ""

    def device_code(self) -> str:
        return crypto.decrypt(self.device_code_encrypted)

    @property
    def flow_expired(self) -> bool:
        return self.flow_expires_at is not None and self.flow_expires_at <= _clock_now()

    def begin_flow(self, flow: Any) -> None:
        now = _clock_now()
        self.device_code_encrypted = crypto.encrypt(flow.device_code)
        self.user_code, self.verification_uri = flow.user_code, flow.verification_uri
        self.flow_expires_at = now + timedelta(seconds=flow.expires_in)
        self.poll_interval = flow.interval
        self.next_poll_at = now + timedelta(seconds=flow.interval)
        self.save()

    def claim_poll(self) -> bool:
        """Take the right to ask GitHub now; False when it is too early (GitHub punishes fast polling)
        or another worker or tab just asked (the conditional update lets exactly one win)."""
        now = _clock_now()
        if self.next_poll_at and now < self.next_poll_at:
            return False
        next_poll_at = now + timedelta(seconds=self.poll_interval)
        claimed = CopilotAuth.objects.filter(pk=self.pk, next_poll_at=self.next_poll_at).update(
            next_poll_at=next_poll_at
        )
        self.next_poll_at = next_poll_at
        return claimed == 1

    def slow_down(self, interval: int) -> None:
        self.poll_interval = interval
        self.next_poll_at = _clock_now() + timedelta(seconds=interval)
        self.save(update_fields=["poll_interval", "next_poll_at", "updated"])

    def end_flow(self) -> None:
        self.device_code_encrypted, self.user_code, self.verification_uri = "", "", ""
        self.flow_expires_at = self.next_poll_at = None
        self.save()

    def connect(self, github_token: str, source: str) -> None:
        self.github_token_encrypted = crypto.encrypt(github_token)
        self.source, self.connected_at, self.revoked_at = source, timezone.now(), None
        self.copilot_token_encrypted, self.copilot_expires_at, self.copilot_api_base = "", None, ""
        self.end_flow()
        # load_catalog created Copilot providers disabled until a login exists: this is that login.
        self.provider.enable_if_awaiting_credential()

    def disconnect(self) -> None:
        # "disconnected" (not ""), so a LiteLLM token dir is not adopted again behind the operator's back.
        self.github_token_encrypted, self.source, self.connected_at, self.revoked_at = "", "disconnected", None, None
        self.copilot_token_encrypted, self.copilot_expires_at, self.copilot_api_base = "", None, ""
        self.account, self.account_checked_at = {}, None
        self.end_flow()

    def mark_revoked(self) -> None:
        CopilotAuth.mark_revoked_for(self.provider_id)
        self.refresh_from_db()

    def store_account(self, account: dict[str, Any]) -> None:
        self.account, self.account_checked_at = account, timezone.now()
        self.save(update_fields=["account", "account_checked_at", "updated"])

    @classmethod
    def load_for_call(cls, provider_id: int) -> tuple[str, Any, bool]:
        """For a /v1 call: (GitHub token, stored Copilot token or None, revoked). Adopts a LiteLLM token
        dir when nothing is stored yet; "" as token when the provider was never connected."""
        from gateway.upstreams import copilot

        auth = cls.objects.filter(provider_id=provider_id).first()
        if auth is None:
            if not copilot.read_token_dir():
                return "", None, False
            auth, _ = cls.objects.get_or_create(provider_id=provider_id)
        if not auth.github_token_encrypted and not copilot.import_token_dir(auth):
            return "", None, False
        if auth.revoked_at:
            return "", None, True
        try:
            github_token = auth.github_token()
        except ValueError:
            return "", None, False  # SECRET_KEY changed: as good as never connected
        stored = None
        if auth.copilot_token_encrypted and auth.copilot_expires_at:
            try:
                token = crypto.decrypt(auth.copilot_token_encrypted)
            except ValueError:
                token = ""
            if token:
                stored = copilot.CopilotToken(token, auth.copilot_expires_at.timestamp(), auth.copilot_api_base)
        return github_token, stored, False

    @classmethod
    def store_copilot_token(cls, provider_id: int, token: Any) -> None:
        from gateway.upstreams import copilot

        cls.objects.filter(provider_id=provider_id).update(
            copilot_token_encrypted=crypto.encrypt(token.token),
            copilot_expires_at=copilot.expires_at_datetime(token.expires_at),
            copilot_api_base=token.api_base,
        )

    @classmethod
    def drop_copilot_token(cls, provider_id: int) -> None:
        cls.objects.filter(provider_id=provider_id).update(copilot_token_encrypted="", copilot_expires_at=None)

    @classmethod
    def mark_revoked_for(cls, provider_id: int) -> None:
        cls.objects.filter(provider_id=provider_id).update(
            revoked_at=timezone.now(), copilot_token_encrypted="", copilot_expires_at=None
        )


class CatalogSeed(models.Model):
    """A built-in catalog entry load_catalog has put in place once (gateway/catalog/builtin.py).

    It is never created a second time: an entry the operator deleted stays deleted on the next start
    (`load_catalog --restore` brings missing entries back).
    """

    key = models.CharField(max_length=250, unique=True)  # "provider:gemini", "model:google/gemini-2.5-flash"
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key
