#!/bin/sh
# Entrypoint of compose's nginx: makes sure a certificate is there, then runs the image's own
# entrypoint with the command (nginx -g 'daemon off;').
#
# A real certificate: put fullchain.pem (certificate, then the chain) and privkey.pem in
# deploy/tls/ before starting. None there: a self-signed one is made once and kept there for
# later starts (delete both files to get a new one). Its names are VOXIO_TLS_NAMES, a
# subjectAltName list (default: localhost and the loopback addresses).
#
# openssl is already in the image (nginx's Debian images install ca-certificates, which
# depends on openssl): nothing is downloaded at run time.
set -eu

dir=${VOXIO_TLS_DIR:-/etc/nginx/tls}
cert=$dir/fullchain.pem
key=$dir/privkey.pem

if [ -s "$cert" ] && [ -s "$key" ]; then
    echo "voxio: TLS certificate from $cert"
elif [ -e "$cert" ] || [ -e "$key" ]; then
    echo "voxio: $cert and $key go together; one of them is missing or empty" >&2
    exit 1
else
    if ! command -v openssl >/dev/null 2>&1; then
        echo "voxio: no certificate in $dir and no openssl to make one" >&2
        exit 1
    fi
    names=${VOXIO_TLS_NAMES:-DNS:localhost,IP:127.0.0.1,IP:::1}
    mkdir -p "$dir"
    (
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
            -subj "/CN=voxio self-signed" -addext "subjectAltName=$names" \
            -keyout "$key.new" -out "$cert.new"
    )
    chmod 644 "$cert.new"
    mv "$key.new" "$key"
    mv "$cert.new" "$cert"
    echo "voxio: made a self-signed certificate for $names in $dir (browsers will warn)"
fi

exec /docker-entrypoint.sh "$@"
