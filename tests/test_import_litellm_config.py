"""Importing and exporting LiteLLM Proxy's config.yaml: the user's 33-model config must move over intact."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from gateway.catalog import litellm_import
from gateway.catalog.litellm_export import dump_yaml, export_config
from gateway.catalog.litellm_import import ImportSummary, import_config, load_config
from gateway.catalog.litellm_keys import ConfigError
from gateway.catalog.litellm_validate import split_model
from gateway.catalog.litellm_yaml import plain
from gateway.models import ConfigSetting, Deployment, Provider

FIXTURE = Path(__file__).parent / "fixtures" / "litellm_config.yaml"
LITERAL_KEY = "sk-literal-secret-value-4242"
LITERAL_KEY_CONFIG = f"""\
model_list:
  - model_name: team-llama
    litellm_params:
      model: openai/meta-llama/Llama-3.1-8B-Instruct
      api_base: http://vllm.internal:8000/v1
      api_key: {LITERAL_KEY}
      rpm: 30
"""


def fixture_text() -> str:
    return FIXTURE.read_text()


def import_text(text: str) -> ImportSummary:
    return import_config(load_config(text, "config.yaml"), "config.yaml")


def db_state() -> tuple[list[Any], ...]:
    """Every column of every catalog row, ids and timestamps included."""
    return (
        list(Provider.objects.order_by("id").values_list()),
        list(Deployment.objects.order_by("id").values_list()),
        list(ConfigSetting.objects.order_by("id").values_list()),
    )


def line_containing(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def deployment(public_name: str) -> Deployment:
    return Deployment.objects.select_related("provider").get(public_name=public_name)


@pytest.mark.django_db
def test_importing_the_fixture_creates_33_deployments_on_five_providers() -> None:
    summary = import_text(fixture_text())

    assert (summary.deployments.created, summary.providers.created, summary.settings.created) == (33, 5, 3)
    assert Deployment.objects.count() == 33
    providers = {p.name: p for p in Provider.objects.all()}
    assert {name: p.kind for name, p in providers.items()} == {
        "openrouter": "openrouter",
        "gemini": "gemini",
        "lm_studio": "lm_studio",
        "github_models": "github_models",
        "github_copilot": "github_copilot",
    }
    assert providers["gemini"].credential_ref == "os.environ/GEMINI_API_KEY"
    assert providers["lm_studio"].api_base == "os.environ/LM_STUDIO_API_BASE"
    assert providers["lm_studio"].credential_ref == "os.environ/LM_STUDIO_API_KEY"
    assert providers["github_copilot"].credential_display() == "none"
    assert set(ConfigSetting.objects.values_list("key", flat=True)) == {
        "litellm_settings",
        "router_settings",
        "general_settings",
    }
    fallbacks = ConfigSetting.objects.get(key="router_settings").value["fallbacks"]
    assert {"google/gemini-2.5-pro": ["copilot/gemini-2.5-pro"]} in fallbacks


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("public_name", "kind", "upstream_model", "limits"),
    [
        ("openrouter/gpt-oss-20b", "openrouter", "openai/gpt-oss-20b:free", (18, None, None)),
        ("google/gemini-2.5-pro", "gemini", "gemini-2.5-pro", (2, 125000, 50)),
        ("google/gemini-2.0-flash", "gemini", "gemini-2.0-flash", (15, 1000000, 200)),
        ("gemma-3-12b", "lm_studio", "google/gemma-3-12b", (None, None, None)),
        ("github/gpt-4o", "github_models", "gpt-4o", (2, None, None)),
        ("copilot/gpt-4.1", "github_copilot", "gpt-4.1", (10, None, None)),
        ("anthropic/claude-opus-4.5", "github_copilot", "claude-opus-4.5", (3, None, None)),
    ],
)
def test_imported_deployments_carry_the_configured_provider_model_and_limits(
    public_name: str, kind: str, upstream_model: str, limits: tuple[int | None, ...]
) -> None:
    import_text(fixture_text())

    d = deployment(public_name)
    assert (d.provider.kind, d.upstream_model, (d.rpm, d.tpm, d.rpd)) == (kind, upstream_model, limits)
    assert d.priority == 0
    assert f"model: {d.litellm_model()}\n" in fixture_text()


@pytest.mark.django_db
def test_importing_twice_creates_the_same_rows() -> None:
    import_text(fixture_text())
    before = db_state()

    summary = import_text(fixture_text())

    assert db_state() == before
    assert (summary.providers.created, summary.providers.unchanged) == (0, 5)
    assert (summary.deployments.created, summary.deployments.updated, summary.deployments.unchanged) == (0, 0, 33)
    assert (summary.settings.created, summary.settings.updated, summary.settings.unchanged) == (0, 0, 3)


@pytest.mark.django_db
def test_reimporting_a_changed_limit_updates_that_row_in_place() -> None:
    import_text(fixture_text())
    row_id = deployment("openrouter/gpt-oss-20b").id

    summary = import_text(fixture_text().replace("rpm: 18", "rpm: 20"))

    assert (summary.deployments.updated, summary.deployments.unchanged) == (1, 32)
    assert deployment("openrouter/gpt-oss-20b").id == row_id
    assert deployment("openrouter/gpt-oss-20b").rpm == 20


@pytest.mark.django_db
def test_unknown_keys_are_kept_and_exported() -> None:
    import_text(fixture_text())

    coder = deployment("qwen3-coder-30b")
    # timeout is honoured (a column, see tests/test_timeouts_retries_fallbacks.py); it is written back all the same.
    assert coder.timeout == 600 and coder.litellm_params == {}
    assert coder.extra == {"owner": "platform-team"}
    headers = {"Editor-Version": "vscode/1.104.0", "Copilot-Integration-Id": "vscode-chat"}
    assert deployment("copilot/gpt-4.1").litellm_params == {"extra_headers": headers}
    exported = {e["model_name"]: e for e in export_config()["model_list"]}
    assert exported["qwen3-coder-30b"]["litellm_params"]["timeout"] == 600
    assert exported["qwen3-coder-30b"]["owner"] == "platform-team"
    assert exported["copilot/gpt-4.1"]["litellm_params"]["extra_headers"] == headers


@pytest.mark.django_db
def test_exporting_reproduces_the_imported_config() -> None:
    import_text(fixture_text())

    original = plain(load_config(fixture_text()))
    assert export_config() == original  # model_list entries in the file's order, unknown keys included


@pytest.mark.django_db
def test_export_then_import_round_trip_gives_the_same_export() -> None:
    import_text(fixture_text())
    first = export_config()
    text = dump_yaml(first)
    Deployment.objects.all().delete()
    Provider.objects.all().delete()
    ConfigSetting.objects.all().delete()

    import_text(text)

    assert export_config() == first
    assert dump_yaml(export_config()) == text


@pytest.mark.django_db
def test_a_literal_api_key_is_stored_encrypted_and_exported_only_with_secrets() -> None:
    import_text(LITERAL_KEY_CONFIG)

    provider = Provider.objects.get()
    assert provider.kind == "openai_compatible"
    assert provider.credential_ref == ""
    assert provider.api_key() == LITERAL_KEY
    assert LITERAL_KEY not in repr(list(Provider.objects.values_list()))
    assert LITERAL_KEY not in repr(list(Deployment.objects.values_list()))
    assert "api_key" not in export_config()["model_list"][0]["litellm_params"]
    assert LITERAL_KEY not in dump_yaml(export_config())
    assert export_config(include_secrets=True)["model_list"][0]["litellm_params"]["api_key"] == LITERAL_KEY


@pytest.mark.django_db
def test_reimporting_a_literal_key_finds_its_provider_by_the_decrypted_value() -> None:
    import_text(LITERAL_KEY_CONFIG)

    summary = import_text(LITERAL_KEY_CONFIG)
    import_text(LITERAL_KEY_CONFIG.replace(LITERAL_KEY, "sk-another-key"))

    assert (summary.providers.created, summary.providers.unchanged) == (0, 1)
    assert sorted(Provider.objects.values_list("name", flat=True)) == ["openai_compatible", "openai_compatible-2"]


@pytest.mark.django_db
def test_literal_secrets_in_settings_are_left_out_of_the_export_unless_asked_for() -> None:
    import_text(
        "general_settings:\n"
        "  master_key: sk-master-literal\n"
        "  database_url: os.environ/DATABASE_URL\n"
        "environment_variables:\n"
        "  OPENAI_API_KEY: sk-env-literal\n"
        "  LM_STUDIO_API_BASE: http://host.docker.internal:1234/v1\n"
    )

    exported = export_config()
    assert exported["general_settings"] == {"database_url": "os.environ/DATABASE_URL"}
    assert exported["environment_variables"] == {"LM_STUDIO_API_BASE": "http://host.docker.internal:1234/v1"}
    assert export_config(include_secrets=True)["general_settings"]["master_key"] == "sk-master-literal"


@pytest.mark.django_db
def test_providers_are_told_apart_by_api_base_and_key_and_named_after_their_kind() -> None:
    taken = Provider(name="gemini", kind="gemini")
    taken.set_secret("os.environ/SOMEONE_ELSES_KEY")
    taken.save()

    import_text(
        "model_list:\n"
        "  - {model_name: a, litellm_params: {model: gemini/gemini-2.5-flash, api_key: os.environ/GEMINI_API_KEY}}\n"
        "  - {model_name: b, litellm_params: {model: gemini/gemini-2.5-pro, api_key: os.environ/GEMINI_API_KEY}}\n"
        "  - {model_name: c, litellm_params: {model: gemini/gemini-2.5-pro, api_key: os.environ/GEMINI_KEY_2}}\n"
        "  - {model_name: d, litellm_params: {model: gemini/gemini-2.5-pro, api_key: os.environ/SOMEONE_ELSES_KEY}}\n"
    )

    assert {d.public_name: d.provider.name for d in Deployment.objects.select_related("provider")} == {
        "a": "gemini-2",
        "b": "gemini-2",
        "c": "gemini-3",
        "d": "gemini",
    }


@pytest.mark.django_db
def test_entries_sharing_a_model_name_are_tried_in_the_order_they_are_written() -> None:
    text = (
        "model_list:\n"
        "  - {model_name: smart, litellm_params: {model: gemini/gemini-2.5-pro, rpm: 2}}\n"
        "  - {model_name: fast, litellm_params: {model: gemini/gemini-2.5-flash}}\n"
        "  - {model_name: smart, litellm_params: {model: github_copilot/gemini-2.5-pro, rpm: 10}}\n"
        "  - {model_name: smart, litellm_params: {model: openrouter/google/gemini-2.5-pro}}\n"
    )
    import_text(text)

    smart = Deployment.objects.filter(public_name="smart").order_by("priority")
    assert [(d.provider.kind, d.priority) for d in smart] == [("gemini", 0), ("github_copilot", 1), ("openrouter", 2)]
    exported = [e["litellm_params"]["model"] for e in export_config()["model_list"]]
    assert exported == [
        "gemini/gemini-2.5-pro",
        "github_copilot/gemini-2.5-pro",
        "openrouter/google/gemini-2.5-pro",
        "gemini/gemini-2.5-flash",
    ]


@pytest.mark.parametrize(
    ("model", "api_base", "expected"),
    [
        ("openrouter/openai/gpt-oss-20b:free", "", ("openrouter", "openai/gpt-oss-20b:free")),
        ("gemini/gemini-2.5-pro", "", ("gemini", "gemini-2.5-pro")),
        ("github/gpt-4o-mini", "", ("github_models", "gpt-4o-mini")),
        ("github_copilot/gpt-4.1", "", ("github_copilot", "gpt-4.1")),
        ("lm_studio/qwen/qwen3-vl-8b", "http://localhost:1234/v1", ("lm_studio", "qwen/qwen3-vl-8b")),
        ("anthropic/claude-sonnet-4-5", "", ("anthropic", "claude-sonnet-4-5")),
        ("openai/gpt-4o", "", ("openai", "gpt-4o")),
        ("openai/llama-3.1-8b", "http://vllm:8000/v1", ("openai_compatible", "llama-3.1-8b")),
        ("azure/my-gpt-4o", "", ("litellm", "azure/my-gpt-4o")),
        ("gpt-4o", "", ("litellm", "gpt-4o")),
    ],
)
def test_a_litellm_model_string_maps_to_a_provider_kind_and_upstream_model(
    model: str, api_base: str, expected: tuple[str, str]
) -> None:
    assert split_model(model, api_base) == expected


def _bad_syntax(text: str) -> tuple[str, int]:
    bad = text.replace("      rpm: 18\n", "      rpm: 18: per minute\n")
    return bad, line_containing(bad, "rpm: 18: per minute")


def _rpm_ten(text: str) -> tuple[str, int]:
    bad = text.replace("claude-opus-4.5\n      rpm: 3\n", "claude-opus-4.5\n      rpm: ten\n")
    return bad, line_containing(bad, "rpm: ten")


def _missing_model_name(text: str) -> tuple[str, int]:
    bad = text.replace("  - model_name: gemma-3-12b\n    litellm_params:\n", "  - litellm_params:\n")
    return bad, line_containing(bad, "model: lm_studio/google/gemma-3-12b") - 1


def _model_list_not_a_list(text: str) -> tuple[str, int]:
    bad = "litellm_settings:\n  drop_params: true\n\nmodel_list:\n  model_name: gemma-3-12b\n"
    return bad, 4


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make_bad", "reason"),
    [
        (_bad_syntax, "invalid YAML: mapping values are not allowed here"),
        (_rpm_ten, "model_list[26].litellm_params.rpm must be a non-negative integer, got 'ten'"),
        (_missing_model_name, "model_list[12] is missing model_name"),
        (_model_list_not_a_list, "model_list must be a list of models, got a mapping"),
    ],
    ids=["bad YAML syntax", "rpm ten", "missing model_name", "model_list not a list"],
)
def test_a_malformed_file_is_reported_with_its_line_and_changes_nothing(make_bad: Any, reason: str) -> None:
    import_text(fixture_text())
    before = db_state()
    bad, line = make_bad(fixture_text())

    with pytest.raises(ConfigError) as raised:
        import_text(bad)

    assert str(raised.value) == f"config.yaml line {line}: {reason}"
    assert raised.value.line == line
    assert db_state() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_list:\n  - model_name: a\n    model_name: b\n", "config.yaml line 3: duplicate key 'model_name'"),
        ("model_list:\n  - just-a-name\n", "config.yaml line 2: model_list[0] must be a mapping"),
        ("model_list:\n  - model_name: a\n", "config.yaml line 2: model_list[0] is missing litellm_params"),
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: gemini/x\n      tpm: -5\n",
            "config.yaml line 5: model_list[0].litellm_params.tpm must be a non-negative integer, got -5",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: gemini/x\n      api_key: 12345\n",
            "config.yaml line 5: model_list[0].litellm_params.api_key must be a string, got int",
        ),
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: gemini/x\n    model_info: vision\n",
            "config.yaml line 5: model_list[0].model_info must be a mapping, got 'vision'",
        ),
        (
            "model_list:\n  - {model_name: a, litellm_params: {model: gemini/x}}\n"
            "  - {model_name: a, litellm_params: {model: gemini/x}}\n",
            "config.yaml line 3: model_list[1] repeats model_list[0]",
        ),
        (
            "model_list:\n  - model_name: 'unclosed\n",
            "config.yaml line 3: invalid YAML: found unexpected end of stream "
            "(while scanning a quoted scalar on line 2)",
        ),
        ("- a\n- b\n", "config.yaml line 1: the file must contain a mapping with model_list, got a list"),
    ],
)
def test_other_mistakes_are_reported_with_their_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(text)


@pytest.mark.django_db
def test_an_error_halfway_through_an_import_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import_text(fixture_text())
    before = db_state()
    changed = fixture_text().replace("rpm: 18", "rpm: 20") + "  new_section: {}\n"
    changed = changed.replace(
        "model_list:\n", "model_list:\n  - {model_name: new, litellm_params: {model: anthropic/claude-x}}\n", 1
    )

    def fail(*args: Any) -> None:
        raise RuntimeError("database went away")

    # Settings are written last, so every provider and deployment change has been made when this fails.
    monkeypatch.setattr(litellm_import, "_upsert_setting", fail)
    with pytest.raises(RuntimeError):
        import_text(changed)

    assert db_state() == before


@pytest.mark.django_db
def test_the_import_command_prints_a_one_line_summary() -> None:
    out = StringIO()

    call_command("import_litellm_config", str(FIXTURE), stdout=out)

    assert out.getvalue() == (
        f"Imported {FIXTURE}: providers: 5 created, 0 updated, 0 unchanged; "
        "deployments: 33 created, 0 updated, 0 unchanged; settings: 3 created, 0 updated, 0 unchanged\n"
    )
    assert Deployment.objects.count() == 33


@pytest.mark.django_db
def test_the_import_command_fails_with_the_file_and_line_and_changes_nothing(tmp_path: Path) -> None:
    import_text(fixture_text())
    before = db_state()
    bad_text, line = _rpm_ten(fixture_text())
    bad = tmp_path / "config.yaml"
    bad.write_text(bad_text)

    with pytest.raises(CommandError, match=rf"^{bad} line {line}: .*rpm must be a non-negative integer"):
        call_command("import_litellm_config", str(bad), stdout=StringIO())
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_litellm_config", str(tmp_path / "missing.yaml"), stdout=StringIO())

    assert db_state() == before


def test_the_import_command_exits_non_zero_with_the_message_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("model_list:\n  - model_name: a\n    litellm_params:\n      model: gemini/x\n      rpm: ten\n")
    # A throwaway database and data dir: the command fails before touching either, but settings need them.
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PORTAL_DATA_DIR": str(tmp_path),
        "DEBUG": "true",
    }
    env.pop("REDIS_URL", None)

    result = subprocess.run(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "import_litellm_config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert result.returncode == 1
    assert f"{bad} line 5: model_list[0].litellm_params.rpm must be a non-negative integer, got 'ten'" in result.stderr


@pytest.mark.django_db
def test_the_export_command_writes_the_config_to_stdout_or_a_file(tmp_path: Path) -> None:
    import_text(fixture_text())
    import_text(LITERAL_KEY_CONFIG)
    out = StringIO()

    call_command("export_litellm_config", stdout=out)
    call_command("export_litellm_config", str(tmp_path / "plain.yaml"), stdout=StringIO())
    call_command("export_litellm_config", str(tmp_path / "secret.yaml"), "--include-secrets", stdout=StringIO())

    assert load_config(out.getvalue()) == export_config()
    assert len(load_config(out.getvalue())["model_list"]) == 34
    assert (tmp_path / "plain.yaml").read_text() == out.getvalue()
    assert LITERAL_KEY not in out.getvalue()
    assert f"api_key: {LITERAL_KEY}" in (tmp_path / "secret.yaml").read_text()
    assert (tmp_path / "secret.yaml").stat().st_mode & 0o077 == 0


@pytest.mark.django_db
def test_disabled_deployments_are_exported_only_when_asked_for() -> None:
    import_text(fixture_text())
    Deployment.objects.filter(public_name="gemma-3-1b").update(enabled=False)
    Provider.objects.filter(kind="github_models").update(enabled=False)

    names = {e["model_name"] for e in export_config()["model_list"]}
    assert len(names) == 33 - 1 - 5
    assert "gemma-3-1b" not in names
    assert len(export_config(include_disabled=True)["model_list"]) == 33


@pytest.mark.django_db
def test_reimporting_does_not_reenable_a_deployment_an_operator_switched_off() -> None:
    import_text(fixture_text())
    Deployment.objects.filter(public_name="gemma-3-1b").update(enabled=False)

    import_text(fixture_text())

    assert deployment("gemma-3-1b").enabled is False
