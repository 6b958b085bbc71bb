"""Load the built-in catalog (gateway/catalog/builtin.py) for a test: chosen credentials, providers on local mocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from tests.mock_gemini import API_KEY as GEMINI_KEY

# What a user's .env would hold; a test picks the ones it wants set.
CREDENTIALS = {
    "OPENROUTER_API_KEY": "sk-or-v1-test-openrouter-key",
    "GEMINI_API_KEY": GEMINI_KEY,
    "GITHUB_API_KEY": "github_pat_test_models_token",
    "LM_STUDIO_API_KEY": "lm-studio-test-key",
}
ENV_NAMES = (*CREDENTIALS, "LM_STUDIO_API_BASE")


def load_builtin_catalog(
    monkeypatch: Any,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    bases: dict[str, str] | None = None,
    unlimited: bool = True,
) -> Any:
    """Run load_catalog with exactly `env` set, then point providers at `bases` (an operator's api_base override).

    `unlimited` lifts the free-tier limits, so a test may call a 2-RPM model more than twice.
    """
    from gateway import catalog
    from gateway.catalog import builtin as catalog_data
    from gateway.models import Deployment, Provider

    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    # Never the developer's real Copilot token dir.
    monkeypatch.setattr(settings, "GITHUB_COPILOT_TOKEN_DIR", tmp_path / "no-copilot-token")
    summary = catalog_data.load()
    for name, base in (bases or {}).items():
        provider = Provider.objects.get(name=name)
        provider.api_base = base
        provider.save()
    if unlimited:
        Deployment.objects.update(rpm=None, tpm=None, rpd=None)
        catalog.invalidate()
    return summary


def all_credentials(**extra: str) -> dict[str, str]:
    return {**CREDENTIALS, **extra}
