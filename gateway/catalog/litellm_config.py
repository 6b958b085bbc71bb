"""Read and write LiteLLM Proxy's config.yaml, so an existing setup moves over unchanged and can move back.

load_config() parses and validates; every problem names the file and the line it is on.
import_config() upserts providers, deployments and settings in one transaction (running it twice is a no-op).
export_config() writes the catalog back out in the same format; dump_yaml() turns that into text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
from django.db import IntegrityError, transaction

from gateway import catalog, crypto
from gateway.models import ENV_PREFIX, ConfigSetting, Deployment, Provider, ProviderKind

# Longest values the columns take (PostgreSQL enforces these; SQLite would silently store more).
MAX_PUBLIC_NAME = Deployment._meta.get_field("public_name").max_length or 200
MAX_UPSTREAM_MODEL = Deployment._meta.get_field("upstream_model").max_length or 300
MAX_API_BASE = Provider._meta.get_field("api_base").max_length or 500
MAX_CREDENTIAL_REF = Provider._meta.get_field("credential_ref").max_length or 200
MAX_SETTING_KEY = ConfigSetting._meta.get_field("key").max_length or 100
MAX_LIMIT = 2**31 - 1  # PositiveIntegerField's ceiling on PostgreSQL

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
# litellm_params keys that become columns; every other key is kept in Deployment.litellm_params.
COLUMN_PARAMS = ("model", "api_base", "api_key", *LIMIT_KEYS)
ENTRY_KEYS = ("model_name", "litellm_params", "model_info")


class ConfigError(ValueError):
    """A config that cannot be imported; the message names the file, the line and the reason."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


# --- Parsing with line numbers -------------------------------------------------------------------


