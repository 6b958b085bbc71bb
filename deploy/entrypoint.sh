#!/bin/sh
# Entry point of the portal image. The first argument picks the role:
#   web      gunicorn with uvicorn workers (WEB_CONCURRENCY), on PORT
#   worker   the Celery worker
#   beat     Celery beat (run exactly one)
#   prepare  migrate, collect static files, import PORTAL_CONFIG, create the UI_USERNAME admin
# Anything else is run as a command, with the same environment; the image links this script as
# `portal`, so `docker compose exec litellm portal python manage.py createsuperuser` works too.
set -eu

# DATABASE_URL from the POSTGRES_* names of a LiteLLM-era .env, the password URL-encoded (a "@" or "/"
# in it would otherwise break the URL). An explicit DATABASE_URL wins.
if [ -z "${DATABASE_URL:-}" ] && [ -n "${POSTGRES_PASSWORD:-}" ]; then
    DATABASE_URL="$(python -c 'import os, urllib.parse as u
e = os.environ
print("postgres://%s:%s@%s:%s/%s" % (u.quote(e.get("POSTGRES_USER", "portal"), safe=""),
      u.quote(e["POSTGRES_PASSWORD"], safe=""), e.get("POSTGRES_HOST", "db"), e.get("POSTGRES_PORT", "5432"),
      u.quote(e.get("POSTGRES_DB", "portal"), safe="")))')"
    export DATABASE_URL
fi

# The .env of a LiteLLM deployment has no SECRET_KEY. Generate one on first start and keep it on the
# data volume: it must never change, stored provider credentials are encrypted with a key derived
# from it. `set -C` makes the creation exclusive, so containers starting together agree on one key.
if [ -z "${SECRET_KEY:-}" ] && [ -z "${SECRET_KEY_FILE:-}" ]; then
    key_file="${PORTAL_DATA_DIR:-/var/lib/portal}/secret_key"
    if [ ! -s "$key_file" ]; then
        (umask 077 && set -C && python -c 'import secrets; print(secrets.token_urlsafe(50))' >"$key_file") \
            2>/dev/null || true
    fi
    export SECRET_KEY_FILE="$key_file"
fi

# The admin behind Nginx posts forms from https://SERVER_NAME.
if [ -z "${CSRF_TRUSTED_ORIGINS:-}" ] && [ -n "${SERVER_NAME:-}" ]; then
    export CSRF_TRUSTED_ORIGINS="https://${SERVER_NAME}"
fi

role="${1:-web}"
case "$role" in
    web)
        if [ "${PORTAL_PREPARE_ON_START:-false}" = "true" ]; then
            python manage.py prepare
        fi
        exec gunicorn portal.asgi:application -c deploy/gunicorn.conf.py
        ;;
    worker)
        exec celery -A portal worker --loglevel "${CELERY_LOG_LEVEL:-INFO}" \
            --concurrency "${CELERY_CONCURRENCY:-2}" --hostname "worker@%h"
        ;;
    beat)
        # The pid file is what the compose healthcheck looks at. A restarted container keeps /tmp, and
        # its stale file would name pid 1, alive again (beat itself), so beat would refuse to start.
        rm -f /tmp/celerybeat.pid
        exec celery -A portal beat --loglevel "${CELERY_LOG_LEVEL:-INFO}" --pidfile /tmp/celerybeat.pid
        ;;
    prepare)
        exec python manage.py prepare
        ;;
    *)
        exec "$@"
        ;;
esac
