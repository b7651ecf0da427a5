#!/bin/sh
# Entrypoint of localhost/elastic-airflow/pgbouncer (images/pgbouncer), written
# for elastic_airflow.cluster. Our manifest does not use it (its `command`
# runs `pgbouncer /etc/pgbouncer/pgbouncer.ini` as the pod's user); for
# other uses it keeps the upstream image's behaviour:
#  - no arguments, options alone (`-v`) or a configuration file: PgBouncer,
#    in the foreground, with /etc/pgbouncer/pgbouncer.ini unless a file is given;
#  - started as root, PgBouncer runs as nobody (it refuses to run as root);
#  - anything else is run as is (`sh`, `pgbouncer --version`).
set -e

case "${1:-}" in
    '') set -- pgbouncer /etc/pgbouncer/pgbouncer.ini ;;
    -*|*.ini)
        has_file=
        for a in "$@"; do case $a in *.ini) has_file=1 ;; esac; done
        if [ -n "$has_file" ]; then set -- pgbouncer "$@"; else set -- pgbouncer "$@" /etc/pgbouncer/pgbouncer.ini; fi
        ;;
esac

if [ "$1" = pgbouncer ] && [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"
fi
exec "$@"
