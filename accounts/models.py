"""Users' API keys: issued, verified, revoked and limited here; the gateway only reads them (accounts.keys).

A key is `sk-<prefix>.<secret>`. The prefix is stored in clear (indexed, shown in lists); the whole key is
stored only as an HMAC-SHA256 under a server-side pepper, so a database dump does not reveal usable keys.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
import secrets
import string
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.principal import KeyLimits

if TYPE_CHECKING:
    from django.contrib.auth.models import User

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-"
PREFIX_LENGTH = 8
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
SELF_SERVE_PERMISSION = "accounts.self_serve_keys"
SELF_SERVE_GROUP = "API key users"
# last_used is a hint for operators, not an audit log: one write a minute per key is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def pepper() -> bytes:
    """The HMAC key: API_KEY_PEPPER if set, else derived from SECRET_KEY (never the SECRET_KEY itself)."""
    return _pepper(settings.API_KEY_PEPPER, settings.SECRET_KEY)


@functools.lru_cache(maxsize=4)
def _pepper(api_key_pepper: str, secret_key: str) -> bytes:
    # Asked on every request with a user key; derived once per setting (tests change them).
    if api_key_pepper:
        return api_key_pepper.encode()
    return hashlib.sha256(b"llm-portal api-key pepper:" + secret_key.encode()).digest()


def digest(token: str) -> str:
    return hmac.new(pepper(), token.encode(), hashlib.sha256).hexdigest()


def parse_prefix(token: str) -> str | None:
    """The lookup prefix of a well-formed user key, or None (so garbage never reaches the cache or DB)."""
    head = len(KEY_PREFIX) + PREFIX_LENGTH
    if len(token) < head + 20 or not token.startswith(KEY_PREFIX) or token[head] != ".":
        return None
    prefix = token[len(KEY_PREFIX) : head]
    if not all(c in PREFIX_ALPHABET for c in prefix):
        return None
    return prefix


def actor_name(actor: Any) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return str(getattr(actor, "username", "") or "anonymous")


BUDGET_DURATIONS = [("day", "per day"), ("month", "per month"), ("total", "in total (never resets)")]


def micro_usd(amount: Decimal) -> int:
    """A budget as the stores count it, in integer micro-dollars: exact for the fields' two decimal places (a
    request's cost, which has more, is rounded up on the gateway's side: gateway.quota.micro_usd)."""
    return int(amount * 1_000_000)


class LimitFields(models.Model):
    """The quota fields gateway.quota enforces (None = no limit of that kind)."""

    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per minute")
    rpd = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per day")
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_month = models.PositiveBigIntegerField(null=True, blank=True)
    max_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)],
        verbose_name="budget (USD)", help_text="The most this may spend, at the deployments' prices. Blank: no budget.",
    )
    budget_duration = models.CharField(
        max_length=5, choices=BUDGET_DURATIONS, default="total", blank=True,
        help_text="When the budget starts over: each day, each month (midnight KEY_QUOTA_TIMEZONE), or never "
                  "(blank: never).",
    )

    class Meta:
        abstract = True

    def key_limits(self, fallback: KeyLimits | None = None) -> KeyLimits:
        """These limits; a blank field takes the fallback's value (a model row inherits its key's)."""
        base = fallback or KeyLimits()
        return KeyLimits(
            rpm=self.rpm if self.rpm is not None else base.rpm,
            rpd=self.rpd if self.rpd is not None else base.rpd,
            tokens_per_day=self.tokens_per_day if self.tokens_per_day is not None else base.tokens_per_day,
            tokens_per_month=self.tokens_per_month if self.tokens_per_month is not None else base.tokens_per_month,
            # The budget and its period go together: a blank budget takes both from the fallback.
            budget=micro_usd(self.max_budget) if self.max_budget is not None else base.budget,
            budget_period=(self.budget_duration or "total") if self.max_budget is not None else base.budget_period,
        )


class KeyLimitReached(ValidationError):
    pass


class KeyPolicy(LimitFields):
    """What an operator allows one user: on the self-service page (how many keys, which models, the rate and
    token limits each new key gets), and the user's own USD budget, which all of their keys spend together."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="key_policy")
    # The user's budget, not a template for new keys: every key of the user (however it was made) counts
    # against it, beside the key's own budget if the key has one.
    max_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)],
        verbose_name="budget (USD)",
        help_text="The user's budget, shared by all their keys: the most they may spend together, at the "
                  "deployments' prices. Blank: no budget of the user's (each key's own budget still applies).",
    )
    budget_duration = models.CharField(
        max_length=5, choices=BUDGET_DURATIONS, default="total", blank=True,
        help_text="When the user's budget starts over: each day, each month (midnight KEY_QUOTA_TIMEZONE), or "
                  "never (blank: never).",
    )
    max_keys = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most unrevoked, unexpired keys this user may hold. Blank: MAX_KEYS_PER_USER."
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Public model names this user may pick for a key. Empty: every model."
    )

    class Meta:
        verbose_name_plural = "key policies"

    def __str__(self) -> str:
        return f"key policy of {self.user}"

    @classmethod
    def for_user(cls, user: Any) -> KeyPolicy:
        """The user's policy, or an unsaved default one (no query is written for users without one)."""
        try:
            return user.key_policy  # type: ignore[no-any-return]
        except cls.DoesNotExist:
            return cls(user=user)

    def new_key_limits(self) -> KeyLimits:
        """The limits a key this user creates gets: the policy's rate and token limits, never its budget (that
        is the user's, shared, not copied into each key)."""
        return dataclasses.replace(self.key_limits(), budget=None, budget_period="total")

    def user_budget(self) -> KeyLimits | None:
        """The user's budget, as a limit every one of their keys also counts against; None without one."""
        if self.max_budget is None:
            return None
        return KeyLimits(budget=micro_usd(self.max_budget), budget_period=self.budget_duration or "total")

    @property
    def key_cap(self) -> int:
        return self.max_keys if self.max_keys is not None else int(settings.MAX_KEYS_PER_USER)

    def selectable_models(self, enabled: list[str]) -> list[str]:
        """The enabled public names this user may put on a key."""
        if not self.allowed_models:
            return list(enabled)
        allowed = set(self.allowed_models)
        return [name for name in enabled if name in allowed]

    def clamp(self, chosen: list[str]) -> list[str]:
        """A self-served key's models: nothing chosen means "all I'm allowed", never more than that."""
        if not self.allowed_models:
            return sorted(set(chosen))
        allowed = set(self.allowed_models)
        picked = [name for name in chosen if name in allowed]
        return sorted(set(picked or allowed))


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self, now: datetime | None = None) -> ApiKeyQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires__isnull=True) | Q(expires__gt=now))

    def revoked(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=False)

    def expired(self, now: datetime | None = None) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True, expires__lte=now or timezone.now())

    def owned_by(self, user: Any) -> ApiKeyQuerySet:
        return self.filter(owner=user) if user.is_authenticated else self.none()

    def revoke(self, actor: Any = None) -> int:
        """Revoke every key in the set; returns how many were still unrevoked."""
        return sum(key.revoke(actor) for key in self)


