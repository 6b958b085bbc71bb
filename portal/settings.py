"""LLM Portal settings: one file, driven by environment variables.

Every variable has a default that works on a fresh development machine (SQLite
under ./data/, in-process cache, DEBUG on). A value that cannot be parsed fails
at start with ImproperlyConfigured naming the variable, instead of guessing.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from portal import envfile

# Lets admin classes be written ModelAdmin[Model] for mypy at run time too.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

# Before any variable is read: the operator's .env (or PORTAL_ENV_FILE), under what the environment already sets.
try:
    ENV_FILE = envfile.load()
except envfile.EnvFileError as e:
    raise ImproperlyConfigured(str(e)) from None

# LiteLLM fetches its model cost map from the internet at import unless told not
# to; we never want network at import (offline CI, slow first request).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def envint(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envfloat(name: str, default: str) -> float:
    value = os.environ.get(name, default)
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def envsecret(name: str) -> str:
    """Read NAME, or the contents of the file named by NAME_FILE (Docker secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {e.strerror}") from None
    return os.environ.get(name, "")


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def generated_secret(data_dir: Path, filename: str, prefix: str = "") -> tuple[str, bool]:
    """Return a secret persisted under data_dir, creating it on first use.

    O_EXCL makes the first writer win when several workers start together, so
    every process of one installation agrees on the same value.
    """
    path = data_dir / filename
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    value = prefix + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value, True


def database_from_url(url: str) -> dict[str, object]:
    """Translate DATABASE_URL (sqlite:///path or postgres://...) to Django's dict."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:////abs/path is absolute; sqlite:///rel/path is relative to the project.
        name = unquote(parts.path[1:])
        if not name:
            raise ImproperlyConfigured("DATABASE_URL: sqlite:/// needs a file path")
        if not Path(name).is_absolute():
            name = str(BASE_DIR / name)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            # WAL lets the usage writer and readers work side by side.
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"},
        }
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
            "CONN_MAX_AGE": envint("DB_CONN_MAX_AGE", "0"),
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(
        f"DATABASE_URL must start with sqlite:/// or postgres://, got scheme {parts.scheme!r}"
    )


DEBUG = envbool("DEBUG", "True")
DATA_DIR = Path(envstr("PORTAL_DATA_DIR", str(BASE_DIR / "data")))

SECRET_KEY = envsecret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off")
    SECRET_KEY, _ = generated_secret(DATA_DIR, "secret_key")

# LiteLLM config to import at start (LiteLLM's config.yaml format).
PORTAL_CONFIG = envstr("PORTAL_CONFIG", str(Path.cwd() / "config.yaml"))


def master_key_from_config(path: str) -> str:
    """LiteLLM's general_settings.master_key in the config file: a literal key, or os.environ/NAME. The file is
    validated (with lines) by the import at start; here a file that does not parse simply has no key."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""
    general = data.get("general_settings") if isinstance(data, dict) else None
    value = general.get("master_key") if isinstance(general, dict) else None
    if not isinstance(value, str):
        return ""
    return os.environ.get(value.removeprefix("os.environ/"), "") if value.startswith("os.environ/") else value


# The master key keeps the LiteLLM name so an existing .env works unchanged; LiteLLM's config may name it too.
MASTER_KEY = envsecret("LITELLM_MASTER_KEY") or master_key_from_config(PORTAL_CONFIG)
if not MASTER_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("LITELLM_MASTER_KEY is required when DEBUG is off")
    MASTER_KEY, created = generated_secret(DATA_DIR, "master_key", prefix="sk-master-")
    if created:
        print(
            f"LITELLM_MASTER_KEY was not set; generated one and saved it in {DATA_DIR / 'master_key'}:\n"
            f"    {MASTER_KEY}",
            file=sys.stderr,
        )

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "*")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")
PORT = envint("PORT", "4000")

