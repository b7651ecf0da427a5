#!/usr/bin/env bash
# Real servers for the tests, from the distribution's packages, run as the
# current user on loopback only, on non-default ports.
#
#   tests/services/services.sh start|stop|status|env <name>...
#
# State, logs and the pid file of <name> live under
#   ${ELASTIC_AIRFLOW_CACHE:-$HOME/.cache/elastic-airflow}/run/<name>
# `start` returns once the server answers (and is a no-op if it already runs);
# `stop` ends exactly the process group it started (recorded in <dir>/pid)
# and nothing else. `env <name>` prints the connection settings as shell
# assignments (e.g. REDIS_URL=redis://127.0.0.1:16379/0).
#
# Adding a server: write svc_<name>_start (launch it in the foreground-style
# with `launch`), svc_<name>_ready (exit 0 once it answers) and svc_<name>_env
# (print its connection settings); nothing else needs to change.
#
# Ports (override through the environment). All below 32768: a listener in
# the kernel's ephemeral range (32768-60999) fails with EADDRINUSE whenever a
# client connection happens to hold that local port.
#   redis     ELASTIC_AIRFLOW_REDIS_PORT     (16379)
#             ELASTIC_AIRFLOW_REDIS_PASSWORD (default none: no AUTH; set it to
#             run an instance that requires it, e.g. with its own port and
#             ELASTIC_AIRFLOW_CACHE)
#   rabbitmq  ELASTIC_AIRFLOW_RABBITMQ_PORT  (25672, AMQP)
#             ELASTIC_AIRFLOW_RABBITMQ_DIST_PORT (25673, Erlang distribution)
#             ELASTIC_AIRFLOW_EPMD_PORT      (24369, a private epmd)
#   postgresql ELASTIC_AIRFLOW_POSTGRESQL_PORT (15432)
#   mariadb   ELASTIC_AIRFLOW_MARIADB_PORT   (13306)
#
# PostgreSQL and MariaDB refuse to (or should not) run as root: when this
# script runs as root they run as the packages' system users (postgres,
# mysql) through setpriv. Their admin account gets a random password, kept in
# <dir>/admin-password (mode 600); `env` prints it in an admin URL. TCP
# clients always need a password (the tests create users with exactly the
# credentials a cluster's Secrets hold).
set -euo pipefail

CACHE="${ELASTIC_AIRFLOW_CACHE:-$HOME/.cache/elastic-airflow}"
RUN="$CACHE/run"
START_TIMEOUT="${ELASTIC_AIRFLOW_SERVICE_START_TIMEOUT:-60}"

REDIS_PORT="${ELASTIC_AIRFLOW_REDIS_PORT:-16379}"
REDIS_PASSWORD="${ELASTIC_AIRFLOW_REDIS_PASSWORD:-}"
RABBITMQ_PORT="${ELASTIC_AIRFLOW_RABBITMQ_PORT:-25672}"
POSTGRESQL_PORT="${ELASTIC_AIRFLOW_POSTGRESQL_PORT:-15432}"
MARIADB_PORT="${ELASTIC_AIRFLOW_MARIADB_PORT:-13306}"
RABBITMQ_DIST="${ELASTIC_AIRFLOW_RABBITMQ_DIST_PORT:-25673}"
EPMD_PORT="${ELASTIC_AIRFLOW_EPMD_PORT:-24369}"

die() { echo "services.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

# --- generic pid handling -------------------------------------------------

# alive <pidfile>: the recorded process (group leader) still runs
alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(cat "$1")"
    kill -0 "$pid" 2>/dev/null
}

# launch <dir> <pidfile-name> <cmd...>: start cmd in its own session (so its
# children share one process group we can end as a whole), output to
# <dir>/<pidfile-name>.log, pid to <dir>/<pidfile-name>.pid
launch() {
    local dir="$1" name="$2"
    shift 2
    setsid "$@" >>"$dir/$name.log" 2>&1 </dev/null &
    echo $! >"$dir/$name.pid"
}

# end <pidfile>: TERM the process group led by the recorded pid, then KILL
# what is left after 20 s; removes the pid file.
end() {
    local pidfile="$1" pid i
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 200); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

