"""The GitHub Copilot login of a github_copilot provider, kept in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import models
from django.utils import timezone

from gateway import clock, crypto
from gateway.models.catalog import Provider


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