class ApiKeyManager(models.Manager.from_queryset(ApiKeyQuerySet)):  # type: ignore[misc]
    def issue(
        self,
        owner: User,
        name: str,
        *,
        expires: datetime | None = None,
        allowed_models: list[str] | tuple[str, ...] = (),
        limits: KeyLimits | None = None,
        tags: dict[str, str] | None = None,
        actor: Any = None,
        enforce_cap: bool = False,
    ) -> tuple[ApiKey, str]:
        """Create a key and return it with its plaintext, which is not stored and cannot be shown again.

        enforce_cap applies the owner's key cap (self-service); operators may go past it.
        """
        limits = limits or KeyLimits()
        with transaction.atomic():
            if enforce_cap:
                # Serialise concurrent creations by one user so two tabs cannot both pass the cap check.
                get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
                cap = KeyPolicy.for_user(owner).key_cap
                if self.get_queryset().owned_by(owner).active().count() >= cap:
                    raise KeyLimitReached(
                        f"You already hold {cap} active keys, the most allowed. Revoke one first.",
                        code="key_limit",
                    )
            key = self.model(
                owner=owner,
                name=name,
                expires=expires,
                allowed_models=sorted(set(allowed_models)),
                rpm=limits.rpm,
                rpd=limits.rpd,
                tokens_per_day=limits.tokens_per_day,
                tokens_per_month=limits.tokens_per_month,
                max_budget=Decimal(limits.budget) / 1_000_000 if limits.budget is not None else None,
                budget_duration=limits.budget_period,
                tags=dict(tags or {}),
            )
            token = key.generate()
            key.save()
        key.log_created(actor)
        return key, token

    def touch(self, key_id: int, now: datetime | None = None) -> int:
        """Record use; the conditional update makes it one write a minute however many workers ask."""
        now = now or timezone.now()
        stale = Q(last_used__isnull=True) | Q(last_used__lt=now - LAST_USED_RESOLUTION)
        return self.get_queryset().filter(stale, pk=key_id).update(last_used=now)


