# postgresql: Debian bookworm's PostgreSQL 15 (upstream default image:
# postgres:16.9; bookworm has no 16). uid/gid 999 `postgres`, the
# docker-library entrypoint contract (docker-entrypoint.sh, written here),
# pg_isready on PATH, PGDATA honoured.
PG_MAJOR=15
PG_DEB=15.20-0+deb12u1
IMAGE_TAG=15.20
IMAGE_BASE=debian-base
IMAGE_CONFIG=(
    --config.entrypoint docker-entrypoint.sh
    --config.cmd postgres
    --config.env PATH=/usr/lib/postgresql/$PG_MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --config.env PG_MAJOR=$PG_MAJOR
    --config.env PGDATA=/var/lib/postgresql/data
    --config.volume /var/lib/postgresql/data
    --config.exposedports 5432/tcp
    --config.stopsignal SIGINT
)

image_populate() {
    local rootfs=$1
    # The user first, so the packages keep uid/gid 999; no cluster is
    # created at install time (the entrypoint creates one in PGDATA).
    in_rootfs "$rootfs" sh -euc '
        groupadd --system --gid 999 postgres
        useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres
        install -d /etc/postgresql-common
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf'
    apt_install "$rootfs" "postgresql-$PG_MAJOR=$PG_DEB" "postgresql-client-$PG_MAJOR=$PG_DEB"
    # Writable by any uid, as upstream: the socket directory, and the
    # default PGDATA's parent for a bare `ctr run`.
    install -d -o 999 -g 999 -m 2777 "$rootfs/var/run/postgresql" "$rootfs/var/lib/postgresql/data"
    install -d -m 755 "$rootfs/docker-entrypoint-initdb.d"
    install -m 755 "$IMAGE_DIR/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
}
