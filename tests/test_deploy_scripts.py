"""The deployment's scripts, run for real: the image entrypoint, the certificate fallback, the template as
the nginx image fills it, the PostgreSQL init script, MLflow's start script, and the systemd units."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from portal.settings import database_from_url
from tests.nginx_helpers import (
    DEPLOY,
    PLACEHOLDERS,
    SNIPPETS,
    TEMPLATE,
    Nginx,
    make_certificates,
    render_site,
    requires_nginx,
)

ENTRYPOINT = DEPLOY / "entrypoint.sh"
PORTAL_CERT = DEPLOY / "nginx" / "portal-cert.sh"


def run_sh(script: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run(["sh", str(script), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=60, check=check)


def entrypoint_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """The variables as the entrypoint leaves them for the portal's process."""
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    result = run_sh(ENTRYPOINT, "python", "-c", show, env={"PORTAL_DATA_DIR": str(tmp_path), **env})
    return json.loads(result.stdout)


# --- deploy/entrypoint.sh ------------------------------------------------------------------------------


def test_the_entrypoint_builds_database_url_from_the_postgres_password(tmp_path):
    password = "p@ss/w:rd?#%"
    env = entrypoint_env(tmp_path, POSTGRES_PASSWORD=password, POSTGRES_USER="portal", POSTGRES_DB="portal")

    parsed = database_from_url(env["DATABASE_URL"])
    assert (parsed["USER"], parsed["PASSWORD"], parsed["HOST"], parsed["PORT"], parsed["NAME"]) == \
        ("portal", password, "db", "5432", "portal")
    assert urlsplit(env["DATABASE_URL"]).password != password  # encoded, so the URL stays parseable


def test_an_explicit_database_url_wins(tmp_path):
    env = entrypoint_env(tmp_path, POSTGRES_PASSWORD="x", DATABASE_URL="postgres://u:p@elsewhere:5433/other")

    assert env["DATABASE_URL"] == "postgres://u:p@elsewhere:5433/other"


def test_a_secret_key_is_generated_once_and_kept(tmp_path):
    first = entrypoint_env(tmp_path)
    second = entrypoint_env(tmp_path)

    key_file = Path(first["SECRET_KEY_FILE"])
    assert key_file == tmp_path / "secret_key" == Path(second["SECRET_KEY_FILE"])
    key = key_file.read_text().strip()
    assert len(key) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A second start (another replica, a restart) reads the same key: stored credentials stay readable.
    assert key_file.read_text().strip() == key


def test_a_given_secret_key_is_left_alone(tmp_path):
    env = entrypoint_env(tmp_path, SECRET_KEY="from-env")

    assert env["SECRET_KEY"] == "from-env" and "SECRET_KEY_FILE" not in env
    assert not (tmp_path / "secret_key").exists()


def test_the_admin_trusts_the_public_origin(tmp_path):
    assert entrypoint_env(tmp_path, SERVER_NAME="llm.example.com")["CSRF_TRUSTED_ORIGINS"] == \
        "https://llm.example.com"
    assert entrypoint_env(tmp_path, SERVER_NAME="llm.example.com", CSRF_TRUSTED_ORIGINS="https://a.example")[
        "CSRF_TRUSTED_ORIGINS"] == "https://a.example"


# --- deploy/nginx/portal-cert.sh -----------------------------------------------------------------------


def cert_env(tmp_path: Path) -> dict[str, str]:
    return {"SERVER_NAME": "localhost", "LETSENCRYPT_DIR": str(tmp_path / "letsencrypt"),
            "NGINX_CERT_DIR": str(tmp_path / "certs")}


def subject(path: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-issuer", "-in", str(path)],
                          capture_output=True, text=True, check=True).stdout


@requires_nginx
def test_nginx_boots_on_a_self_signed_certificate_before_lets_encrypt_issued_one(tmp_path):
    run_sh(PORTAL_CERT, env=cert_env(tmp_path))
    active = tmp_path / "certs" / "fullchain.pem"

    assert active.resolve() == tmp_path / "certs" / "selfsigned" / "fullchain.pem"
    assert "CN = localhost" in subject(active)
    nginx = Nginx(tmp_path / "nginx", ["127.0.0.1:9"], tmp_path / "certs").start()
    try:
        pem = ssl.get_server_certificate(("127.0.0.1", nginx.https_port))
    finally:
        nginx.stop()
    assert pem.strip() == active.read_text().strip()


