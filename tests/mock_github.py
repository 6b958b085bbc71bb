"""A local stand-in for GitHub's device login and the Copilot API, speaking their wire protocol.

A real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer`` in a thread), so the portal's real HTTP
clients (httpx for GitHub, LiteLLM/openai for chat) talk to it exactly as they would to GitHub:

``POST /login/device/code``
    RFC 8628 device authorization: ``device_code``, ``user_code``, ``verification_uri``, ``expires_in``,
    ``interval``. Only for the Copilot plugins' OAuth app (``CLIENT_ID``).
``POST /login/oauth/access_token``
    The device-flow poll. Answers 200 with ``{"error": "authorization_pending" | "slow_down" |
    "expired_token" | "access_denied" | "incorrect_device_code", ...}`` until the scripted outcome is
    success, then ``{"access_token": "ghu_…", "token_type": "bearer", "scope": "read:user"}``. Like
    GitHub, it answers form-encoded unless the client sends ``Accept: application/json``.
``GET /copilot_internal/v2/token``
    Trades a GitHub token (``Authorization: token …``) for a short-lived Copilot token: ``token``,
    ``expires_at``, ``refresh_in``, ``endpoints.api`` (this server). 401 "Bad credentials" for a revoked
    or unknown GitHub token.
``GET /copilot_internal/user``
    The seat: plan, sku, ``quota_snapshots`` (paid plans) or ``limited_user_quotas`` (the free plan).
``POST /chat/completions``
    OpenAI-style chat (JSON or SSE), only with ``Authorization: Bearer <live Copilot token>`` and the
    editor headers Copilot insists on (``Editor-Version``, ``Editor-Plugin-Version``,
    ``Copilot-Integration-Id``, an editor ``User-Agent``); 400 "bad request: missing …" otherwise.

Every request is recorded in ``requests`` (method, path, headers with lower-case names, parsed body).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

CLIENT_ID = "Iv1.b507a08c87ecfe98"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
EDITOR_HEADERS = ("editor-version", "editor-plugin-version", "copilot-integration-id", "user-agent")
POLL_ERRORS = ("authorization_pending", "slow_down", "expired_token", "access_denied")

PAID_SEAT: dict[str, Any] = {
    "login": "octo-operator",
    "access_type_sku": "plus_monthly_subscriber_quota",
    "analytics_tracking_id": "0123456789abcdef",
    "assigned_date": "2025-01-10T09:00:00+00:00",
    "can_signup_for_limited": False,
    "chat_enabled": True,
    "copilot_plan": "individual",
    "organization_login_list": [],
    "organization_list": [],
    "quota_reset_date": "2025-12-01",
    "quota_snapshots": {
        "chat": {"entitlement": 0, "overage_count": 0, "overage_permitted": False, "percent_remaining": 100.0,
                 "quota_id": "chat", "quota_remaining": 0.0, "remaining": 0, "unlimited": True},
        "completions": {"entitlement": 0, "overage_count": 0, "overage_permitted": False, "percent_remaining": 100.0,
                        "quota_id": "completions", "quota_remaining": 0.0, "remaining": 0, "unlimited": True},
        "premium_interactions": {"entitlement": 300, "overage_count": 0, "overage_permitted": False,
                                 "percent_remaining": 87.3, "quota_id": "premium_interactions",
                                 "quota_remaining": 262.0, "remaining": 262, "unlimited": False},
    },
}

FREE_SEAT: dict[str, Any] = {
    "login": "octo-free",
    "access_type_sku": "free_limited_copilot",
    "chat_enabled": True,
    "copilot_plan": "free",
    "organization_login_list": [],
    "limited_user_quotas": {"chat": 37, "completions": 1800},
    "monthly_quotas": {"chat": 50, "completions": 2000},
    "limited_user_reset_date": "2025-12-05",
}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any


class MockGitHub:
    """Knobs are plain attributes; ``reset()`` restores them (and forgets every token) between tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.reset()

    def reset(self) -> None:
        self.requests: list[Recorded] = []
        # Answers of the device-flow poll, consumed in order; once empty every poll succeeds.
        self.poll_script: list[str] = []
        self.interval = 0  # seconds GitHub asks clients to wait between polls (5 on github.com; 0 keeps tests fast)
        self.expires_in = 900
        self.token_ttl = 1800  # lifetime of a Copilot token
        self.token_status: int | None = None  # force an error on the token exchange (403: no seat, 500: outage)
        self.user_status: int | None = None
        self.seat: dict[str, Any] = dict(PAID_SEAT)
        self.chat_reply = "Hello from Copilot"
        self.reject_all_copilot_tokens = False  # a seat problem: Copilot refuses even fresh tokens
        self.device_codes: dict[str, str] = {}  # device_code -> user_code
        self.github_tokens: set[str] = set()
        self.copilot_tokens: dict[str, float] = {}  # token -> expires_at

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> MockGitHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- helpers for tests ------------------------------------------------------------------------------------------

    def issue_github_token(self) -> str:
        """A GitHub OAuth token as the device flow would hand out (for tests that start connected)."""
        token = "ghu_" + secrets.token_hex(18)
        self.github_tokens.add(token)
        return token

    def revoke_all(self) -> None:
        """The user revoked the app on github.com: every GitHub and Copilot token stops working."""
        self.github_tokens.clear()
        self.copilot_tokens.clear()

    def expire_copilot_tokens(self) -> None:
        self.copilot_tokens.clear()

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    # -- endpoints ----------------------------------------------------------------------------------------------------

    def device_code(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("client_id") != CLIENT_ID:
            return 400, {"error": "unauthorized_client", "error_description": "Unknown client_id."}
        device_code = secrets.token_hex(20)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        with self._lock:
            self.device_codes[device_code] = user_code
        return 200, {"device_code": device_code, "user_code": user_code,
                     "verification_uri": "https://github.com/login/device",
                     "expires_in": self.expires_in, "interval": self.interval}

    def access_token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("grant_type") != DEVICE_GRANT:
            return 200, _oauth_error("unsupported_grant_type", "The grant type is not supported.")
        if body.get("client_id") != CLIENT_ID or body.get("device_code") not in self.device_codes:
            return 200, _oauth_error("incorrect_device_code", "The device_code provided is not valid.")
        with self._lock:
            outcome = self.poll_script.pop(0) if self.poll_script else "success"
        if outcome == "slow_down":
            self.interval += 5
            return 200, {**_oauth_error("slow_down", "Too many requests have been made in the same timeframe."),
                         "interval": self.interval}
        if outcome in POLL_ERRORS:
            if outcome in ("expired_token", "access_denied"):
                self.device_codes.pop(body["device_code"], None)
            return 200, _oauth_error(outcome, outcome.replace("_", " "))
        self.device_codes.pop(body["device_code"], None)
        return 200, {"access_token": self.issue_github_token(), "token_type": "bearer", "scope": "read:user"}

    def copilot_token(self, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if not self._github_token_ok(headers):
            return 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        if self.token_status:
            return self.token_status, {"message": "Resource not accessible by integration",
                                       "documentation_url": "https://docs.github.com/rest"}
        expires_at = int(time.time()) + self.token_ttl
        # The shape of real Copilot tokens: signed fields, not a JWT.
        fields = f"tid={secrets.token_hex(16)};exp={expires_at};sku=plus_monthly_subscriber_quota;chat=1"
        token = f"{fields}:{secrets.token_hex(32)}"
        with self._lock:
            self.copilot_tokens[token] = expires_at
        return 200, {
            "token": token, "expires_at": expires_at, "refresh_in": max(self.token_ttl - 300, 0),
            "chat_enabled": True, "sku": "plus_monthly_subscriber_quota",
            "endpoints": {"api": self.url, "origin-tracker": "https://origin-tracker.individual.githubcopilot.com",
                          "proxy": "https://proxy.individual.githubcopilot.com",
                          "telemetry": "https://telemetry.individual.githubcopilot.com"},
        }

    def copilot_user(self, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if not self._github_token_ok(headers):
            return 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        if self.user_status:
            return self.user_status, {"message": "Server Error"}
        return 200, {**self.seat, "endpoints": {"api": self.url}}

    def chat_problem(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why Copilot would refuse this chat request (status, plain-text body), or None."""
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        expires_at = self.copilot_tokens.get(token)
        if expires_at is None or expires_at <= time.time() or self.reject_all_copilot_tokens:
            return 401, "unauthorized: token expired"
        for name in EDITOR_HEADERS:
            if not headers.get(name):
                return 400, f"bad request: missing {name.title()} header for IDE auth"
        if headers["user-agent"].startswith("OpenAI/"):
            return 400, "bad request: User-Agent is not an editor integration"
        return None

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        words = self.chat_reply.split()
        limit = body.get("max_tokens")
        if isinstance(limit, int) and limit > 0:
            words = words[:limit]
        return {
            "id": "chatcmpl-copilot-" + secrets.token_hex(6), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 9 + len(words)},
        }

    def _github_token_ok(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() in ("token", "bearer") and token in self.github_tokens


def _oauth_error(error: str, description: str) -> dict[str, Any]:
    return {"error": error, "error_description": description,
            "error_uri": "https://docs.github.com/developers/apps/authorizing-oauth-apps#error-codes-for-the-device-flow"}


def _handler_for(github: MockGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _body(self) -> Any:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not raw:
                return {}
            if "json" in (self.headers.get("Content-Type") or ""):
                return json.loads(raw)
            return dict(parse_qsl(raw.decode()))  # GitHub's OAuth endpoints also take form posts

        def _record(self, body: Any) -> dict[str, str]:
            headers = {name.lower(): value for name, value in self.headers.items()}
            github.requests.append(Recorded(self.command, self.path.split("?")[0], headers, body))
            return headers

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_oauth(self, status: int, payload: dict[str, Any]) -> None:
            if "application/json" in self.headers.get("Accept", ""):
                self._send(status, payload)
            else:  # GitHub's default answer format for the OAuth endpoints
                self._send(status, urlencode(payload).encode(), "application/x-www-form-urlencoded")

        def do_POST(self) -> None:
            body = self._body()
            headers = self._record(body)
            path = self.path.split("?")[0]
            if path == "/login/device/code":
                self._send_oauth(*github.device_code(body))
            elif path == "/login/oauth/access_token":
                self._send_oauth(*github.access_token(body))
            elif path in ("/chat/completions", "/v1/chat/completions"):
                self._chat(headers, body)
            else:
                self._send(404, {"message": "Not Found"})

        def do_GET(self) -> None:
            headers = self._record(None)
            path = self.path.split("?")[0]
            if path == "/copilot_internal/v2/token":
                self._send(*github.copilot_token(headers))
            elif path == "/copilot_internal/user":
                self._send(*github.copilot_user(headers))
            else:
                self._send(404, {"message": "Not Found"})

        def _chat(self, headers: dict[str, str], body: dict[str, Any]) -> None:
            problem = github.chat_problem(headers)
            if problem is not None:
                self._send(problem[0], problem[1].encode(), "text/plain; charset=utf-8")
                return
            result = github.completion(body)
            if not body.get("stream"):
                self._send(200, result)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            base = {k: result[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
            text = result["choices"][0]["message"]["content"]
            pieces = [{"role": "assistant", "content": ""}] + [{"content": w} for w in text.split(" ")]
            for i, delta in enumerate(pieces):
                if i > 1:
                    delta = {"content": " " + delta["content"]}
                self._event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event({**base, "choices": [], "usage": result["usage"]})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, payload: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

    return Handler