class ApiKey(LimitFields):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)
    expires = models.DateTimeField(null=True, blank=True, help_text="Blank: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Public model names this key may use. Empty: every enabled model."
    )
    tags = models.JSONField(default=dict, blank=True, help_text="Metadata recorded with this key's usage.")

    objects = ApiKeyManager()

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "API key"
        permissions = [("self_serve_keys", "Can create and revoke own API keys on the self-service page")]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"{KEY_PREFIX}{self.prefix}…"

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires is not None and self.expires <= timezone.now():
            return "expired"
        return "active"

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    def generate(self) -> str:
        """Give this unsaved key a fresh prefix and secret; returns the plaintext (only its HMAC is kept)."""
        for _ in range(10):
            prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
            if not ApiKey.objects.filter(prefix=prefix).exists():
                break
        token = f"{KEY_PREFIX}{prefix}.{secrets.token_urlsafe(32)}"
        self.prefix, self.secret_hash = prefix, digest(token)
        return token

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(self.secret_hash, digest(token))

    def clean(self) -> None:
        if not isinstance(self.allowed_models, list) or not all(isinstance(m, str) for m in self.allowed_models):
            raise ValidationError({"allowed_models": "Enter a list of public model names."})
        if not isinstance(self.tags, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in self.tags.items()
        ):
            raise ValidationError({"tags": 'Enter an object of names to plain values, e.g. {"team": "data"}.'})

    def revoke(self, actor: Any = None) -> bool:
        """Revoke now; False if it already was. Takes effect on /v1 at once in this process, within a
        second elsewhere (accounts.keys)."""
        now = timezone.now()
        # Conditional update: two operators revoking together log and count it once.
        if not ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now):
            return False
        self.revoked_at = now
        self.invalidate()
        log.info("api key revoked: id=%s prefix=%s owner=%s by=%s", self.pk, self.prefix, self.owner_id,
                 actor_name(actor))
        return True

    def extend(self, days: int, actor: Any = None) -> bool:
        """Push the expiry `days` past the later of now and the current expiry; False for keys that never
        expire or are revoked."""
        if self.expires is None or self.revoked_at is not None:
            return False
        self.expires = max(self.expires, timezone.now()) + timedelta(days=days)
        self.save(update_fields=["expires"])
        log.info("api key extended: id=%s prefix=%s until=%s by=%s", self.pk, self.prefix,
                 self.expires.isoformat(), actor_name(actor))
        return True

    def log_created(self, actor: Any) -> None:
        log.info("api key created: id=%s prefix=%s owner=%s name=%r by=%s", self.pk, self.prefix, self.owner_id,
                 self.name, actor_name(actor))

    def invalidate(self) -> None:
        """Make every worker re-read this key (after a change that bypassed save())."""
        from accounts import keys

        keys.invalidate(self.prefix)

    def principal_limits(self) -> tuple[KeyLimits, dict[str, KeyLimits]]:
        limits = self.key_limits()
        # The key's budget covers every model: a per-model row never counts a second one of its own.
        return limits, {row.public_model: dataclasses.replace(row.key_limits(limits), budget=None)
                        for row in self.model_limits.all()}


class ApiKeyModelLimit(LimitFields):
    """Limits of one key on one public model; blank fields inherit the key's."""

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="model_limits")
    public_model = models.CharField(max_length=200, help_text="The public model name clients send.")

    class Meta:
        verbose_name = "per-model limit"
        constraints = [models.UniqueConstraint(fields=["key", "public_model"], name="one_limit_per_key_and_model")]

    def __str__(self) -> str:
        return f"{self.key} on {self.public_model}"


def self_serve_group() -> Group:
    """The group whose members may use the self-service key page (created on migrate, idempotent)."""
    group, _ = Group.objects.get_or_create(name=SELF_SERVE_GROUP)
    app_label, codename = SELF_SERVE_PERMISSION.split(".")
    permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
    if permission is not None:
        group.permissions.add(permission)
    return group


def may_self_serve(user: Any) -> bool:
    return bool(user.is_active and user.has_perm(SELF_SERVE_PERMISSION))
