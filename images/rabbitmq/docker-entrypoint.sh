#!/bin/bash
# Entrypoint of localhost/elastic-airflow/rabbitmq (images/rabbitmq), written
# for elastic_airflow.cluster. It keeps the contract of the official rabbitmq
# image that our manifests rely on:
#  - RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS (and RABBITMQ_DEFAULT_VHOST)
#    name the account created on the first boot of an empty data directory
#    (written to /etc/rabbitmq/conf.d/20-default-user.conf, mode 600);
#  - started as root it gives /var/lib/rabbitmq to `rabbitmq` (999) and drops
#    to it; otherwise it runs as it is (runAsUser 999);
#  - options alone are rabbitmq-server's; anything else is run as is.
set -Eeuo pipefail

case "${1:-}" in
    -*) set -- rabbitmq-server "$@" ;;
    '') set -- rabbitmq-server ;;
esac

if [ "$1" = rabbitmq-server ]; then
    if [ "$(id -u)" = 0 ]; then
        find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
    fi
    conf=/etc/rabbitmq/conf.d/20-default-user.conf
    if [ -n "${RABBITMQ_DEFAULT_USER:-}${RABBITMQ_DEFAULT_PASS:-}${RABBITMQ_DEFAULT_VHOST:-}" ]; then
        case "${RABBITMQ_DEFAULT_USER:-}${RABBITMQ_DEFAULT_PASS:-}" in
            *$'\n'*) echo "docker-entrypoint.sh: error: a newline in RABBITMQ_DEFAULT_USER/PASS" >&2; exit 1 ;;
        esac
        (
            umask 077
            {
                echo "# Written by docker-entrypoint.sh from RABBITMQ_DEFAULT_*."
                [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER"
                [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS"
                [ -z "${RABBITMQ_DEFAULT_VHOST:-}" ] || echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
            } > "$conf.tmp"
            mv "$conf.tmp" "$conf"
        )
    fi
fi

# Long host names when the host name is a FQDN, as upstream.
if [ "$(hostname)" != "$(hostname -s)" ]; then
    : "${RABBITMQ_USE_LONGNAME:=true}"
    export RABBITMQ_USE_LONGNAME
fi
exec "$@"
