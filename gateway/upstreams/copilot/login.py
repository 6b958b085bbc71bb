"""The admin's "Connect GitHub Copilot" page: start a device flow, poll it, show the account, disconnect.

These run in the admin's sync views; GitHub is called through async_to_sync on a loop whose connections are
closed with the call (gateway.upstreams.client.run_closing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from gateway.models import CopilotAuth, Provider
from gateway.upstreams import client
from gateway.upstreams.copilot.github import (
    GitHubError,
    fetch_account,
    poll_device_flow,
    read_token_dir,
    start_device_flow,
)
from gateway.upstreams.copilot.token import forget

T = TypeVar("T")


def _call(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """A GitHub call from the admin's sync code (see gateway.upstreams.client.run_closing)."""
    return async_to_sync(client.run_closing(lambda: function(*args)))()

def start_connect(provider: Provider) -> CopilotAuth:
    """Start a device flow for the provider; the page then shows the code and polls."""
    flow = _call(start_device_flow, provider.proxy_url)
    auth = CopilotAuth.for_provider(provider)
    auth.begin_flow(flow)
    return auth


def poll_connect(provider: Provider) -> dict[str, Any]:
    """One poll of the page: asks GitHub at most once per interval, whichever worker or tab asks."""
    auth = CopilotAuth.for_provider(provider)
    if not auth.flow_active:
        state = "connected" if auth.connected else "idle"
        return {"status": state, "message": _POLL_MESSAGES[state]}
    if auth.flow_expired:
        auth.end_flow()
        return {"status": "expired", "message": _POLL_MESSAGES["expired"]}
    if not auth.claim_poll():
        return {"status": "pending", "message": _POLL_MESSAGES["pending"], "interval": auth.poll_interval}
    result = _call(poll_device_flow, auth.device_code(), provider.proxy_url)
    if result.status == "connected":
        auth.connect(result.access_token, source="device_flow")
        forget(provider.pk)
        refresh_account(auth)
    elif result.status == "slow_down":
        auth.slow_down(result.interval or auth.poll_interval + 5)
    elif result.status in ("expired", "denied"):
        auth.end_flow()
    status = "pending" if result.status == "slow_down" else result.status
    return {"status": status, "message": _POLL_MESSAGES[status], "interval": auth.poll_interval}


_POLL_MESSAGES = {
    "idle": "No login in progress.",
    "pending": "Waiting for you to enter the code on GitHub…",
    "connected": "Connected to GitHub Copilot.",
    "expired": "The code expired before it was entered. Start again.",
    "denied": "The login was cancelled on GitHub. Start again.",
}


def import_token_dir(auth: CopilotAuth) -> bool:
    """Adopt a LiteLLM token dir's GitHub token when no login was ever stored (a user's old auth volume).

    Only once: after a disconnect or a revocation the operator decides, not a file on disk."""
    if auth.github_token_encrypted or auth.revoked_at or auth.source:
        return False
    token = read_token_dir()
    if not token:
        return False
    auth.connect(token, source="token_dir")
    return True


def refresh_account(auth: CopilotAuth) -> str:
    """Re-read the seat and quota from GitHub; returns an error text for the page ("" when fine)."""
    try:
        account = _call(fetch_account, auth.github_token(), auth.provider.proxy_url)
    except ValueError as e:  # the stored token cannot be decrypted
        return str(e)
    except GitHubError as e:
        if e.status == 401:
            auth.mark_revoked()
            return "GitHub rejected the stored login (revoked or expired). Connect again."
        return f"Could not read the Copilot account status: {e}"
    auth.store_account(account)
    return ""


ACCOUNT_MAX_AGE = timedelta(seconds=60)


def page_context(provider: Provider) -> dict[str, Any]:
    """What the connect page shows; the seat and quota are re-read from GitHub when a minute old."""
    auth = CopilotAuth.for_provider(provider)
    imported = import_token_dir(auth)
    account_error = ""
    stale = auth.account_checked_at is None or timezone.now() - auth.account_checked_at > ACCOUNT_MAX_AGE
    if auth.connected and (stale or imported):
        account_error = refresh_account(auth)
    return {
        "provider": provider,
        "auth": auth,
        "imported": imported,
        "account": auth.account,
        "quota_rows": quota_rows(auth.account),
        "quota_reset": auth.account.get("quota_reset_date") or auth.account.get("limited_user_reset_date") or "",
        "account_error": account_error,
        "token_dir": Path(settings.GITHUB_COPILOT_TOKEN_DIR) / settings.GITHUB_COPILOT_ACCESS_TOKEN_FILE,
    }


def handle_action(provider: Provider, action: str) -> tuple[bool, str]:
    """A button of the connect page; (ok, message for the operator)."""
    try:
        if action == "start":
            start_connect(provider)
            return True, "Enter the code below on GitHub."
        if action == "poll":
            result = poll_connect(provider)
            return result["status"] in ("pending", "connected"), result["message"]
        if action == "refresh":
            error = refresh_account(CopilotAuth.for_provider(provider))
            return not error, error or "Status refreshed."
        if action == "disconnect":
            disconnect(provider)
            return True, "Disconnected. Calls to this provider now fail until it is connected again."
    except GitHubError as e:
        return False, f"GitHub: {e}"
    return False, f"Unknown action {action!r}."


def disconnect(provider: Provider) -> None:
    CopilotAuth.for_provider(provider).disconnect()
    forget(provider.pk)


def quota_rows(account: dict[str, Any]) -> list[tuple[str, str]]:
    """The account's quotas as (label, text) lines, from either plan shape GitHub returns."""
    rows = []
    snapshots = account.get("quota_snapshots") or {}
    labels = {"premium_interactions": "Premium requests", "chat": "Chat", "completions": "Code completions"}
    for key, label in labels.items():
        snap = snapshots.get(key)
        if isinstance(snap, dict):
            rows.append((label, _quota_text(snap)))
    # The free plan reports remaining counts and monthly totals instead of snapshots.
    limited, monthly = account.get("limited_user_quotas") or {}, account.get("monthly_quotas") or {}
    for key in ("chat", "completions"):
        if key in limited and not isinstance(snapshots.get(key), dict):
            total = f" of {monthly[key]}" if key in monthly else ""
            rows.append((labels[key], f"{limited[key]}{total} left this month"))
    return rows


def _quota_text(snap: dict[str, Any]) -> str:
    if snap.get("unlimited"):
        return "unlimited"
    remaining, entitlement = snap.get("remaining"), snap.get("entitlement")
    text = f"{remaining} of {entitlement} left"
    if isinstance(snap.get("percent_remaining"), int | float):
        text += f" ({snap['percent_remaining']:.0f}%)"
    if snap.get("overage_count"):
        text += f", {snap['overage_count']} over the allowance"
    return text

