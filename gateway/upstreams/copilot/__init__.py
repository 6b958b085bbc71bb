"""GitHub Copilot: the device-flow login, the short-lived Copilot token, and the headers Copilot wants.

How a Copilot call works:

1. An operator opens "Connect GitHub Copilot" in the admin. `start_connect()` (login.py) asks GitHub for a
   device code; the page shows the user code and the verification link and polls `poll_connect()`, which asks
   GitHub whether the user has authorized it. The GitHub OAuth token it finally gets is stored encrypted in
   `CopilotAuth` (the database), so it survives restarts and every worker and host sees it.
2. A /v1 call to a `github_copilot` deployment needs a Copilot token: `session_for()` (token.py) takes it from
   this process's memory, else from the shared cache, else from the database, else exchanges the GitHub token
   for a new one at `GET {api}/copilot_internal/v2/token` (github.py). That token lasts about 30 minutes and
   names the API host of the account's plan (`endpoints.api`).
3. The call goes to `{endpoints.api}/chat/completions` as an OpenAI-compatible call, with the editor and
   integration headers Copilot requires (headers.py, `call_kwargs()`).

Nothing here starts a device flow on its own: only the admin page does. Why we do not use LiteLLM's
`github_copilot/` provider is explained in the README ("GitHub Copilot").
"""

from gateway.upstreams.copilot.github import (
    ACCOUNT_FIELDS,
    GITHUB_TIMEOUT,
    REFRESH_MARGIN,
    CopilotToken,
    DeviceFlow,
    GitHubError,
    PollResult,
    account_summary,
    exchange_token,
    expires_at_datetime,
    fetch_account,
    poll_device_flow,
    read_token_dir,
    start_device_flow,
    trusted_api_base,
)
from gateway.upstreams.copilot.headers import (
    DEFAULT_API_BASE,
    EDITOR_PLUGIN_VERSION,
    EDITOR_VERSION,
    GITHUB_API_VERSION,
    INTEGRATION_ID,
    USER_AGENT,
    copilot_headers,
    github_headers,
)
from gateway.upstreams.copilot.login import (
    disconnect,
    handle_action,
    import_token_dir,
    page_context,
    poll_connect,
    quota_rows,
    refresh_account,
    start_connect,
)
from gateway.upstreams.copilot.token import (
    CACHE_KEY,
    RECHECK_SECONDS,
    UNUSABLE_SECONDS,
    aforget,
    after_rejection,
    call_kwargs,
    forget,
    forget_all,
    not_connected,
    reconnect_required,
    session_for,
    token_rejected,
)

__all__ = [
    "ACCOUNT_FIELDS", "CACHE_KEY", "DEFAULT_API_BASE", "EDITOR_PLUGIN_VERSION", "EDITOR_VERSION", "GITHUB_API_VERSION",
    "GITHUB_TIMEOUT", "INTEGRATION_ID", "RECHECK_SECONDS", "REFRESH_MARGIN", "UNUSABLE_SECONDS", "USER_AGENT",
    "CopilotToken", "DeviceFlow", "GitHubError", "PollResult", "account_summary", "aforget", "after_rejection",
    "call_kwargs", "copilot_headers", "disconnect", "exchange_token", "expires_at_datetime", "fetch_account",
    "forget", "forget_all", "github_headers", "handle_action", "import_token_dir", "not_connected", "page_context",
    "poll_connect", "poll_device_flow", "quota_rows", "read_token_dir", "reconnect_required", "refresh_account",
    "session_for", "start_connect", "start_device_flow", "token_rejected", "trusted_api_base",
]
