"""Talking to GitHub: the device-flow requests, the Copilot token exchange and the account status.

Through the portal's one HTTP client (gateway.upstreams.client), so GitHub is reached through the same proxy rules
as every provider; a Copilot provider's own proxy URL applies to its GitHub calls too.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import certifi
import orjson
import yarl
from django.conf import settings

from gateway import redact
from gateway.upstreams import client
from gateway.upstreams.copilot.headers import DEFAULT_API_BASE, github_headers

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_SCOPE = "read:user"
GITHUB_TIMEOUT = 15.0
# A Copilot token is replaced this long before GitHub's expires_at, so no call starts with a dying token.
REFRESH_MARGIN = 300.0


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


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building the CA store costs ~0.1 s; every GitHub call would pay it with a fresh client.
    return ssl.create_default_context(cafile=certifi.where())


async def _github(method: str, url: str, *, github_token: str = "", json: dict[str, Any] | None = None,
                  proxy_url: str = "") -> Any:
    """One GitHub request; the parsed JSON body, or GitHubError with GitHub's status."""
    target = yarl.URL(url)
    try:
        async with client.session().request(
            method, target, headers=github_headers(github_token), json=json, ssl=_tls(),
            proxy=client.proxy_for(target, proxy_url), timeout=aiohttp.ClientTimeout(total=GITHUB_TIMEOUT),
        ) as response:
            status, text = response.status, await response.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as e:
        raise GitHubError(f"could not reach GitHub ({type(e).__name__}: {e})") from None
    if status >= 400:
        raise GitHubError(f"GitHub answered {status}: {_error_text(text)}", status)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise GitHubError(f"GitHub answered something that is not JSON: {text[:200]!r}") from None


def _error_text(text: str) -> str:
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", error))[:300]
        return str(body.get("message") or body.get("error_description") or error or body)[:300]
    return str(body)[:300]


async def start_device_flow(proxy_url: str = "") -> DeviceFlow:
    data = await _github(
        "POST",
        f"{settings.GITHUB_COPILOT_GITHUB_URL}/login/device/code",
        json={"client_id": settings.GITHUB_COPILOT_CLIENT_ID, "scope": DEVICE_SCOPE},
        proxy_url=proxy_url,
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


async def poll_device_flow(device_code: str, proxy_url: str = "") -> PollResult:
    """Ask GitHub once whether the user has entered the code (RFC 8628 section 3.4/3.5)."""
    data = await _github(
        "POST",
        f"{settings.GITHUB_COPILOT_GITHUB_URL}/login/oauth/access_token",
        json={"client_id": settings.GITHUB_COPILOT_CLIENT_ID, "device_code": device_code, "grant_type": DEVICE_GRANT},
        proxy_url=proxy_url,
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


async def exchange_token(github_token: str, proxy_url: str = "") -> CopilotToken:
    """Trade the GitHub OAuth token for a short-lived Copilot token (what the editor plugins do)."""
    data = await _github("GET", f"{settings.GITHUB_COPILOT_API_URL}/copilot_internal/v2/token",
                         github_token=github_token, proxy_url=proxy_url)
    try:
        token, expires_at = str(data["token"]), float(data["expires_at"])
    except (KeyError, TypeError, ValueError):
        raise GitHubError("GitHub's Copilot token answer lacks token or expires_at") from None
    endpoints = data.get("endpoints") if isinstance(data.get("endpoints"), dict) else {}
    return CopilotToken(token, expires_at, trusted_api_base(endpoints.get("api")))


async def fetch_account(github_token: str, proxy_url: str = "") -> dict[str, Any]:
    """The seat, plan and premium-request quota GitHub reports for the account."""
    data = await _github("GET", f"{settings.GITHUB_COPILOT_API_URL}/copilot_internal/user",
                         github_token=github_token, proxy_url=proxy_url)
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


def expires_at_datetime(expires_at: float) -> datetime:
    return datetime.fromtimestamp(expires_at, tz=UTC)