class LineDict(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the 1-based line it starts on and the line of each key."""

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}


class LineList(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the 1-based line it and each of its items start on."""

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _Loader(yaml.SafeLoader):
    """SafeLoader that records line numbers, rejects duplicate and non-string keys, and keeps dates as text."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterator[LineDict]:
    data = LineDict(node.start_mark.line + 1)
    yield data  # yielding first lets anchors/aliases refer to this mapping before it is filled
    # Keys pulled in by a "<<: *anchor" merge may be overridden; only keys written here twice are a mistake.
    written_here = {id(key_node) for key_node, _ in node.value if key_node.tag != MERGE_TAG}
    loader.flatten_mapping(node)
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping keys must be strings, got {_got(key)}", key_node.start_mark
            )
        if id(key_node) in written_here:
            if key in seen:
                # PyYAML would silently keep the last one; a repeated rpm is almost always an editing slip.
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Iterator[LineList]:
    data = LineList(node.start_mark.line + 1)
    yield data
    for item in node.value:
        data.append(loader.construct_object(item))
        data.item_lines.append(item.start_mark.line + 1)


def _construct_as_text(loader: _Loader, node: yaml.ScalarNode) -> str:
    # Dates would become datetime objects, which JSON columns cannot store; LiteLLM treats them as text anyway.
    return str(loader.construct_scalar(node))


def _construct_unsupported(loader: _Loader, node: yaml.Node) -> NoReturn:
    raise yaml.constructor.ConstructorError(None, None, f"unsupported YAML type {node.tag}", node.start_mark)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_as_text)
_Loader.add_constructor("tag:yaml.org,2002:binary", _construct_unsupported)
_Loader.add_constructor("tag:yaml.org,2002:set", _construct_unsupported)


def load_config(text: str, source: str = "config.yaml") -> dict[str, Any]:
    """Parse and validate a LiteLLM config; raise ConfigError naming source, line and reason."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        line, message = _yaml_problem(e)
        raise ConfigError(f"{_where(source, line)}: {message}", line) from None
    except yaml.YAMLError as e:  # e.g. a control character the reader refuses
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    _parse(data, source)
    return data  # type: ignore[no-any-return]


def _yaml_problem(error: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark else None
    if isinstance(error, yaml.constructor.ConstructorError):
        return line, error.problem or str(error)
    message = f"invalid YAML: {error.problem or error.context}"
    # Scanner errors are often detected lines after their cause (an unclosed quote); point at both.
    if error.problem and error.context and error.context_mark:
        message += f" ({error.context} on line {error.context_mark.line + 1})"
    return line, message


# --- Validation ----------------------------------------------------------------------------------


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


def _parse(data: Any, source: str) -> tuple[list[Entry], dict[str, Any]]:
    """Validate the whole config; return the model entries and the other top-level sections."""
    if not isinstance(data, dict):
        _fail(source, getattr(data, "line", 1), f"the file must contain a mapping with model_list, got {_got(data)}")
    models = data.get("model_list")
    if models is None:
        models = []  # LiteLLM accepts a config without models (e.g. settings only)
    elif not isinstance(models, list):
        _fail(source, _key_line(data, "model_list"), f"model_list must be a list of models, got {_got(models)}")
    entries = [_parse_entry(i, item, _item_line(models, i), source) for i, item in enumerate(models)]
    _reject_repeats(entries, source)
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key == "model_list":
            continue
        if not isinstance(key, str) or len(key) > MAX_SETTING_KEY:
            reason = f"top-level key {key!r} must be text of at most {MAX_SETTING_KEY} characters"
            _fail(source, _key_line(data, key), reason)
        settings[key] = _plain(value)
    return entries, settings


def _parse_entry(index: int, item: Any, item_line: int | None, source: str) -> Entry:
    path = f"model_list[{index}]"
    if not isinstance(item, dict):
        _fail(source, item_line, f"{path} must be a mapping with model_name and litellm_params, got {_got(item)}")
    line = getattr(item, "line", None) or item_line
    public_name = _text(item, "model_name", path, source, MAX_PUBLIC_NAME, required=True, line=line)
    params = item.get("litellm_params")
    params_path = f"{path}.litellm_params"
    params_line = _key_line(item, "litellm_params", line)
    if params is None:
        _fail(source, params_line, f"{path} is missing litellm_params")
    if not isinstance(params, dict):
        _fail(source, params_line, f"{params_path} must be a mapping, got {_got(params)}")
    model = _text(params, "model", params_path, source, None, required=True, line=params_line)
    api_base = _text(params, "api_base", params_path, source, MAX_API_BASE, line=params_line)
    api_key = _text(params, "api_key", params_path, source, None, line=params_line, secret=True)
    if api_key.startswith(ENV_PREFIX) and len(api_key) > MAX_CREDENTIAL_REF:
        reason = f"{params_path}.api_key is longer than {MAX_CREDENTIAL_REF} characters"
        _fail(source, _key_line(params, "api_key", params_line), reason)
    kind, upstream = split_model(model, api_base)
    if not upstream or len(upstream) > MAX_UPSTREAM_MODEL:
        reason = f"{params_path}.model needs a model id of 1 to {MAX_UPSTREAM_MODEL} characters, got {_got(model)}"
        _fail(source, _key_line(params, "model", params_line), reason)
    model_info = item.get("model_info")
    if model_info is not None and not isinstance(model_info, dict):
        reason = f"{path}.model_info must be a mapping, got {_got(model_info)}"
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
        params={k: _plain(v) for k, v in params.items() if k not in COLUMN_PARAMS},
        model_info=_plain(model_info or {}),
        extra={k: _plain(v) for k, v in item.items() if k not in ENTRY_KEYS},
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
        got = type(value).__name__ if secret else _got(value)  # never echo something that may be a key
        _fail(source, _key_line(mapping, key, line), f"{path}.{key} must be a string, got {got}")
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
        _fail(source, _key_line(params, key), f"{path}.{key} must be a non-negative integer, got {_got(value)}")
    if value > MAX_LIMIT:
        _fail(source, _key_line(params, key), f"{path}.{key} must be at most {MAX_LIMIT}, got {value}")
    return value


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
    raise ConfigError(f"{_where(source, line)}: {message}", line)


def _where(source: str, line: int | None) -> str:
    return f"{source} line {line}" if line else source


def _key_line(mapping: Any, key: Any, default: int | None = None) -> int | None:
    """The line a key is on; plain dicts (not from load_config) have none, so messages go without."""
    key_lines = getattr(mapping, "key_lines", {})
    return key_lines.get(key) or getattr(mapping, "line", None) or default


def _item_line(sequence: Any, index: int) -> int | None:
    lines = getattr(sequence, "item_lines", [])
    return lines[index] if index < len(lines) else getattr(sequence, "line", None)


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    """Drop the line bookkeeping so values compare and serialise as ordinary dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- Import --------------------------------------------------------------------------------------


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"


@dataclass
class ImportSummary:
    providers: Counts = field(default_factory=Counts)
    deployments: Counts = field(default_factory=Counts)
    settings: Counts = field(default_factory=Counts)

    def __str__(self) -> str:
        return f"providers: {self.providers}; deployments: {self.deployments}; settings: {self.settings}"


def import_config(data: dict[str, Any], source: str = "config") -> ImportSummary:
    """Upsert the config into the catalog; all or nothing, and idempotent.

    Rows not mentioned in the config are left alone (an import adds and updates, it never deletes).
    """
    entries, settings = _parse(data, source)
    try:
        summary = _import(entries, settings)
    except IntegrityError:
        # Another worker imported the same file at the same moment (e.g. at start-up); its rows are
        # committed now, so one retry finds them and updates instead of inserting duplicates.
        summary = _import(entries, settings)
    # After commit (right away outside a transaction), so no worker reloads the catalog from a half-written state.
    transaction.on_commit(catalog.invalidate)
    return summary


def _import(entries: list[Entry], settings: dict[str, Any]) -> ImportSummary:
    summary = ImportSummary()
    with transaction.atomic():
        providers = _ProviderResolver(summary.providers)
        existing = {(d.public_name, d.provider_id, d.upstream_model): d for d in Deployment.objects.all()}
        priorities: dict[str, int] = {}
        for entry in entries:
            provider = providers.resolve(entry.kind, entry.api_base, entry.api_key)
            # Entries sharing a model_name are tried in the order they are written, as in LiteLLM's fallbacks.
            priority = priorities.get(entry.public_name, 0)
            priorities[entry.public_name] = priority + 1
            current = existing.get((entry.public_name, provider.id, entry.upstream_model))
            _upsert_deployment(entry, provider, priority, current, summary.deployments)
        for key, value in settings.items():
            _upsert_setting(key, value, summary.settings)
    return summary


Credential = tuple[str, str]  # ("ref", "os.environ/NAME") | ("literal", plaintext) | ("none", "")


def _credential_of_key(api_key: str) -> Credential:
    if api_key.startswith(ENV_PREFIX):
        return ("ref", api_key)
    return ("literal", api_key) if api_key else ("none", "")


def _credential_of(provider: Provider) -> Credential | None:
    if provider.credential_ref:
        return ("ref", provider.credential_ref)
    if provider.credential_encrypted:
        try:
            return ("literal", crypto.decrypt(provider.credential_encrypted))
        except ValueError:
            return None  # undecryptable (SECRET_KEY changed): cannot be shown equal, so never reused
    return ("none", "")


class _ProviderResolver:
    """Finds the provider for (kind, api_base, credential), creating it once per import when missing."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.providers = list(Provider.objects.order_by("id"))
        self.names = {p.name for p in self.providers}
        self.resolved: dict[tuple[str, str, Credential], Provider] = {}

    def resolve(self, kind: str, api_base: str, api_key: str) -> Provider:
        identity = (kind, api_base, _credential_of_key(api_key))
        if identity in self.resolved:
            return self.resolved[identity]
        provider = self._find(*identity)
        if provider is None:
            provider = Provider(name=self._free_name(kind), kind=kind, api_base=api_base)
            provider.set_secret(api_key)
            provider.save()
            self.providers.append(provider)
            self.names.add(provider.name)
            self.counts.created += 1
        else:
            # The identity is everything the config says about a provider, so a match needs no update.
            self.counts.unchanged += 1
        self.resolved[identity] = provider
        return provider

    def _find(self, kind: str, api_base: str, credential: Credential) -> Provider | None:
        for provider in self.providers:
            # Decrypt only candidates that already match on kind and api_base.
            if provider.kind == kind and provider.api_base == api_base and _credential_of(provider) == credential:
                return provider
        return None

    def _free_name(self, kind: str) -> str:
        name, n = kind, 1
        while name in self.names:
            n += 1
            name = f"{kind}-{n}"
        return name


def _upsert_deployment(
    entry: Entry, provider: Provider, priority: int, current: Deployment | None, counts: Counts
) -> None:
    # enabled is deliberately not in here: re-importing must not re-enable what an operator switched off.
    values: dict[str, Any] = {
        **entry.limits,
        "litellm_params": entry.params,
        "model_info": entry.model_info,
        "extra": entry.extra,
        "priority": priority,
    }
    if current is None:
        Deployment.objects.create(
            public_name=entry.public_name, provider=provider, upstream_model=entry.upstream_model, **values
        )
        counts.created += 1
        return
    changed = [name for name, value in values.items() if getattr(current, name) != value]
    if not changed:
        counts.unchanged += 1
        return
    for name in changed:
        setattr(current, name, values[name])
    current.save(update_fields=[*changed, "updated"])
    counts.updated += 1


def _upsert_setting(key: str, value: Any, counts: Counts) -> None:
    current = ConfigSetting.objects.filter(key=key).first()
    if current is None:
        ConfigSetting.objects.create(key=key, value=value)
        counts.created += 1
    elif current.value != value:
        current.value = value
        current.save(update_fields=["value", "updated"])
        counts.updated += 1
    else:
        counts.unchanged += 1


# --- Export --------------------------------------------------------------------------------------


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
    for key in LIMIT_KEYS:
        if getattr(deployment, key) is not None:
            params[key] = getattr(deployment, key)
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
    return yaml.dump(_plain(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