def test_the_lets_encrypt_certificate_is_used_once_it_exists(tmp_path):
    env = cert_env(tmp_path)
    run_sh(PORTAL_CERT, env=env)
    self_signed = (tmp_path / "certs" / "selfsigned" / "fullchain.pem").read_text()
    live = tmp_path / "letsencrypt" / "live" / "localhost"
    make_certificates(live)  # what certbot leaves: fullchain.pem and privkey.pem

    run_sh(PORTAL_CERT, env=env)

    assert (tmp_path / "certs" / "fullchain.pem").resolve() == live / "fullchain.pem"
    assert (tmp_path / "certs" / "privkey.pem").resolve() == live / "privkey.pem"
    assert "LLM Portal test CA" in subject(tmp_path / "certs" / "fullchain.pem")
    # The fallback is kept, not regenerated on every run.
    assert (tmp_path / "certs" / "selfsigned" / "fullchain.pem").read_text() == self_signed


# --- the template, filled as the nginx image fills it --------------------------------------------------


def image_environment() -> dict[str, str]:
    """The ENV of deploy/nginx/Dockerfile."""
    block = re.search(r"^ENV (.*?)(?=^\S)", (DEPLOY / "nginx" / "Dockerfile").read_text(), re.MULTILINE | re.DOTALL)
    return {name: value.strip('"') for name, value in re.findall(r'([A-Z_]+)=("[^"]*"|\S+)', block.group(1))}


@requires_nginx
def test_the_images_envsubst_step_yields_a_config_nginx_accepts(tmp_path):
    envsubst = shutil.which("envsubst")
    if envsubst is None:
        pytest.skip("envsubst is not installed (Debian: gettext-base)")
    env = image_environment()
    assert set(PLACEHOLDERS) <= set(env)
    cert_dir = tmp_path / "certs"
    make_certificates(cert_dir)
    test_values = {"NGINX_HTTP_LISTEN": "127.0.0.1:18080", "NGINX_HTTPS_LISTEN": "127.0.0.1:18443",
                   "NGINX_CERT_DIR": str(cert_dir), "NGINX_SNIPPETS": str(SNIPPETS),
                   "ACME_WEBROOT": str(tmp_path), "NGINX_LOG_DIR": str(tmp_path),
                   "PORTAL_UPSTREAM": "127.0.0.1:9", "NGINX_RESOLVER": "127.0.0.1"}
    env.update(test_values)
    # The image's 20-envsubst-on-templates.sh: every *defined* variable, nothing else.
    defined = " ".join(f"${{{name}}}" for name in env)
    filled = subprocess.run([envsubst, defined], input=TEMPLATE.read_text(), env={**env, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=True).stdout

    # Nginx's own $variables survive; the result is what the tests run.
    assert "$remote_addr" in filled and "$host$request_uri" in filled
    uncommented = "".join(line + "\n" for line in filled.splitlines() if not line.lstrip().startswith("#"))
    assert uncommented == render_site(env)
    nginx = Nginx(tmp_path / "nginx", ["127.0.0.1:9"], cert_dir)
    nginx.site.write_text(filled)
    result = nginx.check()
    assert result.returncode == 0, result.stderr


# --- deploy/postgres/10-create-mlflow-db.sh ------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres") or not shutil.which("psql"),
                    reason="needs PostgreSQL (DATABASE_URL=postgres://...) and psql")
