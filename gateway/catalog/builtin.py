"""The built-in catalog: the user's five providers and 33 models, and `load()` that puts them in place.

Naming: a model served by one provider only is called by its vendor (`google/gemini-2.5-flash`,
`anthropic/claude-sonnet-4.5`); local LM Studio models keep their bare names (`gemma-3-12b`); a model that
several providers serve gets the provider in front (`openrouter/`, `github/`, `copilot/`), so every
public name is unique and says where it goes. These are the names of the user's LiteLLM config, so an
imported config.yaml and this catalog describe the same rows.

Limits are the free-tier figures the user configured. `verified` says where the upstream id was checked
(the README lists the ones that are not).

load() only ever creates. A row that exists is never changed, whatever the operator did to it; an entry
created once and later deleted is not created again (CatalogSeed remembers it; --restore brings it back).
Providers whose credential is not set are created disabled and enabled by the first load() that finds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from gateway import catalog
from gateway.models import CatalogSeed, Deployment, Provider, ProviderKind
from gateway.upstreams import providers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    kind: str
    credential_ref: str = ""
    api_base: str = ""


@dataclass(frozen=True)
class ModelSpec:
    public_name: str
    provider: str
    upstream_model: str
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    vision: bool = False
    mode: str = "chat"  # LiteLLM's model_info.mode: chat, audio_speech, embedding
    verified: str = ""  # where the upstream id was checked; "" = not verified

    def model_info(self) -> dict[str, Any]:
        return {"mode": self.mode, "supports_vision": self.vision}


# Named like the providers import_litellm_config creates (after their kind), with the same api_base and
# credential reference, so an import and this catalog converge on the same rows in either order.
PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec("openrouter", ProviderKind.OPENROUTER, "os.environ/OPENROUTER_API_KEY"),
    ProviderSpec("gemini", ProviderKind.GEMINI, "os.environ/GEMINI_API_KEY"),
    ProviderSpec("lm_studio", ProviderKind.LM_STUDIO, "os.environ/LM_STUDIO_API_KEY", "os.environ/LM_STUDIO_API_BASE"),
    ProviderSpec("github_models", ProviderKind.GITHUB_MODELS, "os.environ/GITHUB_API_KEY"),
    ProviderSpec("github_copilot", ProviderKind.GITHUB_COPILOT),
)

_OPENROUTER = "openrouter.ai model page"
_GEMINI = "LiteLLM model map + Gemini API deprecations page"
_GITHUB = "GitHub Models docs and catalog"
_COPILOT = "LiteLLM's github_copilot model list"
_LM_STUDIO = ""  # LM Studio ids are whatever the user downloaded; these are lmstudio.ai's catalog keys

MODELS: tuple[ModelSpec, ...] = (
    # OpenRouter (free variant; the free quota is account-wide and resets at midnight UTC)
    ModelSpec("openrouter/gpt-oss-20b", "openrouter", "openai/gpt-oss-20b:free", rpm=18, verified=_OPENROUTER),
    # Google Gemini (per-day quotas reset at midnight Pacific time)
    ModelSpec("google/gemini-2.5-pro", "gemini", "gemini-2.5-pro", 2, 125_000, 50, vision=True, verified=_GEMINI),
    ModelSpec("google/gemini-2.5-flash", "gemini", "gemini-2.5-flash", 10, 250_000, 250, vision=True,
              verified=_GEMINI),
    ModelSpec("google/gemini-2.5-flash-lite", "gemini", "gemini-2.5-flash-lite", 15, 250_000, 1000, vision=True,
              verified=_GEMINI),
    ModelSpec("google/gemini-2.0-flash", "gemini", "gemini-2.0-flash", 15, 1_000_000, 200, vision=True,
              verified="Gemini API deprecations page (shut down by Google in 2026)"),
    ModelSpec("google/gemini-2.5-flash-tts", "gemini", "gemini-2.5-flash-preview-tts", 3, 10_000, 15,
              mode="audio_speech", verified=_GEMINI),
    # LM Studio on the user's machine (no limits)
    ModelSpec("qwen3-vl-4b", "lm_studio", "qwen/qwen3-vl-4b", vision=True),
    ModelSpec("qwen3-vl-8b", "lm_studio", "qwen/qwen3-vl-8b", vision=True),
    ModelSpec("qwen3-vl-30b", "lm_studio", "qwen/qwen3-vl-30b", vision=True),
    ModelSpec("qwen3-coder-30b", "lm_studio", "qwen/qwen3-coder-30b"),
    ModelSpec("gemma-3-1b", "lm_studio", "google/gemma-3-1b"),
    ModelSpec("gemma-3-4b", "lm_studio", "google/gemma-3-4b", vision=True),
    ModelSpec("gemma-3-12b", "lm_studio", "google/gemma-3-12b", vision=True),
    ModelSpec("gemma-3-27b", "lm_studio", "google/gemma-3-27b", vision=True),
    ModelSpec("gpt-oss-20b", "lm_studio", "openai/gpt-oss-20b"),
    # GitHub Models (models.github.ai ids carry the publisher)
    ModelSpec("github/gpt-4o-mini", "github_models", "openai/gpt-4o-mini", rpm=2, vision=True, verified=_GITHUB),
    ModelSpec("github/gpt-4.1", "github_models", "openai/gpt-4.1", rpm=2, vision=True, verified=_GITHUB),
    ModelSpec("github/gpt-4o", "github_models", "openai/gpt-4o", rpm=2, vision=True, verified=_GITHUB),
    ModelSpec("github/gpt-5-mini", "github_models", "openai/gpt-5-mini", rpm=2, vision=True, verified=_GITHUB),
    ModelSpec("github/gpt-5", "github_models", "openai/gpt-5", rpm=2, vision=True, verified=_GITHUB),
    # GitHub Copilot (subscription; connect it in the admin)
    ModelSpec("copilot/gpt-4o-mini", "github_copilot", "gpt-4o-mini", rpm=10, verified=_COPILOT),
    ModelSpec("copilot/gpt-4.1", "github_copilot", "gpt-4.1", rpm=10, vision=True, verified=_COPILOT),
    ModelSpec("copilot/gpt-4o", "github_copilot", "gpt-4o", rpm=10, vision=True, verified=_COPILOT),
    ModelSpec("copilot/gpt-5-mini", "github_copilot", "gpt-5-mini", rpm=10, vision=True, verified=_COPILOT),
    ModelSpec("copilot/gpt-5", "github_copilot", "gpt-5", rpm=10, vision=True, verified=_COPILOT),
    ModelSpec("anthropic/claude-sonnet-4.5", "github_copilot", "claude-sonnet-4.5", rpm=10, vision=True,
              verified=_COPILOT),
    ModelSpec("anthropic/claude-opus-4.5", "github_copilot", "claude-opus-4.5", rpm=3, vision=True,
              verified=_COPILOT),
    ModelSpec("anthropic/claude-haiku-4.5", "github_copilot", "claude-haiku-4.5", rpm=10, vision=True,
              verified=_COPILOT),
    ModelSpec("google/gemini-3-pro-preview", "github_copilot", "gemini-3-pro-preview", rpm=10, vision=True,
              verified=_COPILOT),
    ModelSpec("google/gemini-3-flash-preview", "github_copilot", "gemini-3-flash-preview", rpm=10, vision=True),
    ModelSpec("copilot/gemini-2.5-pro", "github_copilot", "gemini-2.5-pro", rpm=10, vision=True, verified=_COPILOT),
    ModelSpec("copilot/grok-code-fast-1", "github_copilot", "grok-code-fast-1", rpm=10),
    # "Raptor mini" in the Copilot model picker; its API id is an internal code name.
    ModelSpec("copilot/raptor-mini", "github_copilot", "oswe-vscode-prime", rpm=10),
)


@dataclass
class LoadSummary:
    created: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)  # providers whose credential appeared
    waiting: list[str] = field(default_factory=list)  # providers still disabled for want of a credential
    skipped_deleted: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unchanged: int = 0

    def __str__(self) -> str:
        parts = [f"{len(self.created)} created", f"{self.unchanged} already present"]
        if self.enabled:
            parts.append(f"enabled (credential found): {', '.join(self.enabled)}")
        if self.waiting:
            parts.append(f"disabled until their credential is set: {', '.join(self.waiting)}")
        if self.skipped_deleted:
            parts.append(f"{len(self.skipped_deleted)} deleted by an operator and left out (--restore)")
        if self.conflicts:
            parts.append(f"conflicts: {'; '.join(self.conflicts)}")
        return "; ".join(parts)


def load(restore: bool = False) -> LoadSummary:
    """Create what is missing of the built-in catalog, in one transaction; safe to run on every start."""
    try:
        summary = _load(restore)
    except IntegrityError:
        # Another process loaded at the same moment; its rows are committed now, so a second pass finds them.
        summary = _load(restore)
    transaction.on_commit(catalog.invalidate)
    return summary


def _load(restore: bool) -> LoadSummary:
    summary = LoadSummary()
    with transaction.atomic():
        seeded = set(CatalogSeed.objects.values_list("key", flat=True))
        rows = {spec.name: _provider(spec, seeded, restore, summary) for spec in PROVIDERS}
        taken = set(Deployment.objects.values_list("public_name", flat=True))
        for spec in MODELS:
            _model(spec, rows.get(spec.provider), taken, seeded, restore, summary)
    return summary


def _seed(key: str, seeded: set[str]) -> None:
    if key not in seeded:
        CatalogSeed.objects.get_or_create(key=key)
        seeded.add(key)


def _provider(spec: ProviderSpec, seeded: set[str], restore: bool, summary: LoadSummary) -> Provider | None:
    key = f"provider:{spec.name}"
    provider = Provider.objects.filter(name=spec.name).first()
    if provider is None:
        if key in seeded and not restore:
            summary.skipped_deleted.append(key)
            return None
        provider = Provider(name=spec.name, kind=spec.kind, api_base=spec.api_base)
        provider.set_secret(spec.credential_ref)
        ready = providers.credential_ready(provider)
        provider.enabled, provider.awaiting_credential = ready, not ready
        provider.save()
        summary.created.append(key)
    elif provider.kind != spec.kind:
        # An operator's own provider took the name; its models would land somewhere they do not belong.
        summary.conflicts.append(f"provider '{spec.name}' exists with kind {provider.kind}, its models are left out")
        _seed(key, seeded)
        return None
    elif provider.awaiting_credential and providers.credential_ready(provider):
        provider.enable_if_awaiting_credential()
        summary.enabled.append(spec.name)
    else:
        summary.unchanged += 1
    if provider.awaiting_credential:
        summary.waiting.append(spec.name)
    _seed(key, seeded)
    return provider


def _model(spec: ModelSpec, provider: Provider | None, taken: set[str], seeded: set[str], restore: bool,
           summary: LoadSummary) -> None:
    key = f"model:{spec.public_name}"
    if spec.public_name in taken:
        # Whatever serves this name now (an operator's edit, an imported config) is left exactly as it is.
        summary.unchanged += 1
        _seed(key, seeded)
        return
    if provider is None:
        return  # its provider was deleted or taken by another kind: already reported
    if key in seeded and not restore:
        summary.skipped_deleted.append(key)
        return
    Deployment.objects.create(
        public_name=spec.public_name,
        provider=provider,
        upstream_model=spec.upstream_model,
        rpm=spec.rpm,
        tpm=spec.tpm,
        rpd=spec.rpd,
        model_info=spec.model_info(),
    )
    taken.add(spec.public_name)
    summary.created.append(key)
    _seed(key, seeded)
