"""Run the repository's Nginx configuration for real: Debian's nginx on loopback ports, in front of a portal.

The site template (deploy/nginx/templates/portal.conf.template) is rendered exactly as the nginx image's
envsubst step would, changing only what differs on a test machine: listen ports, paths, the upstream
address. A throwaway CA signs the server certificate, so clients verify TLS for real. Nothing here
reaches the network beyond 127.0.0.0/8.

CI needs Debian's `nginx` package (tests skip, with the reason, without it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TEMPLATE = DEPLOY / "nginx" / "templates" / "portal.conf.template"
SNIPPETS = DEPLOY / "nginx" / "snippets"
PLACEHOLDERS = (
    "SERVER_NAME", "PORTAL_UPSTREAM", "NGINX_RESOLVER", "NGINX_HTTP_LISTEN", "NGINX_HTTPS_LISTEN",
    "NGINX_CERT_DIR", "NGINX_SNIPPETS", "ACME_WEBROOT", "NGINX_LOG_DIR",
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
requires_nginx = pytest.mark.skipif(
    not os.access(NGINX, os.X_OK), reason="nginx is not installed (CI: apt-get install -y nginx)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30, process: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            detail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}\n{detail}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


# --- certificates --------------------------------------------------------------------------------------


def make_certificates(directory: Path, name: str = "localhost") -> Path:
    """A CA, and a server certificate it signs for `name` and 127.0.0.1, as certbot lays them out
    (fullchain.pem, privkey.pem) in `directory`. Returns the CA file clients should trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LLM Portal test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    (directory / "privkey.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    return ca_file


def tls_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


# --- configuration -------------------------------------------------------------------------------------


def render_site(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """Fill the template's ${NAME} placeholders like the image's envsubst does; refuse leftovers, which
    Nginx would reject at start."""
    lines = template.read_text().splitlines(keepends=True)
    for name in PLACEHOLDERS:
        # Comments are left alone: a multi-line value (several upstream servers) must not break out of one.
        lines = [line if line.lstrip().startswith("#") else line.replace("${" + name + "}", values[name])
                 for line in lines]
    text = "".join(line for line in lines if not line.lstrip().startswith("#"))
    leftover = sorted(set(re.findall(r"\$\{[A-Za-z_]+\}", text)))
    if leftover:
        raise ValueError(f"unfilled placeholders in {template.name}: {leftover}")
    return text


def upstream_servers(addresses: Iterable[str]) -> str:
    """PORTAL_UPSTREAM for several portals: the template's `server ${PORTAL_UPSTREAM};` line becomes one
    `server` line per address, as `web:4000` resolving to several replicas does in Docker."""
    return ";\n    server ".join(addresses)


def main_config(workdir: Path, site: Path) -> str:
    """The http{} around the site, as the nginx image's own nginx.conf provides it, with every path in
    `workdir` so no root-owned default location is touched."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {kind}_temp_path {workdir / 'tmp' / kind};" for kind in kinds)
    return f"""{user}worker_processes 1;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'logs' / 'error.log'} info;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    access_log off;
{temp}
    include {site};
}}
"""


class Nginx:
    """nginx in the foreground (so the test owns the process) with the repository's site config."""

    def __init__(self, workdir: Path, upstreams: Iterable[str], cert_dir: Path, server_name: str = "localhost") -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.https_port = free_port()
        self.webroot = workdir / "acme"
        for sub in ("logs", "tmp", "acme"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.values = {
            "SERVER_NAME": server_name,
            "PORTAL_UPSTREAM": upstream_servers(upstreams),
            # Loopback addresses need no lookup; the resolver is only named, never asked.
            "NGINX_RESOLVER": "127.0.0.1",
            "NGINX_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "NGINX_HTTPS_LISTEN": f"127.0.0.1:{self.https_port}",
            "NGINX_CERT_DIR": str(cert_dir),
            "NGINX_SNIPPETS": str(SNIPPETS),
            "ACME_WEBROOT": str(self.webroot),
            "NGINX_LOG_DIR": str(workdir / "logs"),
        }
        self.site = workdir / "portal.conf"
        self.site.write_text(render_site(self.values))
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(main_config(workdir, self.site))
        self.process: subprocess.Popen | None = None

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self, *args: str) -> list[str]:
        return [NGINX, "-p", str(self.workdir), "-c", str(self.conf), "-e", str(self.workdir / "logs" / "error.log"),
                *args]

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t`: parse the configuration, open the certificate files, change nothing."""
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        log = self.workdir / "logs" / "error.log"
        self.process = subprocess.Popen(self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        wait_for_port(self.https_port, process=self.process, log=log)
        wait_for_port(self.http_port, process=self.process, log=log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def error_log(self) -> str:
        return "\n".join(p.read_text() for p in (self.workdir / "logs").glob("*error.log") if p.exists())

    def client(self, ca_file: Path, source_ip: str = "127.0.0.1", **kwargs: object) -> httpx.Client:
        """An HTTPS client from a chosen loopback address: Nginx's per-IP limit sees each test apart."""
        transport = httpx.HTTPTransport(verify=tls_context(ca_file), local_address=source_ip)
        return httpx.Client(base_url=self.https_url, transport=transport, timeout=30, **kwargs)  # type: ignore[arg-type]


# --- portal processes ----------------------------------------------------------------------------------


def database_url() -> str:
    """The test database (not the configured one) as a DATABASE_URL, for portal subprocesses."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def portal_env(workdir: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a production-like portal process on the test database and cache."""
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
    env.update(
        DEBUG="false",
        SECRET_KEY=str(settings.SECRET_KEY),
        LITELLM_MASTER_KEY=str(settings.MASTER_KEY),
        DATABASE_URL=database_url(),
        PORTAL_DATA_DIR=str(workdir),
        STATIC_ROOT=str(workdir / "static"),
        PORTAL_CONFIG=str(workdir / "no-config.yaml"),
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="1",
        ACCESS_LOG="true",
        LOG_LEVEL="WARNING",
        GRACEFUL_TIMEOUT="5",
    )
    env.update(extra)
    return env


class Gunicorn:
    """The portal as production runs it: gunicorn with deploy/gunicorn.conf.py, in a subprocess."""

    def __init__(self, workdir: Path, **env: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / f"gunicorn-{self.port}.log"
        self.env = portal_env(workdir, self.port, **env)
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Gunicorn:
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [gunicorn, "portal.asgi:application", "-c", str(DEPLOY / "gunicorn.conf.py")],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    def wait(self, timeout: float = 60) -> Gunicorn:
        wait_for_port(self.port, timeout=timeout, process=self.process, log=self.log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
