#!/bin/sh
# Entrypoint of localhost/elastic-airflow/redis (images/redis), written for
# elastic_airflow.cluster. The contract of the official redis image that it
# keeps:
#  - options alone (`--port 7000`) or a config file first are redis-server's;
#  - started as root, it gives /data to `redis` and drops to that user;
#  - without a config file, protected mode is off (the container's network
#    is the boundary), as in the official image's build;
#  - anything else is run as is (`redis-cli`, `sh`).
set -e

case "${1:-}" in
    -*|*.conf) set -- redis-server "$@" ;;
    '') set -- redis-server ;;
esac

if [ "$1" = redis-server ]; then
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis: '{}' + 2>/dev/null || true
        exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
    fi
    shift
    case "${1:-}" in
        *.conf) conf=$1; shift; set -- redis-server "$conf" "$@" ;;
        *) set -- redis-server --protected-mode no "$@" ;;
    esac
    umask 0077
fi
exec "$@"
