"""docs/migrating-from-litellm.md: its commands run, or name what exists, here.

No Docker engine runs here: `docker-compose config` (Debian's docker-compose, when installed) resolves the compose
files the guide names from the repository root, with the guide's own `.env` lines; every `docker compose` command
of the guide names services that exist; the guide's `import_mlflow` line parses with the real command's parser
(tests/test_import_mlflow.py runs the copy itself on real MLflow stores).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tracking.management.commands.import_mlflow import Command as ImportMlflow

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "migrating-from-litellm.md"
REQUIRED = "LITELLM_MASTER_KEY=sk-master-test\nPOSTGRES_PASSWORD=pg-secret\n"
# Subcommands whose arguments after the options are services; for exec and run only the first one is.
SERVICE_ARGS = {"up", "logs", "restart", "stop", "start", "ps", "pull"}
ONE_SERVICE = {"exec", "run"}
OPTIONS_WITH_VALUE = {"-f", "--file", "-e", "--env", "-u", "--user", "-w", "--workdir", "--entrypoint", "--scale"}


def guide() -> str:
    return GUIDE.read_text()


def code_lines() -> list[str]:
    """The commands of the guide's shell blocks (continuation lines joined), and the portal's column of its
    command tables."""
    text = guide()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
             for line in block.replace("\\\n", " ").splitlines()]
    for seed, portal in re.findall(r"^\|(.+)\|(.+)\|$", text, re.MULTILINE):
        # "the same": the seed's command is the portal's.
        lines += re.findall(r"`([^`]+)`", portal + (seed if portal.strip().startswith("the same") else ""))
    return [line.strip() for line in lines if line.strip()]


def compose_commands() -> list[list[str]]:
    commands = []
    for line in code_lines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                if command[:2] == ["docker", "compose"]:
                    commands.append(command[2:])
                command = []
            else:
                command.append(word)
    return commands


def services_named(arguments: list[str]) -> list[str]:
    words = list(arguments)
    while words and words[0].startswith("-"):  # global options: -f FILE
        words = words[2:] if words[0] in OPTIONS_WITH_VALUE else words[1:]
    if not words:
        return []
    sub, rest = words[0], words[1:]
    positional: list[str] = []
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            if word in OPTIONS_WITH_VALUE and rest:
                rest.pop(0)
            continue
        positional.append(word)
        if sub in ONE_SERVICE:
            break
    return positional if sub in SERVICE_ARGS | ONE_SERVICE else []


def compose_file_values() -> list[str]:
    return re.findall(r"COMPOSE_FILE=([\w./:-]+)", guide())


def test_the_guide_uses_at_least_the_seeds_everyday_commands():
    commands = [" ".join(words) for words in compose_commands()]
    for expected in ("up -d", "logs -f litellm", "restart litellm", "run --rm prepare", "ps"):
        assert expected in commands, expected


def test_every_docker_compose_command_of_the_guide_names_a_service_that_exists():
    services = set(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"])
    named = {service for words in compose_commands() for service in services_named(words)}
    assert named, "the guide names no service"
    assert named <= services, named - services


def test_every_file_the_guide_names_exists():
    for value in compose_file_values():
        for path in value.split(":"):
            assert (ROOT / path).is_file(), path
    for path in re.findall(r"`((?:deploy|docs)/[\w./-]+\.(?:yaml|md))`", guide()):
        assert (ROOT / path).is_file(), path
    assert (ROOT / ".env.example").is_file()


def docker_compose(env_text: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (CI: apt-get install -y --no-install-recommends docker-compose)")
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text() + REQUIRED + env_text)
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([binary, "--env-file", str(env_file), *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=60, check=False)


def test_docker_compose_config_passes_from_the_root_with_each_compose_file_line_of_the_guide(tmp_path):
    assert compose_file_values()
    for value in compose_file_values():
        result = docker_compose(f"COMPOSE_FILE={value}\n", tmp_path, "config", "-q")
        assert result.returncode == 0, (value, result.stderr)


def test_the_guides_env_lines_for_the_old_volumes_resolve_to_those_volumes(tmp_path):
    block = next(block for block in re.findall(r"```sh\n(.*?)```", guide(), re.DOTALL)
                 if "LITELLM_POSTGRES_VOLUME=" in block)
    env_lines = "\n".join(line.strip() for line in block.splitlines() if not line.strip().startswith("#")) + "\n"
    result = docker_compose(env_lines, tmp_path, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["volumes"]["postgres_data"] == {"external": True, "name": "litellm_litellm_postgres_data"}
    assert resolved["volumes"]["mlflow_artifacts"]["name"] == "litellm_mlflow_data"
    assert resolved["volumes"]["copilot_auth"]["name"] == "litellm_github_copilot_auth_data"
    assert resolved["services"]["db"]["image"] == "postgres:16"
    assert resolved["services"]["mlflow"]["environment"]["MLFLOW_DB"] == "mlflow"


def test_the_guides_mlflow_copy_command_parses_with_the_real_command():
    lines = [line for line in code_lines() if "manage.py import_mlflow" in line]
    assert lines
    for line in lines:
        argv = shlex.split(line.split("manage.py", 1)[1])
        options = ImportMlflow().create_parser("manage.py", "import_mlflow").parse_args(argv[1:])
        assert options.source.startswith(("postgresql+psycopg://", "http://", "sqlite://"))
        assert options.to == "http://127.0.0.1:5001"
