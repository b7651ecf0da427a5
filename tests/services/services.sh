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
# Ports (override through the environment):
#   redis     ELASTIC_AIRFLOW_REDIS_PORT     (16379)
#   rabbitmq  ELASTIC_AIRFLOW_RABBITMQ_PORT  (35672, AMQP)
#             ELASTIC_AIRFLOW_RABBITMQ_DIST_PORT (35673, Erlang distribution)
#             ELASTIC_AIRFLOW_EPMD_PORT      (34369, a private epmd)
set -euo pipefail

CACHE="${ELASTIC_AIRFLOW_CACHE:-$HOME/.cache/elastic-airflow}"
RUN="$CACHE/run"
START_TIMEOUT="${ELASTIC_AIRFLOW_SERVICE_START_TIMEOUT:-60}"

REDIS_PORT="${ELASTIC_AIRFLOW_REDIS_PORT:-16379}"
RABBITMQ_PORT="${ELASTIC_AIRFLOW_RABBITMQ_PORT:-35672}"
RABBITMQ_DIST="${ELASTIC_AIRFLOW_RABBITMQ_DIST_PORT:-35673}"
EPMD_PORT="${ELASTIC_AIRFLOW_EPMD_PORT:-34369}"

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
    launch "$dir" server redis-server "$dir/redis.conf"
}

svc_redis_ready() {
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

svc_redis_env() {
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
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

usage() { echo "usage: $0 start|stop|status|env <name>..." >&2; exit 2; }

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
