#!/bin/sh
# Run by the nginx image's entrypoint before Nginx starts: choose the certificate (Let's Encrypt, or a
# self-signed fallback), then re-check and reload in the background every NGINX_RELOAD_SECONDS, so a
# certificate that certbot issued or renewed is served without a restart.
set -eu
portal-cert
interval="${NGINX_RELOAD_SECONDS:-21600}"
(
    while sleep "$interval"; do
        # Never let one failed reload end the loop.
        { portal-cert >/dev/null && nginx -s reload; } || echo "portal-cert: reload failed" >&2
    done
) &