wait_ready() {
    local name="$1" i
    for i in $(seq 1 $((START_TIMEOUT * 5))); do
        if "svc_${name}_ready" >/dev/null 2>&1; then
            return 0
        fi
        alive "$RUN/$name/server.pid" || {
            tail -n 30 "$RUN/$name"/*.log >&2 || true
            echo "services.sh: $name exited during start-up (logs above, in $RUN/$name)" >&2
            return 1
        }
        sleep 0.2
    done
    tail -n 30 "$RUN/$name"/*.log >&2 || true
    echo "services.sh: $name did not answer within ${START_TIMEOUT}s (logs in $RUN/$name)" >&2
    return 1
}

# --- redis ------------------------------------------------------------------

svc_redis_start() {
    local dir="$RUN/redis"
    need redis-server "apt-get install -y redis-server"
    mkdir -p "$dir/data"
    cat >"$dir/redis.conf" <<EOF
bind 127.0.0.1
protected-mode yes
port $REDIS_PORT
daemonize no
dir $dir/data
save ""
appendonly no
logfile ""
EOF
    if [ -n "$REDIS_PASSWORD" ]; then
        chmod 600 "$dir/redis.conf"
        echo "requirepass $REDIS_PASSWORD" >>"$dir/redis.conf"
    fi
    launch "$dir" server redis-server "$dir/redis.conf"
}

svc_redis_ready() {
    [ "$(REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

svc_redis_env() {
    echo "REDIS_URL=redis://${REDIS_PASSWORD:+:$REDIS_PASSWORD@}127.0.0.1:$REDIS_PORT/0"
}

# --- rabbitmq ---------------------------------------------------------------

rabbitmq_vars() {
    local dir="$RUN/rabbitmq"
    export HOME="$dir/home"   # holds this node's private .erlang.cookie
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT="$EPMD_PORT"
    export RABBITMQ_NODENAME="elastic-airflow-test@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$RABBITMQ_PORT"
    export RABBITMQ_DIST_PORT="$RABBITMQ_DIST"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_LOGS=-            # to stdout, i.e. $dir/server.log
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    # the Erlang distribution listener on loopback too
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

svc_rabbitmq_start() {
    local dir="$RUN/rabbitmq" rmq=/usr/lib/rabbitmq/bin
    [ -x "$rmq/rabbitmq-server" ] || die "rabbitmq-server not found: apt-get install -y rabbitmq-server"
    need epmd "apt-get install -y erlang-base"
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    rabbitmq_vars
    if [ ! -s "$HOME/.erlang.cookie" ]; then
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$HOME/.erlang.cookie"
    fi
    chmod 400 "$HOME/.erlang.cookie"
    : >"$RABBITMQ_CONF_ENV_FILE"
    echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    echo "[]." >"$RABBITMQ_ADVANCED_CONFIG_FILE"
    cat >"$RABBITMQ_CONFIG_FILE" <<EOF
loopback_users.guest = true
log.console = true
log.console.level = warning
log.file = false
EOF
    # a private epmd on loopback, ended with the server
    if ! alive "$dir/epmd.pid"; then
        launch "$dir" epmd epmd -address 127.0.0.1 -port "$EPMD_PORT"
    fi
    launch "$dir" server "$rmq/rabbitmq-server"
}

svc_rabbitmq_ready() {
    rabbitmq_vars
    /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RABBITMQ_NODENAME" --timeout 5 await_startup
}

svc_rabbitmq_env() {
    echo "RABBITMQ_URL=amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT//"
}

svc_rabbitmq_stop_extra() {
    end "$RUN/rabbitmq/epmd.pid"
}

# --- servers that run as an unprivileged user ------------------------------

# as_user <user> <cmd...>: run cmd as <user> when we are root, else as we are
as_user() {
    local user="$1"
    shift
    # shellcheck disable=SC2046  # a word list by design
    $(user_prefix "$user") "$@"
}

# user_prefix <user>: the command words that make a program run as <user>
# (setpriv execs, so `launch` records the server's own pid)
user_prefix() {
    if [ "$(id -u)" = 0 ]; then
        echo setpriv --reuid="$1" --regid="$1" --init-groups --
    fi
}

# server_user <system user>: who runs a database server
server_user() {
    if [ "$(id -u)" = 0 ]; then
        id "$1" >/dev/null 2>&1 || die "system user $1 missing (it comes with the server's package)"
        echo "$1"
    else
        id -un
    fi
}

# data_dir <name> <user>: the server's own files. $RUN/<name>/data, unless
# <user> cannot reach $RUN (root's home is usually 0700); then a directory
# under /var/tmp that only <user> can read, linked from $RUN/<name>/data.
# Prints the resolved path (the server must not need to pass through $RUN).
data_dir() {
    local name="$1" user="$2" link="$RUN/$1/data" alt
    if [ -L "$link" ] || [ -d "$link" ]; then
        readlink -f "$link"
        return
    fi
    if as_user "$user" test -w "$RUN/$name" 2>/dev/null; then
        mkdir -p "$link"
    else
        alt="/var/tmp/elastic-airflow-services/$(printf %s "$RUN" | sha256sum | cut -c1-12)/$name"
        mkdir -p "$alt"
        chmod 755 "$(dirname "$(dirname "$alt")")" "$(dirname "$alt")"
        ln -sfn "$alt" "$link"
    fi
    chown "$user:" "$link/" 2>/dev/null || true
    chmod 700 "$link/"
    readlink -f "$link"
}

# admin_password <name>: generated once, kept in <dir>/admin-password
admin_password() {
    local f="$RUN/$1/admin-password"
    if [ ! -s "$f" ]; then
        (umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f")
    fi
    cat "$f"
}

# --- postgresql ---------------------------------------------------------------

pg_bin() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$d" ] && [ -x "$d/postgres" ] || die "postgres not found: apt-get install -y postgresql"
    echo "$d"
}

svc_postgresql_start() {
    local dir="$RUN/postgresql" bin user data pw
    bin="$(pg_bin)"
    user="$(server_user postgres)"
    data="$(data_dir postgresql "$user")"
    pw="$(admin_password postgresql)"
    if [ ! -s "$data/db/PG_VERSION" ]; then
        install -d -o "$user" -m 700 "$data/db" "$data/socket"
        printf '%s\n' "$pw" | install -o "$user" -m 600 /dev/stdin "$data/pwfile"
        as_user "$user" "$bin/initdb" -D "$data/db" -U postgres --pwfile="$data/pwfile" \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >>"$dir/initdb.log" 2>&1 ||
            die "initdb failed (see $dir/initdb.log)"
        rm -f "$data/pwfile"
    fi
    # the unix socket lives in a directory only the server user can enter, so
    # every client that is not that user goes through TCP and a password
    # shellcheck disable=SC2046
    launch "$dir" server $(user_prefix "$user") "$bin/postgres" -D "$data/db" \
        -c listen_addresses=127.0.0.1 -c port="$POSTGRESQL_PORT" -c unix_socket_directories="$data/socket" \
        -c max_connections=300 -c shared_buffers=64MB -c fsync=off -c synchronous_commit=off \
        -c full_page_writes=off -c logging_collector=off
}

svc_postgresql_ready() {
    "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$POSTGRESQL_PORT"
}

svc_postgresql_env() {
    echo "POSTGRESQL_PORT=$POSTGRESQL_PORT"
    echo "POSTGRESQL_ADMIN_URL=postgresql://postgres:$(admin_password postgresql)@127.0.0.1:$POSTGRESQL_PORT/postgres"
}

# --- mariadb ------------------------------------------------------------------

svc_mariadb_start() {
    local dir="$RUN/mariadb" user data pw
    need mariadbd "apt-get install -y mariadb-server"
    need mariadb-install-db "apt-get install -y mariadb-server"
    user="$(server_user mysql)"
    data="$(data_dir mariadb "$user")"
    pw="$(admin_password mariadb)"
    if [ ! -d "$data/db/mysql" ]; then
        install -d -o "$user" -m 700 "$data/db"
        as_user "$user" mariadb-install-db --no-defaults --datadir="$data/db" --auth-root-authentication-method=socket \
            --skip-test-db >>"$dir/install-db.log" 2>&1 || die "mariadb-install-db failed (see $dir/install-db.log)"
    fi
    # the admin account over TCP, (re)created at every start from the kept password
    printf "CREATE USER IF NOT EXISTS 'admin'@'127.0.0.1' IDENTIFIED BY '%s';\nALTER USER 'admin'@'127.0.0.1' IDENTIFIED BY '%s';\nGRANT ALL PRIVILEGES ON *.* TO 'admin'@'127.0.0.1' WITH GRANT OPTION;\n" \
        "$pw" "$pw" | install -o "$user" -m 600 /dev/stdin "$data/init.sql"
    # shellcheck disable=SC2046
    launch "$dir" server $(user_prefix "$user") mariadbd --no-defaults --datadir="$data/db" \
        --bind-address=127.0.0.1 --port="$MARIADB_PORT" --socket="$data/mariadb.sock" --pid-file="$data/mariadb.pid" \
        --skip-name-resolve --init-file="$data/init.sql" --log-error="$data/error.log" --skip-log-bin \
        --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=0 \
        --max-connections=300 --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
        --explicit-defaults-for-timestamp=ON
}

svc_mariadb_ready() {
    mariadb-admin --no-defaults -h 127.0.0.1 -P "$MARIADB_PORT" -u admin -p"$(admin_password mariadb)" \
        --connect-timeout=2 ping
}

svc_mariadb_env() {
    echo "MARIADB_PORT=$MARIADB_PORT"
    echo "MARIADB_ADMIN_URL=mysql://admin:$(admin_password mariadb)@127.0.0.1:$MARIADB_PORT/mysql"
}

# --- commands ---------------------------------------------------------------

known() { declare -F "svc_${1}_start" >/dev/null || die "unknown service '$1' (known: $(declare -F | sed -n 's/^declare -f svc_\(.*\)_start$/\1/p' | tr '\n' ' '))"; }

cmd_start() {
    local name="$1" dir="$RUN/$1"
    mkdir -p "$dir"
    if alive "$dir/server.pid"; then
        wait_ready "$name" || return 1
        echo "$name already running (pid $(cat "$dir/server.pid"))"
        return 0
    fi
    local f
    for f in "$dir"/*.log; do
        [ -e "$f" ] && mv -f "$f" "$f.1"
    done
    ( "svc_${name}_start" )
    if ! wait_ready "$name"; then
        cmd_stop "$name" >/dev/null
        return 1
    fi
    echo "$name running (pid $(cat "$dir/server.pid"), logs in $dir)"
}

cmd_stop() {
    local name="$1" dir="$RUN/$1"
    end "$dir/server.pid"
    if declare -F "svc_${name}_stop_extra" >/dev/null; then
        "svc_${name}_stop_extra"
    fi
    echo "$name stopped"
}

cmd_status() {
    local name="$1" dir="$RUN/$1"
    if alive "$dir/server.pid"; then
        if ( "svc_${name}_ready" ) >/dev/null 2>&1; then
            echo "$name running (pid $(cat "$dir/server.pid"))"
        else
            echo "$name started but not answering (pid $(cat "$dir/server.pid"))"
            return 1
        fi
    else
        echo "$name stopped"
        return 3
    fi
}

cmd_env() { ( "svc_${1}_env" ); }

usage() { echo "usage: $0 start|stop|status|env <name>... | rabbitmqctl <args>..." >&2; exit 2; }

# rabbitmqctl <args>: administer the test node (users, vhosts, permissions)
if [ "${1:-}" = rabbitmqctl ]; then
    shift
    rabbitmq_vars
    exec /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RABBITMQ_NODENAME" "$@"
fi

[ $# -ge 2 ] || usage
cmd="$1"
shift
case "$cmd" in
    start | stop | status | env) ;;
    *) usage ;;
esac
rc=0
for name in "$@"; do
    known "$name"
    "cmd_$cmd" "$name" || rc=$?
done
exit "$rc"
