# pgbouncer: Debian bookworm's pgbouncer (upstream image, the database role's
# default: apache/airflow:airflow-pgbouncer-2025.03.05-1.23.1, PgBouncer
# 1.23.1 built on Alpine). What our manifest relies on: `pgbouncer` and `sh`
# on PATH, the configuration in /etc/pgbouncer (mounted), run as
# 65534:65534 (nobody) with PgBouncer as PID 1. An entrypoint of our own for
# other uses.
PGBOUNCER_DEB=1.18.0-1+deb12u1
IMAGE_TAG=1.18.0
IMAGE_BASE=debian-base
IMAGE_CONFIG=(
    --config.entrypoint docker-entrypoint.sh
    --config.cmd pgbouncer --config.cmd /etc/pgbouncer/pgbouncer.ini
    --config.exposedports 6432/tcp
)

image_populate() {
    local rootfs=$1
    apt_install "$rootfs" "pgbouncer=$PGBOUNCER_DEB"
    # Debian's sample configuration (a log file and a pid file under
    # postgres's directories, a unix socket in /var/run/postgresql) gives
    # way to one that writes nothing: listen on every address, port 6432,
    # no user (mount the real one over /etc/pgbouncer).
    rm -f "$rootfs"/etc/pgbouncer/*
    cat > "$rootfs/etc/pgbouncer/pgbouncer.ini" <<'INI'
; localhost/elastic-airflow/pgbouncer's default: mount your own /etc/pgbouncer.
[databases]

[pgbouncer]
listen_addr = *
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
INI
    : > "$rootfs/etc/pgbouncer/userlist.txt"
    chmod 644 "$rootfs/etc/pgbouncer/pgbouncer.ini" "$rootfs/etc/pgbouncer/userlist.txt"
    install -m 755 "$IMAGE_DIR/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
}
