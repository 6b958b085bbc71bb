"""load_catalog: the user's 33 models on five providers, created once and never overwriting an operator's edits."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

from gateway import catalog
from gateway.catalog import builtin as catalog_data
from gateway.catalog.litellm_import import import_config, load_config
from gateway.models import CatalogSeed, Deployment, Provider
from tests.catalog_setup import CREDENTIALS, all_credentials, load_builtin_catalog

FIXTURE = Path(__file__).parent / "fixtures" / "litellm_config.yaml"


def rows() -> dict[str, list[tuple]]:
    """Everything load_catalog decides, row by row, to compare two states of the catalog."""
    return {
        "providers": list(Provider.objects.order_by("id").values_list(
            "id", "name", "kind", "api_base", "credential_ref", "enabled", "awaiting_credential", "reset_timezone"
        )),
        "deployments": list(Deployment.objects.order_by("id").values_list(
            "id", "public_name", "provider_id", "upstream_model", "rpm", "tpm", "rpd", "model_info", "enabled"
        )),
    }


@pytest.fixture
def loaded(db, monkeypatch, tmp_path):
    load_builtin_catalog(monkeypatch, tmp_path, env=all_credentials(LM_STUDIO_API_BASE="http://lmstudio.lan:1234/v1"),
                         unlimited=False)


def test_it_creates_the_33_models_on_five_providers(loaded):
    assert Deployment.objects.count() == 33
    assert sorted(Provider.objects.values_list("name", flat=True)) == [
        "gemini", "github_copilot", "github_models", "lm_studio", "openrouter",
    ]
    per_provider = {p.name: p.deployments.count() for p in Provider.objects.all()}
    assert per_provider == {"openrouter": 1, "gemini": 5, "lm_studio": 9, "github_models": 5, "github_copilot": 13}


def test_its_public_names_are_those_of_the_users_litellm_config(loaded):
    with FIXTURE.open() as f:
        names = {entry["model_name"] for entry in yaml.safe_load(f)["model_list"]}
    assert set(Deployment.objects.values_list("public_name", flat=True)) == names
    assert len(names) == 33  # unique: the same model on two providers gets two names


def test_it_sets_the_free_tier_limits_and_capabilities(loaded):
    pro = Deployment.objects.get(public_name="google/gemini-2.5-pro")
    assert (pro.upstream_model, pro.rpm, pro.tpm, pro.rpd) == ("gemini-2.5-pro", 2, 125_000, 50)
    assert pro.model_info == {"mode": "chat", "supports_vision": True}
    tts = Deployment.objects.get(public_name="google/gemini-2.5-flash-tts")
    assert (tts.upstream_model, tts.rpm, tts.tpm, tts.rpd) == ("gemini-2.5-flash-preview-tts", 3, 10_000, 15)
    assert tts.model_info == {"mode": "audio_speech", "supports_vision": False}
    gemma = Deployment.objects.get(public_name="gemma-3-12b")
    assert (gemma.upstream_model, gemma.rpm, gemma.rpd) == ("google/gemma-3-12b", None, None)
    assert gemma.model_info["supports_vision"] is True
    assert Deployment.objects.get(public_name="gemma-3-1b").model_info["supports_vision"] is False
    assert Deployment.objects.get(public_name="copilot/gpt-4o-mini").model_info["supports_vision"] is False
    assert Deployment.objects.get(public_name="anthropic/claude-opus-4.5").rpm == 3
    assert Deployment.objects.get(public_name="github/gpt-4.1").upstream_model == "openai/gpt-4.1"
    assert Deployment.objects.get(public_name="openrouter/gpt-oss-20b").upstream_model == "openai/gpt-oss-20b:free"


def test_gemini_days_reset_at_midnight_pacific_and_openrouter_days_at_utc(loaded):
    assert Provider.objects.get(name="gemini").reset_timezone == "America/Los_Angeles"
    assert Provider.objects.get(name="openrouter").reset_timezone == "UTC"
    route = catalog.get_sync().routes("google/gemini-2.5-flash")[0]
    assert route.reset_timezone == "America/Los_Angeles"


def test_credentials_stay_references_to_the_environment(loaded):
    gemini = Provider.objects.get(name="gemini")
    assert gemini.credential_ref == "os.environ/GEMINI_API_KEY"
    assert gemini.credential_encrypted == ""
    lm_studio = Provider.objects.get(name="lm_studio")
    assert lm_studio.api_base == "os.environ/LM_STUDIO_API_BASE"


def test_loading_twice_gives_the_same_rows(loaded):
    before = rows()
    summary = catalog_data.load()
    assert rows() == before
    assert summary.created == []


def test_an_operators_edits_survive_a_reload(loaded):
    flash = Deployment.objects.get(public_name="google/gemini-2.5-flash")
    flash.rpm, flash.upstream_model, flash.model_info = 4, "gemini-2.5-flash-002", {"mode": "chat"}
    flash.save()
    Deployment.objects.get(public_name="gemma-3-27b").delete()
    coder = Deployment.objects.get(public_name="qwen3-coder-30b")
    coder.enabled = False
    coder.save()
    openrouter = Provider.objects.get(name="openrouter")
    openrouter.api_base = "https://openrouter.example/api/v1"
    openrouter.save()
    before = rows()

    call_command("load_catalog", stdout=StringIO())

    assert rows() == before
    flash.refresh_from_db()
    assert (flash.rpm, flash.upstream_model) == (4, "gemini-2.5-flash-002")
    assert not Deployment.objects.filter(public_name="gemma-3-27b").exists()


def test_restore_brings_back_a_deleted_model_without_touching_the_rest(loaded):
    Deployment.objects.get(public_name="gemma-3-27b").delete()
    flash = Deployment.objects.get(public_name="google/gemini-2.5-flash")
    flash.rpm = 4
    flash.save()

    out = StringIO()
    call_command("load_catalog", "--restore", stdout=out)

    assert Deployment.objects.get(public_name="gemma-3-27b").upstream_model == "google/gemma-3-27b"
    flash.refresh_from_db()
    assert flash.rpm == 4
    assert "1 created" in out.getvalue()


def test_a_name_already_taken_is_left_to_its_owner(db, monkeypatch, tmp_path):
    mine = Provider.objects.create(name="team-vllm", kind="openai_compatible", api_base="http://vllm.lan/v1")
    Deployment.objects.create(public_name="gemma-3-12b", provider=mine, upstream_model="gemma3:12b")

    load_builtin_catalog(monkeypatch, tmp_path, env=all_credentials(LM_STUDIO_API_BASE="http://lm.lan:1234/v1"))

    assert list(Deployment.objects.filter(public_name="gemma-3-12b").values_list("provider__name", flat=True)) == [
        "team-vllm"
    ]
    assert Deployment.objects.count() == 33


def test_providers_without_credentials_are_present_but_disabled(db, monkeypatch, tmp_path):
    summary = load_builtin_catalog(monkeypatch, tmp_path, env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"]})

    enabled = dict(Provider.objects.values_list("name", "enabled"))
    assert enabled == {"gemini": True, "openrouter": False, "github_models": False, "lm_studio": False,
                       "github_copilot": False}
    assert sorted(summary.waiting) == ["github_copilot", "github_models", "lm_studio", "openrouter"]
    assert Deployment.objects.count() == 33  # the models are there, waiting with their provider


def test_models_lists_only_the_usable_models(client, monkeypatch, tmp_path):
    load_builtin_catalog(monkeypatch, tmp_path, env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"]})

    assert [m.id for m in client.models.list()] == [
        "google/gemini-2.0-flash",
        "google/gemini-2.5-flash",
        "google/gemini-2.5-flash-lite",
        "google/gemini-2.5-flash-tts",
        "google/gemini-2.5-pro",
    ]


def test_a_credential_set_later_enables_its_provider_on_the_next_load(db, monkeypatch, tmp_path):
    load_builtin_catalog(monkeypatch, tmp_path, env={})
    assert not Provider.objects.get(name="openrouter").enabled

    monkeypatch.setenv("OPENROUTER_API_KEY", CREDENTIALS["OPENROUTER_API_KEY"])
    monkeypatch.setenv("LM_STUDIO_API_BASE", "http://host.docker.internal:1234/v1")
    summary = catalog_data.load()

    assert sorted(summary.enabled) == ["lm_studio", "openrouter"]
    openrouter = Provider.objects.get(name="openrouter")
    assert (openrouter.enabled, openrouter.awaiting_credential) == (True, False)
    assert not Provider.objects.get(name="gemini").enabled


def test_a_provider_the_operator_disabled_stays_disabled_when_its_credential_appears(db, monkeypatch, tmp_path):
    load_builtin_catalog(monkeypatch, tmp_path, env={})
    Provider.objects.get(name="openrouter").set_enabled_by_operator(False)

    monkeypatch.setenv("OPENROUTER_API_KEY", CREDENTIALS["OPENROUTER_API_KEY"])
    catalog_data.load()

    assert not Provider.objects.get(name="openrouter").enabled


def test_load_catalog_never_disables_a_provider_whose_credential_went_away(loaded, monkeypatch):
    monkeypatch.delenv("GITHUB_API_KEY")
    catalog_data.load()
    assert Provider.objects.get(name="github_models").enabled


def test_copilot_is_enabled_once_a_litellm_token_dir_holds_a_login(db, monkeypatch, tmp_path, settings):
    load_builtin_catalog(monkeypatch, tmp_path, env={})
    assert not Provider.objects.get(name="github_copilot").enabled

    token_dir = tmp_path / "copilot"
    token_dir.mkdir()
    (token_dir / "access-token").write_text("gho_test_github_oauth_token\n")
    settings.GITHUB_COPILOT_TOKEN_DIR = token_dir
    catalog_data.load()

    assert Provider.objects.get(name="github_copilot").enabled


def test_every_entry_is_remembered_once(loaded):
    assert CatalogSeed.objects.count() == 5 + 33
    catalog_data.load()
    assert CatalogSeed.objects.count() == 5 + 33


def test_importing_the_users_config_afterwards_reuses_the_catalogs_providers(loaded):
    import_config(load_config(FIXTURE.read_text(), str(FIXTURE)), str(FIXTURE))

    assert Provider.objects.count() == 5
    flash = Deployment.objects.filter(public_name="google/gemini-2.5-flash")
    assert [(d.provider.name, d.upstream_model) for d in flash] == [("gemini", "gemini-2.5-flash")]


def test_the_catalog_loaded_after_an_import_keeps_the_users_config(db, monkeypatch, tmp_path):
    import_config(load_config(FIXTURE.read_text(), str(FIXTURE)), str(FIXTURE))
    before = rows()

    load_builtin_catalog(monkeypatch, tmp_path, env=all_credentials(), unlimited=False)

    assert rows()["deployments"] == before["deployments"]
    assert Deployment.objects.get(public_name="copilot/raptor-mini").upstream_model == "raptor-mini"
    # The imported Gemini provider predates the catalog, and still counts days in Pacific time.
    assert Provider.objects.get(kind="gemini").reset_timezone == "America/Los_Angeles"
