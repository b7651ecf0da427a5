# redis: Debian bookworm's redis-server (upstream image: redis:7.4.2, built
# from source on Debian). uid/gid 999 `redis`, working directory /data,
# `redis-server` and `redis-cli` on PATH, an entrypoint of our own.
REDIS_DEB=5:7.0.15-1~deb12u10
IMAGE_TAG=7.0.15
IMAGE_BASE=debian-base
IMAGE_CONFIG=(
    --config.entrypoint docker-entrypoint.sh
    --config.cmd redis-server
    --config.workingdir /data
    --config.volume /data
    --config.exposedports 6379/tcp
)

image_populate() {
    local rootfs=$1
    # The user first, so the package's postinst keeps uid/gid 999.
    in_rootfs "$rootfs" sh -euc '
        groupadd --system --gid 999 redis
        useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis'
    apt_install "$rootfs" "redis-server=$REDIS_DEB" "redis-tools=$REDIS_DEB"
    # Debian's /etc/redis/redis.conf stays as a sample: like upstream, the
    # server starts with compiled-in defaults unless given a config file.
    install -d -o 999 -g 999 -m 755 "$rootfs/data"
    install -m 755 "$IMAGE_DIR/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
}
