# statsd-exporter: prometheus/statsd_exporter 0.28.0 built from the Go module
# proxy (upstream image: prom/statsd-exporter, on busybox). One static
# binary, CA certificates, nobody (65534).
STATSD_EXPORTER_VERSION=v0.28.0
IMAGE_TAG=${STATSD_EXPORTER_VERSION#v}
IMAGE_BASE=
IMAGE_KEY_EXTRA="statsd_exporter $STATSD_EXPORTER_VERSION $(go version 2>/dev/null) $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
IMAGE_CONFIG=(
    --config.entrypoint /bin/statsd_exporter
    --config.user 65534:65534
    --config.exposedports 9102/tcp --config.exposedports 9125/tcp --config.exposedports 9125/udp
)
# The same path and flags as the Makefile's STATSD_EXPORTER_BIN: one build serves both.
STATSD_EXPORTER_BIN=$CACHE/tools/statsd_exporter-$STATSD_EXPORTER_VERSION/statsd_exporter

image_prepare() {
    go_binary "$STATSD_EXPORTER_BIN" "github.com/prometheus/statsd_exporter@$STATSD_EXPORTER_VERSION" \
        "-X github.com/prometheus/common/version.Version=${STATSD_EXPORTER_VERSION#v}"
}

image_populate() {
    local rootfs=$1
    scratch_files "$rootfs"
    install -d "$rootfs/bin"
    install -m 755 "$STATSD_EXPORTER_BIN" "$rootfs/bin/statsd_exporter"
}
