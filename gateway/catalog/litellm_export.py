"""Exporting the catalog as a LiteLLM config.yaml, so a setup can move back: export_config() builds the dict
(literal secrets left out unless asked for), dump_yaml() writes it the way LiteLLM's docs do."""

from __future__ import annotations

import re
from typing import Any

import yaml

from gateway import crypto
from gateway.catalog.litellm_keys import COLUMN_PARAMS, ENTRY_KEYS, LIMIT_KEYS, TIMEOUT_KEYS, ConfigError
from gateway.catalog.litellm_yaml import plain
from gateway.models import ENV_PREFIX, ConfigSetting, Deployment, Provider


def export_config(include_secrets: bool = False, include_disabled: bool = False) -> dict[str, Any]:
    """The catalog as a LiteLLM config dict.

    Without include_secrets, literal keys (api_key, master_key, …) are left out; os.environ/ references are
    always kept. Disabled deployments and providers are left out unless include_disabled, because LiteLLM
    has no way to say "configured but off" and would serve them.
    """
    rows = Deployment.objects.select_related("provider").order_by("id")
    if not include_disabled:
        rows = rows.filter(enabled=True, provider__enabled=True)
    config: dict[str, Any] = {"model_list": [_export_entry(d, include_secrets) for d in _in_file_order(list(rows))]}
    for setting in ConfigSetting.objects.exclude(key="model_list").order_by("key"):
        config[setting.key] = setting.value if include_secrets else _without_secrets(setting.value)
    return config


def _in_file_order(deployments: list[Deployment]) -> list[Deployment]:
    # Keep names in the order they were first added (close to the imported file's layout), and a name's
    # deployments in priority order, because re-importing derives priority from that order.
    first_id: dict[str, int] = {}
    for d in deployments:
        first_id.setdefault(d.public_name, d.id)
    return sorted(deployments, key=lambda d: (first_id[d.public_name], d.priority, d.id))


def _export_entry(deployment: Deployment, include_secrets: bool) -> dict[str, Any]:
    provider = deployment.provider
    params: dict[str, Any] = {"model": deployment.litellm_model()}
    if provider.api_base:
        params["api_base"] = provider.api_base
    api_key = _export_api_key(provider, include_secrets)
    if api_key:
        params["api_key"] = api_key
    for key in (*LIMIT_KEYS, *TIMEOUT_KEYS, "num_retries"):
        value = getattr(deployment, key)
        if value is not None:
            # 2.0 seconds was written 2: keep the file as the operator wrote it.
            params[key] = int(value) if isinstance(value, float) and value.is_integer() else value
    # Provider-wide extras apply to every call (as in the catalog), so they belong in each entry.
    extras = {**provider.extra, **deployment.litellm_params}
    params.update({k: v for k, v in _secrets_filter(extras, include_secrets).items() if k not in COLUMN_PARAMS})
    entry: dict[str, Any] = {"model_name": deployment.public_name, "litellm_params": params}
    if deployment.model_info:
        entry["model_info"] = deployment.model_info
    entry.update({k: v for k, v in _secrets_filter(deployment.extra, include_secrets).items() if k not in ENTRY_KEYS})
    return entry


def _export_api_key(provider: Provider, include_secrets: bool) -> str:
    if provider.credential_ref:
        return provider.credential_ref
    if not (include_secrets and provider.credential_encrypted):
        return ""
    try:
        return crypto.decrypt(provider.credential_encrypted)
    except ValueError as e:
        raise ConfigError(f"provider {provider.name}: {e}") from None


# Keys whose last word is one of these hold credentials when their value is a literal string.
SECRET_WORDS = {"key", "password", "secret", "token", "salt", "credentials"}


def _looks_secret(key: str, value: Any) -> bool:
    if not isinstance(value, str) or not value or value.startswith(ENV_PREFIX):
        return False
    return key.lower() == "database_url" or re.split(r"[_\-.]", key.lower())[-1] in SECRET_WORDS


def _without_secrets(value: Any) -> Any:
    """A copy without literal credentials (general_settings.master_key, environment_variables.X_API_KEY, …)."""
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if not _looks_secret(str(k), v)}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def _secrets_filter(value: dict[str, Any], include_secrets: bool) -> dict[str, Any]:
    return value if include_secrets else _without_secrets(value)


class _Dumper(yaml.SafeDumper):
    """Indents lists under their key ("model_list:\\n  - model_name: …"), as LiteLLM's docs write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(plain(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
