"""GitHub Copilot: the device-flow login, the short-lived Copilot token, and the headers Copilot wants.

How a Copilot call works:

1. An operator opens "Connect GitHub Copilot" in the admin. `start_connect()` asks GitHub for a device
   code; the page shows the user code and the verification link and polls `poll_connect()`, which asks
   GitHub whether the user has authorized it. The GitHub OAuth token it finally gets is stored encrypted
   in `CopilotAuth` (the database), so it survives restarts and every worker and host sees it.
2. A /v1 call to a `github_copilot` deployment needs a Copilot token: `session_for()` takes it from this
   process's memory, else from the shared cache, else from the database, else exchanges the GitHub token
   for a new one at `GET {api}/copilot_internal/v2/token`. That token lasts about 30 minutes and names the
   API host of the account's plan (`endpoints.api`).
3. The call goes to `{endpoints.api}/chat/completions` as an OpenAI-compatible call through LiteLLM, with
   the editor/integration headers Copilot requires (`call_kwargs()`).

Nothing here starts a device flow on its own: only the admin page does. The /v1 path never blocks the
event loop: GitHub is called with httpx's async client and the database through sync_to_async, only when
the memory copy is missing or about to expire. Why we do not use LiteLLM's `github_copilot/` provider is
explained in the README ("GitHub Copilot").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import certifi
import httpx
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from gateway import clock, crypto, redact
from gateway.upstreams import UpstreamError

if TYPE_CHECKING:
    from gateway.catalog import Route
    from gateway.models import CopilotAuth, Provider

log = logging.getLogger(__name__)

# What the VS Code Copilot Chat extension sends (the same values as LiteLLM's github_copilot provider).
EDITOR_VERSION = "vscode/1.95.0"
EDITOR_PLUGIN_VERSION = "copilot-chat/0.26.7"
USER_AGENT = "GitHubCopilotChat/0.26.7"
INTEGRATION_ID = "vscode-chat"
GITHUB_API_VERSION = "2025-04-01"
DEFAULT_API_BASE = "https://api.githubcopilot.com"

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_SCOPE = "read:user"
GITHUB_TIMEOUT = 15.0
# A Copilot token is replaced this long before GitHub's expires_at, so no call starts with a dying token.
REFRESH_MARGIN = 300.0
# How long a worker trusts its memory copy before looking at the shared cache again (a disconnect or a
# reconnect in the admin reaches every worker within this time).
RECHECK_SECONDS = 60.0
CACHE_KEY = "gateway:copilot-token:{}"


class GitHubError(Exception):
    """GitHub answered with an error status, or could not be reached (status None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(redact.redact(message))
        self.status = status


@dataclass(frozen=True)
class DeviceFlow:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_in: int
    interval: int


@dataclass(frozen=True)
class PollResult:
    status: str  # pending | slow_down | expired | denied | connected
    access_token: str = field(default="", repr=False)
    interval: int | None = None


@dataclass(frozen=True)
class CopilotToken:
    token: str = field(repr=False)
    expires_at: float  # unix time
    api_base: str

    def fresh(self, now: float) -> bool:
        return self.expires_at - REFRESH_MARGIN > now


# --- talking to GitHub -------------------------------------------------------------------------------------------


def github_headers(github_token: str = "") -> dict[str, str]:
    headers = {
        "Accept": "application/json",
        "Editor-Version": EDITOR_VERSION,
        "Editor-Plugin-Version": EDITOR_PLUGIN_VERSION,
        "User-Agent": USER_AGENT,
        "X-GitHub-Api-Version": GITHUB_API_VERSION,
    }
    if github_token:
        headers["Authorization"] = f"token {github_token}"
    return headers


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building the CA store costs ~0.1 s; every GitHub call would pay it with a fresh client.
    return ssl.create_default_context(cafile=certifi.where())


async def _github(method: str, url: str, *, github_token: str = "", json: dict[str, Any] | None = None) -> Any:
    """One GitHub request; the parsed JSON body, or GitHubError with GitHub's status."""
    try:
        async with httpx.AsyncClient(timeout=GITHUB_TIMEOUT, verify=_tls()) as client:
            response = await client.request(method, url, headers=github_headers(github_token), json=json)
    except httpx.HTTPError as e:
        raise GitHubError(f"could not reach GitHub ({type(e).__name__}: {e})") from None
    if response.status_code >= 400:
        raise GitHubError(f"GitHub answered {response.status_code}: {_error_text(response)}", response.status_code)
    try:
        return response.json()
    except ValueError:
        raise GitHubError(f"GitHub answered something that is not JSON: {response.text[:200]!r}") from None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", error))[:300]
        return str(body.get("message") or body.get("error_description") or error or body)[:300]
    return str(body)[:300]


async def start_device_flow() -> DeviceFlow:
    data = await _github(
        "POST",
        f"{settings.GITHUB_COPILOT_GITHUB_URL}/login/device/code",
        json={"client_id": settings.GITHUB_COPILOT_CLIENT_ID, "scope": DEVICE_SCOPE},
    )
    try:
        return DeviceFlow(
            device_code=str(data["device_code"]),
            user_code=str(data["user_code"]),
            verification_uri=str(data["verification_uri"]),
            expires_in=int(data.get("expires_in") or 900),
            interval=int(data.get("interval", 5)),  # RFC 8628: 5 seconds when GitHub does not say
        )
    except (KeyError, TypeError, ValueError):
        fields = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise GitHubError(f"GitHub's device code answer is incomplete (fields: {fields})") from None


async def poll_device_flow(device_code: str) -> PollResult:
    """Ask GitHub once whether the user has entered the code (RFC 8628 section 3.4/3.5)."""
    data = await _github(
        "POST",
        f"{settings.GITHUB_COPILOT_GITHUB_URL}/login/oauth/access_token",
        json={"client_id": settings.GITHUB_COPILOT_CLIENT_ID, "device_code": device_code, "grant_type": DEVICE_GRANT},
    )
    if not isinstance(data, dict):
        raise GitHubError("GitHub's token answer is not an object")
    if data.get("access_token"):
        return PollResult("connected", access_token=str(data["access_token"]))
    interval = int(data["interval"]) if str(data.get("interval", "")).isdigit() else None
    error = data.get("error")
    statuses = {"authorization_pending": "pending", "slow_down": "slow_down", "expired_token": "expired",
                "access_denied": "denied"}
    if error in statuses:
        return PollResult(statuses[error], interval=interval)
    raise GitHubError(f"GitHub refused the device code: {data.get('error_description') or error}")


async def exchange_token(github_token: str) -> CopilotToken:
    """Trade the GitHub OAuth token for a short-lived Copilot token (what the editor plugins do)."""
    data = await _github("GET", f"{settings.GITHUB_COPILOT_API_URL}/copilot_internal/v2/token",
                         github_token=github_token)
    try:
        token, expires_at = str(data["token"]), float(data["expires_at"])
    except (KeyError, TypeError, ValueError):
        raise GitHubError("GitHub's Copilot token answer lacks token or expires_at") from None
    endpoints = data.get("endpoints") if isinstance(data.get("endpoints"), dict) else {}
    return CopilotToken(token, expires_at, trusted_api_base(endpoints.get("api")))


async def fetch_account(github_token: str) -> dict[str, Any]:
    """The seat, plan and premium-request quota GitHub reports for the account."""
    data = await _github("GET", f"{settings.GITHUB_COPILOT_API_URL}/copilot_internal/user",
                         github_token=github_token)
    return account_summary(data if isinstance(data, dict) else {})


ACCOUNT_FIELDS = (
    "login", "copilot_plan", "access_type_sku", "chat_enabled", "assigned_date", "organization_login_list",
    "quota_reset_date", "quota_snapshots", "limited_user_quotas", "monthly_quotas", "limited_user_reset_date",
)


def account_summary(data: dict[str, Any]) -> dict[str, Any]:
    """What we keep of /copilot_internal/user: what the admin page shows, nothing else."""
    return {key: data[key] for key in ACCOUNT_FIELDS if key in data}


def trusted_api_base(value: object) -> str:
    """The API host GitHub named for this account, if we may send the Copilot token there.

    Copilot tokens only go to *.githubcopilot.com over https, or to the host of the GitHub API we are
    configured to use (GitHub Enterprise, the tests' mock GitHub); anything else falls back to the default.
    """
    if not isinstance(value, str):
        return DEFAULT_API_BASE
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    if parts.username or parts.password:
        return DEFAULT_API_BASE
    if parts.scheme == "https" and (host == "githubcopilot.com" or host.endswith((".githubcopilot.com", ".ghe.com"))):
        return value.rstrip("/")
    configured = urlsplit(settings.GITHUB_COPILOT_API_URL)
    if parts.scheme == configured.scheme and parts.netloc == configured.netloc:
        return value.rstrip("/")
    return DEFAULT_API_BASE


def read_token_dir() -> str:
    """The GitHub token LiteLLM saved in its token dir ("" when there is none)."""
    path = Path(settings.GITHUB_COPILOT_TOKEN_DIR) / settings.GITHUB_COPILOT_ACCESS_TOKEN_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


# --- the admin page: connect, poll, status ---------------------------------------------------------------------


def start_connect(provider: Provider) -> CopilotAuth:
    """Start a device flow for the provider; the page then shows the code and polls."""
    from gateway.models import CopilotAuth

    flow = async_to_sync(start_device_flow)()
    auth = CopilotAuth.for_provider(provider)
    auth.begin_flow(flow)
    return auth


def poll_connect(provider: Provider) -> dict[str, Any]:
    """One poll of the page: asks GitHub at most once per interval, whichever worker or tab asks."""
    from gateway.models import CopilotAuth

    auth = CopilotAuth.for_provider(provider)
    if not auth.flow_active:
        state = "connected" if auth.connected else "idle"
        return {"status": state, "message": _POLL_MESSAGES[state]}
    if auth.flow_expired:
        auth.end_flow()
        return {"status": "expired", "message": _POLL_MESSAGES["expired"]}
    if not auth.claim_poll():
        return {"status": "pending", "message": _POLL_MESSAGES["pending"], "interval": auth.poll_interval}
    result = async_to_sync(poll_device_flow)(auth.device_code())
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
        account = async_to_sync(fetch_account)(auth.github_token())
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
    from gateway.models import CopilotAuth

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
            from gateway.models import CopilotAuth

            error = refresh_account(CopilotAuth.for_provider(provider))
            return not error, error or "Status refreshed."
        if action == "disconnect":
            disconnect(provider)
            return True, "Disconnected. Calls to this provider now fail until it is connected again."
    except GitHubError as e:
        return False, f"GitHub: {e}"
    return False, f"Unknown action {action!r}."


def disconnect(provider: Provider) -> None:
    from gateway.models import CopilotAuth

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


# --- the /v1 hot path --------------------------------------------------------------------------------------------

# provider id -> (token, when to look at the shared cache again)
_memory: dict[int, tuple[CopilotToken, float]] = {}
# provider id -> (error, until): a provider found unconnected or revoked answers from here for a few
# seconds instead of costing a database query (or a GitHub call) per request; connecting clears it.
_unusable: dict[int, tuple[UpstreamError, float]] = {}
UNUSABLE_SECONDS = 5.0
# One refresh at a time per provider and event loop, so a burst after expiry exchanges once.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Lock]] = weakref.WeakKeyDictionary()


def not_connected(route: Route, detail: str = "") -> UpstreamError:
    return UpstreamError(
        503,
        f"GitHub Copilot is not connected for provider '{route.provider_name}'{detail}. An operator must connect "
        f"it in the admin: Providers → {route.provider_name} → Connect GitHub Copilot.",
        code="copilot_not_connected",
    )


def reconnect_required(route: Route) -> UpstreamError:
    return UpstreamError(
        401,
        f"GitHub rejected the GitHub Copilot login of provider '{route.provider_name}' (revoked or expired). "
        f"An operator must reconnect it in the admin: Providers → {route.provider_name} → Connect GitHub Copilot.",
        code="copilot_reconnect_required",
        upstream_status=401,
    )


def token_rejected(route: Route, error: UpstreamError) -> UpstreamError:
    """Copilot refused even a freshly exchanged token: the seat or the login has a problem."""
    return UpstreamError(
        401,
        f"GitHub Copilot rejected the portal's Copilot token for provider '{route.provider_name}' twice "
        f"({error.message}). Check the account's Copilot seat, or reconnect it in the admin: "
        f"Providers → {route.provider_name} → Connect GitHub Copilot.",
        code="copilot_token_rejected",
        upstream_status=401,
    )


async def after_rejection(route: Route, error: UpstreamError, attempt: int) -> None:
    """An upstream call failed: raise its error, unless Copilot rejected its short-lived token (a 401 before
    expires_at). Then the token is dropped, so the caller's next attempt exchanges a fresh one; a second
    rejection says the seat or the login has a problem. Both upstream paths retry through this."""
    if route.kind != "github_copilot" or error.upstream_status != 401:
        raise error
    await aforget(route.provider_id)
    if attempt >= 2:
        raise token_rejected(route, error)


def _lock(provider_id: int) -> asyncio.Lock:
    locks = _locks.setdefault(asyncio.get_running_loop(), {})
    if provider_id not in locks:
        locks[provider_id] = asyncio.Lock()
    return locks[provider_id]


async def session_for(route: Route) -> CopilotToken:
    """A Copilot token for the route's provider that is good for at least REFRESH_MARGIN more seconds."""
    now = clock.now()
    entry = _memory.get(route.provider_id)
    if entry and entry[0].fresh(now) and now < entry[1]:
        return entry[0]
    if (known := _unusable.get(route.provider_id)) and now < known[1]:
        error = known[0]
        raise UpstreamError(error.status, error.message, code=error.code, upstream_status=error.upstream_status)
    async with _lock(route.provider_id):
        entry = _memory.get(route.provider_id)
        if entry and entry[0].fresh(now) and now < entry[1]:
            return entry[0]  # another request refreshed it while we waited
        try:
            token = await _from_cache(route.provider_id, now) or await _from_db_or_github(route, now)
        except UpstreamError as e:
            if e.code in ("copilot_not_connected", "copilot_reconnect_required"):
                _unusable[route.provider_id] = (e, now + UNUSABLE_SECONDS)
            raise
        _unusable.pop(route.provider_id, None)
        redact.register(token.token)
        _memory[route.provider_id] = (token, now + RECHECK_SECONDS)
        return token


async def _from_cache(provider_id: int, now: float) -> CopilotToken | None:
    cached = await cache.aget(CACHE_KEY.format(provider_id))
    if not isinstance(cached, dict):
        return None
    try:
        token = CopilotToken(crypto.decrypt(cached["token"]), float(cached["expires_at"]), str(cached["api_base"]))
    except (KeyError, TypeError, ValueError):
        return None
    return token if token.fresh(now) else None


async def _from_db_or_github(route: Route, now: float) -> CopilotToken:
    from gateway.models import CopilotAuth

    github_token, stored, revoked = await sync_to_async(CopilotAuth.load_for_call)(route.provider_id)
    if revoked:
        raise reconnect_required(route)
    if not github_token:
        raise not_connected(route)
    redact.register(github_token)
    if stored is not None and stored.fresh(now):
        token = stored
    else:
        token = await _exchange(route, github_token)
        await sync_to_async(CopilotAuth.store_copilot_token)(route.provider_id, token)
    ttl = int(token.expires_at - REFRESH_MARGIN - now)
    if ttl > 0:
        value = {"token": crypto.encrypt(token.token), "expires_at": token.expires_at, "api_base": token.api_base}
        await cache.aset(CACHE_KEY.format(route.provider_id), value, timeout=ttl)
    return token


async def _exchange(route: Route, github_token: str) -> CopilotToken:
    from gateway.models import CopilotAuth

    try:
        return await exchange_token(github_token)
    except GitHubError as e:
        where = f"GitHub Copilot (provider '{route.provider_name}')"
        if e.status == 401:
            await sync_to_async(CopilotAuth.mark_revoked_for)(route.provider_id)
            raise reconnect_required(route) from None
        if e.status in (403, 404):
            raise not_connected(route, f": the GitHub account has no Copilot access ({e})") from None
        if e.status == 429:
            raise UpstreamError(429, f"{where}: {e}", code="rate_limit_exceeded", type="rate_limit_error",
                                upstream_status=429) from None
        log.warning("Copilot token exchange failed for provider %s: %s", route.provider_name, e)
        raise UpstreamError(502, f"{where}: could not get a Copilot token: {e}", code="copilot_token_error",
                            upstream_status=e.status or 500) from None


def forget(provider_id: int) -> None:
    """Drop the cached Copilot token everywhere (reconnect, disconnect, or Copilot rejected it)."""
    _memory.pop(provider_id, None)
    _unusable.pop(provider_id, None)
    cache.delete(CACHE_KEY.format(provider_id))


async def aforget(provider_id: int) -> None:
    from gateway.models import CopilotAuth

    _memory.pop(provider_id, None)
    await cache.adelete(CACHE_KEY.format(provider_id))
    await sync_to_async(CopilotAuth.drop_copilot_token)(provider_id)


def forget_all() -> None:
    """Empty this process's memory copies (tests; the shared cache is cleared separately)."""
    _memory.clear()
    _unusable.clear()
    _locks.clear()


def copilot_headers(messages: Any) -> dict[str, str]:
    """The headers Copilot's API requires of an editor integration, plus the per-request hints it uses."""
    headers = {
        "Editor-Version": EDITOR_VERSION,
        "Editor-Plugin-Version": EDITOR_PLUGIN_VERSION,
        "Copilot-Integration-Id": INTEGRATION_ID,
        "User-Agent": USER_AGENT,
        "Openai-Intent": "conversation-panel",
        "X-GitHub-Api-Version": GITHUB_API_VERSION,
        "X-Request-Id": str(uuid.uuid4()),
        # Copilot bills "user" turns as premium requests and "agent" follow-ups (tool results) not.
        "X-Initiator": "agent" if _has_role(messages, "assistant", "tool") else "user",
    }
    if _has_image(messages):
        headers["Copilot-Vision-Request"] = "true"
    return headers


def _has_role(messages: Any, *roles: str) -> bool:
    return isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") in roles for m in messages)


def _has_image(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False


async def call_kwargs(route: Route, body: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM arguments for a Copilot call: OpenAI-compatible, at the account's API host, as an editor.

    Messages pass unchanged: system messages stay system messages (LiteLLM's github_copilot provider
    would turn them into assistant messages unless told otherwise).
    """
    token = await session_for(route)
    api_base = token.api_base
    # An operator-set base URL wins over the one GitHub named (a proxy, a test server).
    if route.api_base and route.api_base.rstrip("/") != DEFAULT_API_BASE:
        api_base = route.api_base
    headers = {**copilot_headers(body.get("messages")), **(kwargs.get("extra_headers") or {})}
    return {
        **kwargs,
        "model": f"openai/{route.upstream_model}",
        "api_base": api_base,
        "api_key": token.token,
        "extra_headers": headers,
    }


def expires_at_datetime(expires_at: float) -> datetime:
    return datetime.fromtimestamp(expires_at, tz=UTC)
