"""Provider kinds: where each one lives, how it authenticates, and how a catalog Route becomes a LiteLLM call.

Every kind is called through LiteLLM. What we add is what LiteLLM would otherwise guess or look up at
call time: the base URL (always passed explicitly: no environment lookups or outdated defaults such as
LiteLLM's azure endpoint for GitHub Models), the key, the headers a provider wants, and retries off.
A provider's own `api_base` overrides the kind's default (that is also how tests reach local mocks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from gateway.models import ProviderKind

if TYPE_CHECKING:
    from gateway.catalog import Route
    from gateway.models import Provider


@dataclass(frozen=True)
class Kind:
    """What a provider kind needs that a Provider row does not say."""

    api_base: str = ""  # default base URL; "" = the provider row must give one (or LiteLLM's own default)
    base_env: str = ""  # environment variable holding the base URL (LM Studio's LM_STUDIO_API_BASE)
    key_env: str = ""  # the credential the catalog references as os.environ/NAME
    key_required: bool = True  # False for local servers that accept any key
    reset_timezone: str = "UTC"  # when the provider's per-day quota starts over


KINDS: dict[str, Kind] = {
    ProviderKind.OPENROUTER: Kind(api_base="https://openrouter.ai/api/v1", key_env="OPENROUTER_API_KEY"),
    # The native Gemini API (not its OpenAI-compatible layer): LiteLLM appends /models/{id}:generateContent.
    ProviderKind.GEMINI: Kind(
        api_base="https://generativelanguage.googleapis.com/v1beta",
        key_env="GEMINI_API_KEY",
        reset_timezone="America/Los_Angeles",
    ),
    # LiteLLM's github/ provider still defaults to the retired models.inference.ai.azure.com.
    ProviderKind.GITHUB_MODELS: Kind(api_base="https://models.github.ai/inference", key_env="GITHUB_API_KEY"),
    # The Copilot token comes from the device flow (gateway/upstreams/copilot.py), not from an environment variable.
    ProviderKind.GITHUB_COPILOT: Kind(key_required=False),
    ProviderKind.LM_STUDIO: Kind(base_env="LM_STUDIO_API_BASE", key_env="LM_STUDIO_API_KEY", key_required=False),
    ProviderKind.OPENAI_COMPATIBLE: Kind(key_required=False),
    ProviderKind.OPENAI: Kind(api_base="https://api.openai.com/v1", key_env="OPENAI_API_KEY"),
    ProviderKind.ANTHROPIC: Kind(key_env="ANTHROPIC_API_KEY"),
    ProviderKind.LITELLM: Kind(key_required=False),
}


def kind_of(name: str) -> Kind:
    return KINDS.get(name, Kind(key_required=False))


def default_reset_timezone(kind: str) -> str:
    return kind_of(kind).reset_timezone


def api_base_for(provider: Provider) -> str:
    """The base URL to call: the provider's own, else the kind's environment variable, else its default."""
    spec = kind_of(provider.kind)
    base = provider.resolved_api_base() or (os.environ.get(spec.base_env, "") if spec.base_env else "")
    base = base or spec.api_base
    if provider.kind == ProviderKind.LM_STUDIO and base and urlsplit(base).path in ("", "/"):
        # LM Studio serves the OpenAI API under /v1; "http://host:1234" is a common way to write it.
        base = base.rstrip("/") + "/v1"
    return base


def credential_ready(provider: Provider) -> bool:
    """Whether the provider can be called at all: its key is set, or (local servers) its address is known."""
    spec = kind_of(provider.kind)
    if provider.kind == ProviderKind.GITHUB_COPILOT:
        return copilot_connected(provider)
    if provider.kind in (ProviderKind.LM_STUDIO, ProviderKind.OPENAI_COMPATIBLE):
        return bool(api_base_for(provider))
    if not spec.key_required:
        return True
    try:
        return bool(provider.api_key())
    except ValueError:  # a stored key that no longer decrypts (SECRET_KEY changed)
        return False


def copilot_connected(provider: Provider) -> bool:
    """The provider has a Copilot login, or a LiteLLM token dir it will adopt (see gateway.upstreams.copilot)."""
    from gateway.models import CopilotAuth
    from gateway.upstreams import copilot

    auth = CopilotAuth.objects.filter(provider_id=provider.pk).first() if provider.pk else None
    if auth is not None and (auth.connected or auth.source == "disconnected"):
        return auth.connected
    return bool(copilot.read_token_dir())


def default_headers(kind: str) -> dict[str, str]:
    """Headers a kind sends on every call (a provider's or deployment's extra_headers override them)."""
    if kind == ProviderKind.OPENROUTER:
        # OpenRouter attributes traffic to an app with these (its rankings and the account's activity page).
        # An empty referer when none is configured: LiteLLM would otherwise send https://litellm.ai.
        return {"X-Title": settings.OPENROUTER_APP_NAME, "HTTP-Referer": settings.OPENROUTER_SITE_URL}
    return {}


def merge_params(provider_extra: dict[str, Any], deployment_params: dict[str, Any]) -> dict[str, Any]:
    """A deployment's LiteLLM parameters over its provider's; extra_headers are merged header by header."""
    merged = {**provider_extra, **deployment_params}
    headers = {**(provider_extra.get("extra_headers") or {}), **(deployment_params.get("extra_headers") or {})}
    if headers:
        merged["extra_headers"] = headers
    return merged


def call_kwargs(route: Route, fields: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of one LiteLLM call (acompletion, aembedding, …) for this deployment."""
    kwargs = {**fields, **route.params}
    headers = {**default_headers(route.kind), **(route.params.get("extra_headers") or {})}
    if headers:
        kwargs["extra_headers"] = headers
    kwargs.update(
        model=route.litellm_model,
        # Retries and fallback are the router's; LiteLLM's own would hide 429s and double the wait.
        num_retries=0,
        max_retries=0,
        timeout=settings.UPSTREAM_TIMEOUT,
    )
    # Passing api_base explicitly keeps LiteLLM from looking anything up (synchronously) itself.
    if route.api_base:
        kwargs["api_base"] = route.api_base
    # Local servers (LM Studio, vLLM) often need no key, but the OpenAI client insists on one.
    kwargs["api_key"] = route.api_key or "no-key"
    return kwargs
