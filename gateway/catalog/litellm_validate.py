"""Validating a parsed LiteLLM config: every model_list entry split into the columns it is stored in, the
honoured settings checked for the types the router needs, and each problem refused with its file and line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from gateway.catalog.litellm_keys import (
    COLUMN_PARAMS,
    COUNT,
    ENTRY_KEYS,
    FALLBACKS,
    FLAG,
    HONOURED_SETTINGS,
    KIND_BY_PREFIX,
    LIMIT_KEYS,
    NUMBER,
    RETRY_KEYS,
    TEXT,
    TIMEOUT_KEYS,
    ConfigError,
    got,
    where,
)
from gateway.catalog.litellm_yaml import plain
from gateway.models import ENV_PREFIX, ConfigSetting, Deployment, Provider, ProviderKind

# Longest values the columns take (PostgreSQL enforces these; SQLite would silently store more).
MAX_PUBLIC_NAME = Deployment._meta.get_field("public_name").max_length or 200
MAX_UPSTREAM_MODEL = Deployment._meta.get_field("upstream_model").max_length or 300
MAX_API_BASE = Provider._meta.get_field("api_base").max_length or 500
MAX_CREDENTIAL_REF = Provider._meta.get_field("credential_ref").max_length or 200
MAX_SETTING_KEY = ConfigSetting._meta.get_field("key").max_length or 100
MAX_LIMIT = 2**31 - 1  # PositiveIntegerField's ceiling on PostgreSQL


@dataclass(frozen=True)
class Entry:
    """One validated model_list item, already split into the columns it is stored in."""

    index: int
    line: int | None
    public_name: str
    kind: str
    upstream_model: str
    api_base: str
    api_key: str
    limits: dict[str, int | None]
    timeouts: dict[str, float | int | None]  # timeout, stream_timeout, num_retries
    params: dict[str, Any]
    model_info: dict[str, Any]
    extra: dict[str, Any]


def split_model(model: str, api_base: str = "") -> tuple[str, str]:
    """Map a LiteLLM model string to (provider kind, upstream model id)."""
    prefix, slash, rest = model.partition("/")
    if slash and prefix in KIND_BY_PREFIX:
        return KIND_BY_PREFIX[prefix], rest
    if slash and prefix == "openai":
        # LiteLLM's openai/ prefix with an api_base is how vLLM, Ollama & co. are reached.
        return (ProviderKind.OPENAI_COMPATIBLE if api_base else ProviderKind.OPENAI), rest
    # Any other LiteLLM provider: keep the whole string and let LiteLLM route it.
    return ProviderKind.LITELLM, model


def parse(data: Any, source: str) -> tuple[list[Entry], dict[str, Any]]:
    """Validate the whole config; return the model entries and the other top-level sections."""
    if not isinstance(data, dict):
        _fail(source, getattr(data, "line", 1), f"the file must contain a mapping with model_list, got {got(data)}")
    models = data.get("model_list")
    if models is None:
        models = []  # LiteLLM accepts a config without models (e.g. settings only)
    elif not isinstance(models, list):
        _fail(source, _key_line(data, "model_list"), f"model_list must be a list of models, got {got(models)}")
    if "include" in data:
        # LiteLLM merges the listed files in; the portal imports one file, and dropping their models silently
        # would leave requests for them answering 404.
        _fail(source, _key_line(data, "include"), "include is not supported: the portal imports one file; put the "
              "included files' model_list entries and settings into this one")
    entries = [_parse_entry(i, item, _item_line(models, i), source) for i, item in enumerate(models)]
    _reject_repeats(entries, source)
    _check_settings(data, source)
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key == "model_list":
            continue
        if not isinstance(key, str) or len(key) > MAX_SETTING_KEY:
            reason = f"top-level key {key!r} must be text of at most {MAX_SETTING_KEY} characters"
            _fail(source, _key_line(data, key), reason)
        settings[key] = plain(value)
    return entries, settings


def _parse_entry(index: int, item: Any, item_line: int | None, source: str) -> Entry:
    path = f"model_list[{index}]"
    if not isinstance(item, dict):
        _fail(source, item_line, f"{path} must be a mapping with model_name and litellm_params, got {got(item)}")
    line = getattr(item, "line", None) or item_line
    public_name = _text(item, "model_name", path, source, MAX_PUBLIC_NAME, required=True, line=line)
    params = item.get("litellm_params")
    params_path = f"{path}.litellm_params"
    params_line = _key_line(item, "litellm_params", line)
    if params is None:
        _fail(source, params_line, f"{path} is missing litellm_params")
    if not isinstance(params, dict):
        _fail(source, params_line, f"{params_path} must be a mapping, got {got(params)}")
    model = _text(params, "model", params_path, source, None, required=True, line=params_line)
    if "litellm_credential_name" in params:
        # A key from LiteLLM's credential_list (kept in its database): without it the deployment has no key.
        _fail(source, _key_line(params, "litellm_credential_name", params_line),
              f"{params_path}.litellm_credential_name is not supported: give the key as api_key: os.environ/NAME")
    api_base = _text(params, "api_base", params_path, source, MAX_API_BASE, line=params_line)
    api_key = _text(params, "api_key", params_path, source, None, line=params_line, secret=True)
    if api_key.startswith(ENV_PREFIX) and len(api_key) > MAX_CREDENTIAL_REF:
        reason = f"{params_path}.api_key is longer than {MAX_CREDENTIAL_REF} characters"
        _fail(source, _key_line(params, "api_key", params_line), reason)
    kind, upstream = split_model(model, api_base)
    if not upstream or len(upstream) > MAX_UPSTREAM_MODEL:
        reason = f"{params_path}.model needs a model id of 1 to {MAX_UPSTREAM_MODEL} characters, got {got(model)}"
        _fail(source, _key_line(params, "model", params_line), reason)
    model_info = item.get("model_info")
    if model_info is not None and not isinstance(model_info, dict):
        reason = f"{path}.model_info must be a mapping, got {got(model_info)}"
        _fail(source, _key_line(item, "model_info", line), reason)
    return Entry(
        index=index,
        line=line,
        public_name=public_name,
        kind=kind,
        upstream_model=upstream,
        api_base=api_base,
        api_key=api_key,
        limits={key: _limit(params, key, params_path, source) for key in LIMIT_KEYS},
        timeouts=_timeouts(params, params_path, source),
        params={k: plain(v) for k, v in params.items() if k not in COLUMN_PARAMS},
        model_info=plain(model_info or {}),
        extra={k: plain(v) for k, v in item.items() if k not in ENTRY_KEYS},
    )


def _text(
    mapping: dict[str, Any],
    key: str,
    path: str,
    source: str,
    max_length: int | None,
    *,
    line: int | None,
    required: bool = False,
    secret: bool = False,
) -> str:
    """An optional (or required, non-empty) string field; absent or null reads as ""."""
    value = mapping.get(key)
    if value is None:
        if required:
            _fail(source, _key_line(mapping, key, line), f"{path} is missing {key}")
        return ""
    if not isinstance(value, str):
        shown = type(value).__name__ if secret else got(value)  # never echo something that may be a key
        _fail(source, _key_line(mapping, key, line), f"{path}.{key} must be a string, got {shown}")
    if required and not value.strip():
        _fail(source, _key_line(mapping, key, line), f"{path}.{key} must not be empty")
    if max_length is not None and len(value) > max_length:
        _fail(source, _key_line(mapping, key, line), f"{path}.{key} is longer than {max_length} characters")
    return value


def _limit(params: dict[str, Any], key: str, path: str, source: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    # bool is an int subclass in Python; "rpm: yes" is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(source, _key_line(params, key), f"{path}.{key} must be a non-negative integer, got {got(value)}")
    if value > MAX_LIMIT:
        _fail(source, _key_line(params, key), f"{path}.{key} must be at most {MAX_LIMIT}, got {value}")
    return value


def _timeouts(params: dict[str, Any], path: str, source: str) -> dict[str, float | int | None]:
    values: dict[str, float | int | None] = {key: _seconds(params, key, path, source) for key in TIMEOUT_KEYS}
    retries = [_count(params, key, path, source) for key in RETRY_KEYS if params.get(key) is not None]
    if len(set(retries)) > 1:
        _fail(source, _key_line(params, "max_retries"), f"{path} has num_retries and max_retries that differ; "
              "the portal has one retry count per deployment")
    values["num_retries"] = retries[0] if retries else None
    return values


def _seconds(mapping: dict[str, Any], key: str, path: str, source: str) -> float | None:
    value = mapping.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        _fail(source, _key_line(mapping, key), f"{path}.{key} must be {NUMBER}, got {got(value)}")
    return float(value)


def _count(mapping: dict[str, Any], key: str, path: str, source: str) -> int | None:
    value = mapping.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        _fail(source, _key_line(mapping, key), f"{path}.{key} must be {COUNT} (at most 100), got {got(value)}")
    return value


def _check_settings(data: dict[str, Any], source: str) -> None:
    """The honoured settings' values have the types the router needs; other keys are kept as they are."""
    for section, keys in HONOURED_SETTINGS.items():
        values = data.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            _fail(source, _key_line(data, section), f"{section} must be a mapping, got {got(values)}")
        for key, kind in keys.items():
            if values.get(key) is None:
                continue
            path = f"{section}.{key}"
            if kind == NUMBER:
                _seconds(values, key, section, source)
            elif kind == COUNT:
                _count(values, key, section, source)
            elif kind == FLAG and not isinstance(values[key], bool):
                _fail(source, _key_line(values, key), f"{path} must be {FLAG}, got {got(values[key])}")
            elif kind == TEXT and not isinstance(values[key], str):
                _fail(source, _key_line(values, key), f"{path} must be {TEXT}, got {type(values[key]).__name__}")
            elif kind == FALLBACKS:
                _check_fallbacks(values, key, path, source)


