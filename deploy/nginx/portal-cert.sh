#!/bin/sh
# Point $NGINX_CERT_DIR/fullchain.pem and privkey.pem at the Let's Encrypt certificate of SERVER_NAME
# when there is one, else at a self-signed certificate (made once), so Nginx can start, and serve the
# ACME challenge, before the first certificate is issued. Run it again (then `nginx -s reload`) after
# issuance or renewal; the nginx image does both every NGINX_RELOAD_SECONDS.
#
#   SERVER_NAME      the host name on the certificate (default localhost)
#   LETSENCRYPT_DIR  certbot's directory (default /etc/letsencrypt)
#   NGINX_CERT_DIR   where the links go (default /etc/nginx/certs)
set -eu

name="${SERVER_NAME:-localhost}"
live="${LETSENCRYPT_DIR:-/etc/letsencrypt}/live/$name"
cert_dir="${NGINX_CERT_DIR:-/etc/nginx/certs}"
self="$cert_dir/selfsigned"

if [ -s "$live/fullchain.pem" ] && [ -s "$live/privkey.pem" ]; then
    source_dir="$live"
else
    if [ ! -s "$self/fullchain.pem" ] || [ ! -s "$self/privkey.pem" ]; then
        mkdir -p "$self"
        case "$name" in
            *[!0-9.]*) san="DNS:$name" ;;
            *) san="IP:$name" ;;
        esac
        (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$name" \
            -addext "subjectAltName=$san" -keyout "$self/privkey.pem" -out "$self/fullchain.pem" 2>/dev/null)
        chmod 0644 "$self/fullchain.pem"
    fi
    source_dir="$self"
fi

mkdir -p "$cert_dir"
ln -sfn "$source_dir/fullchain.pem" "$cert_dir/fullchain.pem"
ln -sfn "$source_dir/privkey.pem" "$cert_dir/privkey.pem"
echo "portal-cert: serving $source_dir/fullchain.pem for $name"
