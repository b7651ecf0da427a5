#!/bin/bash
# Entrypoint of localhost/elastic-airflow/mariadb (images/mariadb), written
# for elastic_airflow.cluster. MariaDB stands in for MySQL here; this keeps
# the contract of the official mysql image that our manifests rely on:
#  - arguments that start with `-` are the server's (`--datadir=...`);
#  - a data directory (the server's `datadir`, after its arguments and
#    configuration) without a `mysql` schema is initialized: the root
#    password from MYSQL_ROOT_PASSWORD, or MYSQL_RANDOM_ROOT_PASSWORD=yes
#    (printed once), or MYSQL_ALLOW_EMPTY_PASSWORD=yes (one is required),
#    root also from MYSQL_ROOT_HOST (default %), database MYSQL_DATABASE,
#    user MYSQL_USER with MYSQL_PASSWORD and all rights on that database,
#    scripts from /docker-entrypoint-initdb.d (*.sh, *.sql);
#  - started as root it gives the data directory to `mysql` (999) and drops
#    to it; otherwise it runs as it is (runAsUser 999);
#  - anything that is not the server is run as is.
set -Eeuo pipefail

say() { echo "docker-entrypoint.sh: $*" >&2; }

if [ $# -eq 0 ] || [ "${1:0:1}" = - ]; then
    set -- mariadbd "$@"
fi
case "$1" in
    mariadbd|mysqld) ;;
    *) exec "$@" ;;
esac

# What the server would use, given its arguments and configuration.
server_option() {
    "$@" --verbose --help 2>/dev/null | awk -v k="$OPT" '$1 == k { print $2; exit }'
}
datadir=$(OPT=datadir server_option "$@")
datadir=${datadir%/}
[ -n "$datadir" ] || { say "error: cannot tell the server's datadir"; exit 1; }

if [ "$(id -u)" = 0 ]; then
    install -d -o mysql -g mysql "$datadir"
    find "$datadir" \! -user mysql -exec chown mysql:mysql '{}' +
    exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
fi

# SQL string and identifier literals.
sql_string() { local s=${1//\\/\\\\}; s=${s//\'/\\\'}; printf "'%s'" "$s"; }
sql_ident() { printf '`%s`' "${1//\`/\`\`}"; }

if [ ! -d "$datadir/mysql" ]; then
    if [ -z "${MYSQL_ROOT_PASSWORD:-}" ] && [ "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" != yes ] \
        && [ "${MYSQL_RANDOM_ROOT_PASSWORD:-}" != yes ]; then
        say "error: the database is uninitialized: set one of MYSQL_ROOT_PASSWORD,"
        say "MYSQL_ALLOW_EMPTY_PASSWORD=yes or MYSQL_RANDOM_ROOT_PASSWORD=yes"
        exit 1
    fi
    if [ -n "${MYSQL_USER:-}" ] && [ -z "${MYSQL_PASSWORD:-}" ]; then
        say "error: MYSQL_USER is set but MYSQL_PASSWORD is not"
        exit 1
    fi
    if [ "${MYSQL_USER:-}" = root ]; then
        say "error: MYSQL_USER=root: root is set up by MYSQL_ROOT_PASSWORD"
        exit 1
    fi
    say "initializing $datadir"
    mkdir -p "$datadir"
    mariadb-install-db --datadir="$datadir" --rpm --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve "${@:2}" >/dev/null

    # A server without networking, for the accounts and the init scripts.
    sock=$(mktemp -u /tmp/mariadb-init.XXXXXX.sock)
    "$@" --skip-networking --socket="$sock" --skip-log-bin >/dev/null 2>&1 &
    pid=$!
    sql=(mariadb --protocol=socket --socket="$sock" -uroot --batch --skip-column-names)
    for _ in $(seq 60); do
        mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { say "error: the init server exited"; exit 1; }
        sleep 1
    done

    if [ "${MYSQL_RANDOM_ROOT_PASSWORD:-}" = yes ]; then
        MYSQL_ROOT_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32)
        echo "GENERATED ROOT PASSWORD: $MYSQL_ROOT_PASSWORD"
    fi
    root_pw=$(sql_string "${MYSQL_ROOT_PASSWORD:-}")
    root_host=$(sql_string "${MYSQL_ROOT_HOST:-%}")
    {
        echo "SET @@SESSION.SQL_LOG_BIN = 0;"
        # The install's anonymous accounts and password-less root@<host>
        # accounts: root is root@localhost and root@MYSQL_ROOT_HOST only.
        "${sql[@]}" -e "SELECT CONCAT('DROP USER ', QUOTE(User), '@', QUOTE(Host), ';') FROM mysql.user
                        WHERE User = '' OR (User = 'root' AND Host <> 'localhost')"
        echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $root_pw;"
        if [ "${MYSQL_ROOT_HOST:-%}" != localhost ]; then
            echo "CREATE USER 'root'@$root_host IDENTIFIED BY $root_pw;"
            echo "GRANT ALL ON *.* TO 'root'@$root_host WITH GRANT OPTION;"
        fi
        if [ -n "${MYSQL_DATABASE:-}" ]; then
            echo "CREATE DATABASE IF NOT EXISTS $(sql_ident "$MYSQL_DATABASE");"
        fi
        if [ -n "${MYSQL_USER:-}" ]; then
            echo "CREATE USER $(sql_string "$MYSQL_USER")@'%' IDENTIFIED BY $(sql_string "$MYSQL_PASSWORD");"
            if [ -n "${MYSQL_DATABASE:-}" ]; then
                echo "GRANT ALL ON $(sql_ident "$MYSQL_DATABASE").* TO $(sql_string "$MYSQL_USER")@'%';"
            fi
        fi
        echo "FLUSH PRIVILEGES;"
    } | "${sql[@]}"

    # From here on root has its password.
    defaults=$(mktemp)
    trap 'rm -f "$defaults"' EXIT
    printf '[client]\nuser=root\npassword="%s"\nsocket="%s"\n' \
        "$(printf '%s' "${MYSQL_ROOT_PASSWORD:-}" | sed 's/\\/\\\\/g; s/"/\\"/g')" "$sock" > "$defaults"
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) say "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) say "running $f"; mariadb --defaults-extra-file="$defaults" ${MYSQL_DATABASE:+"$MYSQL_DATABASE"} < "$f" ;;
            *) [ ! -e "$f" ] || say "ignoring $f" ;;
        esac
    done
    mariadb-admin --defaults-extra-file="$defaults" shutdown
    wait "$pid" || true
    rm -f "$defaults"
    trap - EXIT
    say "initialized; starting the server"
fi

exec "$@"
