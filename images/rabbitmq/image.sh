# rabbitmq: Debian bookworm's RabbitMQ 3.10 on Debian's Erlang/OTP 25
# (upstream default image: rabbitmq:4.0.9, on its own OTP 27 build).
# uid/gid 999 `rabbitmq`, RABBITMQ_DEFAULT_USER/PASS, the rabbitmq_prometheus
# plugin enabled (15692) as upstream, `rabbitmq-diagnostics` on PATH.
RABBITMQ_DEB=3.10.8-1.1+deb12u1
IMAGE_TAG=3.10.8
IMAGE_BASE=debian-base
IMAGE_CONFIG=(
    --config.entrypoint docker-entrypoint.sh
    --config.cmd rabbitmq-server
    # Debian's scripts proper, not its /usr/sbin wrappers (which insist on
    # root or the rabbitmq user by name).
    --config.env PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --config.env HOME=/var/lib/rabbitmq
    --config.env RABBITMQ_DATA_DIR=/var/lib/rabbitmq
    --config.volume /var/lib/rabbitmq
    --config.exposedports 4369/tcp --config.exposedports 5672/tcp
    --config.exposedports 15692/tcp --config.exposedports 25672/tcp
)

image_populate() {
    local rootfs=$1
    # The user first, so the package keeps uid/gid 999.
    in_rootfs "$rootfs" sh -euc '
        groupadd --system --gid 999 rabbitmq
        useradd --system --uid 999 --gid rabbitmq --home-dir /var/lib/rabbitmq --shell /bin/sh rabbitmq'
    apt_install "$rootfs" "rabbitmq-server=$RABBITMQ_DEB"
    install -d -o 999 -g 999 -m 1777 "$rootfs/etc/rabbitmq/conf.d"
    install -m 644 "$IMAGE_DIR/10-defaults.conf" "$rootfs/etc/rabbitmq/conf.d/10-defaults.conf"
    # Prometheus metrics on 15692 by default, as upstream.
    echo '[rabbitmq_prometheus].' > "$rootfs/etc/rabbitmq/enabled_plugins"
    chown 999:999 "$rootfs/etc/rabbitmq" "$rootfs/etc/rabbitmq/enabled_plugins"
    rm -rf "$rootfs"/var/lib/rabbitmq/* "$rootfs"/var/lib/rabbitmq/.erlang.cookie "$rootfs"/var/log/rabbitmq/*
    install -d -o 999 -g 999 -m 1777 "$rootfs/var/lib/rabbitmq" "$rootfs/var/log/rabbitmq"
    install -m 755 "$IMAGE_DIR/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
}