def _check_fallbacks(values: dict[str, Any], key: str, path: str, source: str) -> None:
    entries = values[key]
    ok = isinstance(entries, list) and all(
        isinstance(entry, dict) and all(
            isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
            for targets in entry.values())
        for entry in entries)
    if not ok:
        _fail(source, _key_line(values, key), f"{path} must be {FALLBACKS}, e.g. [{{\"gpt-4o\": [\"gpt-4o-mini\"]}}]")


def _reject_repeats(entries: list[Entry], source: str) -> None:
    # Two identical entries would map to one database row; say so instead of silently merging them.
    first: dict[tuple[str, ...], int] = {}
    for entry in entries:
        identity = (entry.public_name, entry.kind, entry.upstream_model, entry.api_base, entry.api_key)
        if identity in first:
            _fail(
                source,
                entry.line,
                f"model_list[{entry.index}] repeats model_list[{first[identity]}] "
                "(same model_name, model, api_base and api_key)",
            )
        first[identity] = entry.index


def _fail(source: str, line: int | None, message: str) -> NoReturn:
    raise ConfigError(f"{where(source, line)}: {message}", line)


def _key_line(mapping: Any, key: Any, default: int | None = None) -> int | None:
    """The line a key is on; plain dicts (not from load_config) have none, so messages go without."""
    key_lines = getattr(mapping, "key_lines", {})
    return key_lines.get(key) or getattr(mapping, "line", None) or default


def _item_line(sequence: Any, index: int) -> int | None:
    lines = getattr(sequence, "item_lines", [])
    return lines[index] if index < len(lines) else getattr(sequence, "line", None)