INSTALLED_APPS = [
    "portal.admin_apps.PortalAdminConfig",  # Django's admin with the portal's console site (portal/admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "gateway",
    "accounts",
    "tracking",
    # For its management commands (prepare); it has no models.
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy and Permissions-Policy on the admin and the other pages.
    "portal.middleware.SecurityHeadersMiddleware",
    # A NUL character in any input is a 400 here, not a PostgreSQL error (a 500) later.
    "portal.middleware.RefuseNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = envstr("DATABASE_URL", f"sqlite:///{DATA_DIR / 'portal.sqlite3'}")
DATABASES = {"default": database_from_url(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(str(DATABASES["default"]["NAME"])).parent.mkdir(parents=True, exist_ok=True)
    # A file, not :memory:, so a live server thread in the tests sees the same test database;
    # one per test process, so two test runs on one machine do not delete each other's.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-portal-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's, with one connection pool per process instead of one per asyncio task (portal/cache.py).
            "BACKEND": "portal.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": envstr("CACHE_KEY_PREFIX", "portal"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(DATA_DIR / "static")))
# Serve /static/ from the app (admin CSS) when no Nginx does it.
SERVE_STATIC = envbool("SERVE_STATIC", "True")

# Behind Nginx: trust X-Forwarded-Proto for "is this HTTPS" so cookies get Secure.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
# Forms read the token from the page, never from JavaScript.
CSRF_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# HSTS on HTTPS responses. Off by default: the bundled Nginx sends it; set it when TLS ends elsewhere.
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "0")

# --- Gateway ---
# Largest request body accepted on /v1 (bytes); larger gets a 413 envelope.
MAX_REQUEST_BODY_BYTES = envint("MAX_REQUEST_BODY_BYTES", str(20 * 1024 * 1024))
# Largest request body accepted by the admin, the key pages and the management API (bytes); larger gets a 413.
# Django's own limits match it, so an accepted body (a form, an upload) is always held in memory, never spooled.
MAX_ADMIN_REQUEST_BODY_BYTES = envint("MAX_ADMIN_REQUEST_BODY_BYTES", str(4 * 1024 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_ADMIN_REQUEST_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = MAX_ADMIN_REQUEST_BODY_BYTES
# Seconds to wait for an upstream before answering 504.
UPSTREAM_TIMEOUT = envfloat("UPSTREAM_TIMEOUT", "600")
# Largest answer read from a provider (a whole response, or a whole stream); more is a 502 (an error event in a
# stream) instead of a worker that runs out of memory.
MAX_UPSTREAM_RESPONSE_BYTES = envint("MAX_UPSTREAM_RESPONSE_BYTES", str(50 * 1024 * 1024))
# Call OpenAI-native upstreams directly (pooled HTTP, SSE forwarded as is) instead of through LiteLLM.
PASSTHROUGH = envbool("PASSTHROUGH", "True")
# A stream whose provider sends nothing for this long (seconds) is ended with an error event.
STREAM_IDLE_TIMEOUT = envfloat("STREAM_IDLE_TIMEOUT", "120")
# How often (seconds) a worker checks whether the admin changed the catalog.
CATALOG_REFRESH_SECONDS = envfloat("CATALOG_REFRESH_SECONDS", "1")
# How OpenRouter attributes our traffic (HTTP-Referer / X-Title); LiteLLM's OR_SITE_URL / OR_APP_NAME also work.
OPENROUTER_SITE_URL = envstr("OPENROUTER_SITE_URL", envstr("OR_SITE_URL"))
OPENROUTER_APP_NAME = envstr("OPENROUTER_APP_NAME", envstr("OR_APP_NAME", "LLM Portal"))

# --- GitHub Copilot (gateway/upstreams/copilot.py) ---
# Where the device flow runs and where the Copilot token is exchanged; tests point these at a local mock.
GITHUB_COPILOT_GITHUB_URL = envstr("GITHUB_COPILOT_GITHUB_URL", "https://github.com").rstrip("/")
GITHUB_COPILOT_API_URL = envstr("GITHUB_COPILOT_API_URL", "https://api.github.com").rstrip("/")
# The OAuth app of the device flow: LiteLLM's (the Copilot editor plugins' app), same variable name.
GITHUB_COPILOT_CLIENT_ID = envstr("GITHUB_COPILOT_CLIENT_ID", "Iv1.b507a08c87ecfe98")
# A LiteLLM token dir is imported when no token is stored in the database yet (same names as LiteLLM).
GITHUB_COPILOT_TOKEN_DIR = Path(
    envstr("GITHUB_COPILOT_TOKEN_DIR", str(Path("~/.config/litellm/github_copilot").expanduser()))
)
GITHUB_COPILOT_ACCESS_TOKEN_FILE = envstr("GITHUB_COPILOT_ACCESS_TOKEN_FILE", "access-token")

# --- Quotas ---
# Completion tokens assumed for the TPM estimate when a request sets no max_tokens.
QUOTA_DEFAULT_COMPLETION_TOKENS = envint("QUOTA_DEFAULT_COMPLETION_TOKENS", "256")
# How often daily counters are written to the database (seconds).
QUOTA_FLUSH_SECONDS = envfloat("QUOTA_FLUSH_SECONDS", "1")
# A provider 429 without a delay parks the deployment this long (seconds).
QUOTA_DEFAULT_COOLDOWN_SECONDS = envfloat("QUOTA_DEFAULT_COOLDOWN_SECONDS", "60")
# Longest pause after repeated upstream failures (seconds); it starts at 1 s and doubles.
QUOTA_MAX_BACKOFF_SECONDS = envfloat("QUOTA_MAX_BACKOFF_SECONDS", "60")
# A request waiting for a slot re-checks at least this often (seconds).
QUOTA_WAIT_POLL_SECONDS = envfloat("QUOTA_WAIT_POLL_SECONDS", "0.25")
# With Redis, token corrections (real usage minus the estimate) are sent in one batch this often (seconds),
# so each request costs one Redis call. Without Redis they apply at once.
QUOTA_SETTLE_SECONDS = envfloat("QUOTA_SETTLE_SECONDS", "0.05")
# With Redis, a worker busy on a deployment whose limits all have plenty of room (each reservation at most a
# 16th of what is left) reserves a block of requests and tokens in its admission call and admits from it
# locally for this long (seconds), returning what it did not use. 0 turns it off; at most 1, because a block
# is counted in the next second's bucket of per-minute windows, which covers every use within a second.
QUOTA_LEASE_SECONDS = envfloat("QUOTA_LEASE_SECONDS", "0.5")
if not 0 <= QUOTA_LEASE_SECONDS <= 1:
    raise ImproperlyConfigured(f"QUOTA_LEASE_SECONDS must be between 0 and 1, got {QUOTA_LEASE_SECONDS}")
# Daily and monthly limits of API keys reset at midnight in this time zone.
KEY_QUOTA_TIMEZONE = envstr("KEY_QUOTA_TIMEZONE", "UTC")

# --- Responses API (gateway/api/compat/responses.py) ---
# How long a stored response stays usable as previous_response_id (seconds, kept in the cache).
RESPONSES_TTL_SECONDS = envint("RESPONSES_TTL_SECONDS", "3600")

# --- Playground (gateway/playground.py) ---
# Where the admin's playground calls the portal's own /v1 (server side, with the master key). Empty = the
# address of the socket that received the playground request (loopback to this very server).
PLAYGROUND_API_BASE = envstr("PLAYGROUND_API_BASE", "").rstrip("/")

# --- Usage records (tracking/) ---
# Buffered records are written every USAGE_FLUSH_SECONDS, or as soon as USAGE_FLUSH_BATCH wait. Both bound what
# a SIGKILLed worker loses (README: "Off the request path"); an INSERT of 200 rows is still one cheap statement.
USAGE_FLUSH_SECONDS = envfloat("USAGE_FLUSH_SECONDS", "0.25")
USAGE_FLUSH_BATCH = envint("USAGE_FLUSH_BATCH", "200")
# While the database is away records wait in memory, up to this many per worker process.
USAGE_BUFFER_MAX = envint("USAGE_BUFFER_MAX", "100000")
# Kept request/response bodies (see Body logging rules in the admin) are cut at this size each.
USAGE_BODY_MAX_BYTES = envint("USAGE_BODY_MAX_BYTES", "65536")
# purge_old_usage deletes records older than this.
USAGE_RETENTION_DAYS = envint("USAGE_RETENTION_DAYS", "90")

# --- MLflow (tracking/export.py) ---
# The embedded default writes straight into a local store that `make run` also serves on 127.0.0.1:5001.
MLFLOW_TRACKING_URI = envstr("MLFLOW_TRACKING_URI", f"sqlite:///{DATA_DIR / 'mlflow.db'}")
# Where experiments the portal creates keep artifacts; empty = the tracking server's default.
MLFLOW_ARTIFACT_ROOT = envstr(
    "MLFLOW_ARTIFACT_ROOT", str(DATA_DIR / "mlflow-artifacts") if "MLFLOW_TRACKING_URI" not in os.environ else ""
)
MLFLOW_EXPERIMENT_NAME = envstr("MLFLOW_EXPERIMENT_NAME", "llm-portal")
# Where operators open MLflow in a browser (the admin links each usage record to its trace there): the
# tracking server itself when it is one, else the UI `make run` serves over the embedded store.
MLFLOW_UI_URL = envstr(
    "MLFLOW_UI_URL",
    MLFLOW_TRACKING_URI if MLFLOW_TRACKING_URI.startswith(("http://", "https://"))
    else f"http://127.0.0.1:{envint('MLFLOW_PORT', '5001')}",
).rstrip("/")
MLFLOW_EXPORT_BATCH = envint("MLFLOW_EXPORT_BATCH", "200")
MLFLOW_EXPORT_INTERVAL = envfloat("MLFLOW_EXPORT_INTERVAL", "30")
# The MLflow client retries a dead server for minutes by default; our task retries with backoff itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

# --- Celery (portal/celery.py, tasks in tracking/tasks.py) ---
# Redis when REDIS_URL is set; otherwise kombu's filesystem transport under ./data/celery (no server needed).
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _celery_queue = DATA_DIR / "celery" / "queue"
    _celery_queue.mkdir(parents=True, exist_ok=True)
    # control_folder too: kombu's default is the working directory (it would litter the checkout).
    _celery_control = DATA_DIR / "celery" / "control"
    _celery_control.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_queue),
        "data_folder_out": str(_celery_queue),
        "control_folder": str(_celery_control),
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# Each entry expires before its next run, so a stopped worker does not find a pile of stale copies.
CELERY_BEAT_SCHEDULE = {
    "export-usage-to-mlflow": {
        "task": "tracking.tasks.export_usage_to_mlflow",
        "schedule": MLFLOW_EXPORT_INTERVAL,
        "options": {"expires": MLFLOW_EXPORT_INTERVAL * 0.9},
    },
    "log-daily-usage-metrics": {
        "task": "tracking.tasks.log_daily_usage_metrics",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    # Windows roll over at each provider's midnight by themselves; this drops counters long past.
    "reset-daily-counters": {
        "task": "gateway.tasks.reset_daily_counters",
        "schedule": 900.0,
        "options": {"expires": 800},
    },
    "purge-old-usage": {
        "task": "tracking.tasks.purge_old_usage",
        "schedule": 3600.0 * 6,
        "options": {"expires": 3600},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Portal management API",
    "DESCRIPTION": "Operators' API: users' keys and usage. Authenticate with the master key (Bearer) "
    "or a staff session.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Accounts: users' API keys, the self-service page, login throttling ---
# HMAC key for stored API keys; derived from SECRET_KEY when unset (changing it invalidates every user key).
API_KEY_PEPPER = envsecret("API_KEY_PEPPER")
# How many unrevoked, unexpired keys a user may hold (a per-user key policy can override it).
MAX_KEYS_PER_USER = envint("MAX_KEYS_PER_USER", "20")
# How long a worker trusts its memo of a key before checking the shared cache; bounds revocation delay.
API_KEY_REFRESH_SECONDS = envfloat("API_KEY_REFRESH_SECONDS", "0.5")
# Failed logins allowed per IP and per username ("10/m": ten a minute), admin and self-service alike.
LOGIN_RATE = envstr("LOGIN_RATE", "10/m")
if not re.fullmatch(r"\d+/\d*[smhd]", LOGIN_RATE):
    raise ImproperlyConfigured(f"LOGIN_RATE must look like 10/m (count/period s, m, h or d), got {LOGIN_RATE!r}")
# Invalid API keys allowed per client IP within any window (seconds) on /v1 and /api; past it the IP gets 429
# until its failures in the window drop below the limit (accounts/throttle.py). 0 turns the brake off.
AUTH_FAILURE_LIMIT = envint("AUTH_FAILURE_LIMIT", "20")
AUTH_FAILURE_WINDOW = envfloat("AUTH_FAILURE_WINDOW", "60")
if AUTH_FAILURE_WINDOW <= 0:
    raise ImproperlyConfigured(f"AUTH_FAILURE_WINDOW must be a positive number of seconds, got {AUTH_FAILURE_WINDOW}")
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "accounts:keys"
LOGOUT_REDIRECT_URL = "accounts:login"

LOG_LEVEL = envstr("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "portal": {"level": LOG_LEVEL},
        "gateway": {"level": LOG_LEVEL},
        "accounts": {"level": LOG_LEVEL},
        "tracking": {"level": LOG_LEVEL},
        # One WARNING line per 4xx is noise (and cost) on a busy gateway; 5xx still log.
        "django.request": {"level": "ERROR"},
        # LiteLLM logs request payloads at INFO/DEBUG; keep it quiet.
        "LiteLLM": {"level": "WARNING"},
    },
}