def test_the_init_script_creates_mlflows_database_once(tmp_path):
    import psycopg

    url = urlsplit(os.environ["DATABASE_URL"])
    name = f"deploy_mlflow_{os.getpid()}"
    env = {"PGHOST": url.hostname or "127.0.0.1", "PGPORT": str(url.port or 5432), "PGPASSWORD": url.password or "",
           "POSTGRES_USER": url.username or "postgres", "POSTGRES_DB": "postgres", "MLFLOW_DB": name}
    admin = f"postgresql://{url.username or 'postgres'}@{env['PGHOST']}:{env['PGPORT']}/postgres"
    try:
        run_sh(DEPLOY / "postgres" / "10-create-mlflow-db.sh", env=env)
        again = run_sh(DEPLOY / "postgres" / "10-create-mlflow-db.sh", env=env, check=False)
        with psycopg.connect(admin, password=url.password or None, autocommit=True) as conn:
            owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                 [name]).fetchone()
    finally:
        with psycopg.connect(admin, password=url.password or None, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    assert owner == (env["POSTGRES_USER"],)
    assert again.returncode == 0, again.stderr


# --- deploy/mlflow/mlflow-server.sh --------------------------------------------------------------------


def test_mlflow_starts_on_postgres_sized_for_its_limit(tmp_path):
    # A stand-in `mlflow` on PATH records how the script starts the real one.
    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT"\n'
                    'env | grep -E "^(MLFLOW_SERVER_|LITELLM_)" | sort >> "$OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": f"{fake.parent}:{Path(sys.executable).parent}:/usr/bin:/bin", "OUT": str(out),
           "POSTGRES_USER": "portal", "POSTGRES_PASSWORD": "p@ss/word", "POSTGRES_HOST": "db"}
    subprocess.run(["sh", str(DEPLOY / "mlflow" / "mlflow-server.sh")], env=env, check=True, timeout=30)

    lines = out.read_text().splitlines()
    args = dict(zip(lines[1:], [*lines[2:], ""], strict=True))
    assert lines[0] == "server"
    assert args["--backend-store-uri"] == "postgresql+psycopg://portal:p%40ss%2Fword@db:5432/mlflow"
    assert args["--artifacts-destination"] == "/mlflow/artifacts"
    assert args["--port"] == "5001" and args["--workers"] == "1"
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in lines
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in lines
    assert any(line.startswith("MLFLOW_SERVER_ALLOWED_HOSTS=") and "mlflow:5001" in line for line in lines)


# --- deploy/systemd ------------------------------------------------------------------------------------


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not Path("/usr/lib/systemd/system").is_dir(),
                    reason="needs systemd-analyze and the system's unit directory")
def test_the_systemd_units_verify_cleanly(tmp_path):
    """`systemd-analyze verify` on a scratch root holding the files the units name."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, units)
        text = unit.read_text()
        for command in re.findall(r"^Exec\w+=[-@+!]*(/\S+)", text, re.MULTILINE):
            target = root / command.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("#!/bin/sh\n")
            target.chmod(0o755)
        for env_file in re.findall(r"^EnvironmentFile=-?(/\S+)", text, re.MULTILINE):
            (root / env_file.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / env_file.lstrip("/")).touch()

    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", *(u.name for u in UNITS)],
                            cwd=units, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_units_run_what_the_repository_ships():
    for unit in UNITS:
        text = unit.read_text()
        for path in re.findall(r"/opt/portal/(\S+)", text):
            if not path.startswith(".venv") and not path.endswith(".md"):
                assert (DEPLOY.parent / path).exists(), (unit.name, path)
        for config in re.findall(r"-c (deploy/\S+)", text):
            assert (DEPLOY.parent / config).exists(), (unit.name, config)
    names = {unit.name for unit in UNITS}
    assert names == {"portal-web.service", "portal-worker.service", "portal-beat.service", "portal-mlflow.service"}


def test_nginx_reloads_periodically_and_survives_a_failed_reload(tmp_path):
    """deploy/nginx/40-portal-cert.sh: pick the certificate, then re-pick and reload in the background."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "portal-cert").write_text(f'#!/bin/sh\necho cert >> "{calls}"\n')
    # The first reload fails (a broken config, say); the loop must go on.
    (bin_dir / "nginx").write_text(f'#!/bin/sh\necho "reload $*" >> "{calls}"\n'
                                   f'[ "$(grep -c reload "{calls}")" -gt 1 ]\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NGINX_RELOAD_SECONDS": "0.2"}
    process = subprocess.Popen(["sh", str(DEPLOY / "nginx" / "40-portal-cert.sh")], env=env, start_new_session=True)
    try:
        assert process.wait(timeout=10) == 0  # returns at once: Nginx starts after it
        deadline = time.monotonic() + 10
        while (calls.read_text().count("reload -s reload") if calls.exists() else 0) < 3:
            assert time.monotonic() < deadline, calls.read_text()
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
    lines = calls.read_text().splitlines()
    assert lines[0] == "cert"
    assert lines.count("cert") >= 4
