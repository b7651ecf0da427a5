# mariadb: Debian bookworm's MariaDB 10.11, the stand-in for the upstream
# default mysql:8.4.5 (Debian has no MySQL server). uid/gid 999 `mysql`,
# port 3306, `mysqladmin` on PATH, and an entrypoint of our own with the
# official mysql image's MYSQL_* environment contract.
MARIADB_DEB=1:10.11.19-0+deb12u1
IMAGE_TAG=10.11.19
IMAGE_BASE=debian-base
IMAGE_CONFIG=(
    --config.entrypoint docker-entrypoint.sh
    --config.cmd mariadbd
    --config.volume /var/lib/mysql
    --config.exposedports 3306/tcp
)

image_populate() {
    local rootfs=$1
    # The user first, so the packages keep uid/gid 999.
    in_rootfs "$rootfs" sh -euc '
        groupadd --system --gid 999 mysql
        useradd --system --uid 999 --gid mysql --home-dir /nonexistent --shell /bin/false mysql'
    apt_install "$rootfs" "mariadb-server=$MARIADB_DEB" "mariadb-client=$MARIADB_DEB"
    # The package's postinst initialized /var/lib/mysql: the entrypoint does
    # that in the data directory the container is given instead.
    rm -rf "$rootfs"/var/lib/mysql/* "$rootfs"/var/log/mysql/*
    install -d -o 999 -g 999 -m 755 "$rootfs/var/lib/mysql"
    install -d -o 999 -g 999 -m 1777 "$rootfs/run/mysqld"
    install -d -m 755 "$rootfs/docker-entrypoint-initdb.d"
    install -m 644 "$IMAGE_DIR/99-container.cnf" "$rootfs/etc/mysql/mariadb.conf.d/99-container.cnf"
    install -m 755 "$IMAGE_DIR/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
}
