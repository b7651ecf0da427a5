#!/bin/bash
# Entrypoint of localhost/elastic-airflow/postgresql (images/postgresql),
# written for elastic_airflow.cluster. It keeps the contract of the official
# postgres image that our manifests rely on:
#  - arguments that start with `-` are postgres's (`-c max_connections=200`);
#  - PGDATA (default /var/lib/postgresql/data) without a cluster gets one:
#    initdb with superuser POSTGRES_USER (default postgres) and password
#    POSTGRES_PASSWORD (required, unless POSTGRES_HOST_AUTH_METHOD=trust),
#    database POSTGRES_DB (default: the user's name), extra initdb flags from
#    POSTGRES_INITDB_ARGS, scripts from /docker-entrypoint-initdb.d (*.sh,
#    *.sql), local socket connections trusted, network connections by
#    password (scram-sha-256), and the server listening on all addresses;
#  - started as root it gives PGDATA to `postgres` (999) and drops to it;
#    otherwise it runs as it is (runAsUser 999);
#  - anything that is not postgres is run as is.
set -Eeuo pipefail

say() { echo "docker-entrypoint.sh: $*" >&2; }

if [ $# -eq 0 ] || [ "${1:0:1}" = - ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

mkdir -p "$PGDATA"
chmod 700 "$PGDATA" 2>/dev/null || true

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        say "error: the database is uninitialized and POSTGRES_PASSWORD is not set"
        say "(set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one)"
        exit 1
    fi
    say "initializing $PGDATA for user $POSTGRES_USER"
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of flags
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    trap - EXIT
    {
        echo
        echo "# Added by the image's entrypoint: network connections by $auth."
        echo "host all all all $auth"
    } >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"

    # A server on the socket only, for the database and the init scripts.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p 5432" start >/dev/null
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres -q)
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --set db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) say "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) say "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *) [ ! -e "$f" ] || say "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    say "initialized; starting postgres"
fi

exec "$@"
