"""LiteLLM config.yaml's keys as the portal reads them: which become columns, which settings are honoured,
and ConfigError with the helpers that say where and what a problem is (shared by litellm_yaml, litellm_validate,
litellm_import and litellm_export)."""

from __future__ import annotations

from typing import Any

from gateway.models import ProviderKind

# The LiteLLM model-string prefix each kind is recognised by; "openai" depends on api_base (see split_model).
KIND_BY_PREFIX: dict[str, str] = {
    "openrouter": ProviderKind.OPENROUTER,
    "gemini": ProviderKind.GEMINI,
    "github": ProviderKind.GITHUB_MODELS,
    "github_copilot": ProviderKind.GITHUB_COPILOT,
    "lm_studio": ProviderKind.LM_STUDIO,
    "anthropic": ProviderKind.ANTHROPIC,
}
LIMIT_KEYS = ("rpm", "tpm", "rpd")
# Per-deployment timeouts (seconds) and retries: columns the router honours, written back on export.
TIMEOUT_KEYS = ("timeout", "stream_timeout")
RETRY_KEYS = ("num_retries", "max_retries")  # LiteLLM's two names for it; stored once, exported as num_retries
# litellm_params keys that become columns; every other key is kept in Deployment.litellm_params.
COLUMN_PARAMS = ("model", "api_base", "api_key", *LIMIT_KEYS, *TIMEOUT_KEYS, *RETRY_KEYS)
# The settings the router honours, by section, with the type each value must have (checked at import, so a
# mistake is refused with its line instead of being ignored at request time).
NUMBER = "a positive number of seconds"
COUNT = "a non-negative integer"
FLAG = "true or false"
TEXT = "a string"
FALLBACKS = "a list of {model: [fallback models]}"
HONOURED_SETTINGS: dict[str, dict[str, str]] = {
    "router_settings": {"timeout": NUMBER, "num_retries": COUNT, "fallbacks": FALLBACKS,
                        "context_window_fallbacks": FALLBACKS, "cooldown_time": NUMBER, "allowed_fails": COUNT},
    "litellm_settings": {"request_timeout": NUMBER, "num_retries": COUNT, "drop_params": FLAG,
                         "fallbacks": FALLBACKS, "context_window_fallbacks": FALLBACKS},
    "general_settings": {"master_key": TEXT},
}
ENTRY_KEYS = ("model_name", "litellm_params", "model_info")


class ConfigError(ValueError):
    """A config that cannot be imported; the message names the file, the line and the reason."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def where(source: str, line: int | None) -> str:
    return f"{source} line {line}" if line else source


def got(value: Any) -> str:
    """A value as an error message shows it: its shape for containers, a short repr otherwise."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
