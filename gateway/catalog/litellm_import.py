"""Importing a LiteLLM config.yaml: load_config() parses and validates it (every problem names the file and
the line), import_config() upserts providers, deployments and settings in one transaction (running it twice
is a no-op), so an existing LiteLLM setup moves over unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from gateway import catalog, crypto
from gateway.catalog.litellm_validate import Entry, parse
from gateway.catalog.litellm_yaml import read_yaml
from gateway.models import ENV_PREFIX, ConfigSetting, Deployment, Provider


def load_config(text: str, source: str = "config.yaml") -> dict[str, Any]:
    """Parse and validate a LiteLLM config; raise ConfigError naming source, line and reason."""
    data = read_yaml(text, source)
    parse(data, source)
    return data  # type: ignore[no-any-return]


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
    entries, settings = parse(data, source)
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
        **entry.timeouts,
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

