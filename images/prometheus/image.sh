# prometheus: Prometheus 3.5.0 (the Go module's version is v0.305.0) and
# promtool, built from the Go module proxy (upstream image: prom/prometheus,
# on busybox). Static binaries, CA certificates, nobody (65534), the data
# directory /prometheus and a default configuration. The web UI's compiled
# assets are not in the Go module (they are built with npm for releases), so
# the UI pages are missing; the HTTP API, /metrics, /-/ready and /-/healthy
# are all there.
PROMETHEUS_VERSION=3.5.0
PROMETHEUS_MODULE_VERSION=v0.305.0
# Prometheus's go.mod has this replace directive (same as the Makefile's promtool).
PROMETHEUS_REPLACE="github.com/fsnotify/fsnotify v1.8.0 => github.com/fsnotify/fsnotify v1.7.0"
IMAGE_TAG=$PROMETHEUS_VERSION
IMAGE_BASE=
IMAGE_KEY_EXTRA="prometheus $PROMETHEUS_MODULE_VERSION $(go version 2>/dev/null) $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
IMAGE_CONFIG=(
    --config.entrypoint /bin/prometheus
    --config.cmd --config.file=/etc/prometheus/prometheus.yml
    --config.cmd --storage.tsdb.path=/prometheus
    --config.user 65534:65534
    --config.workingdir /prometheus
    --config.volume /prometheus
    --config.exposedports 9090/tcp
)
LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION"
# The Makefile builds promtool at this same path (without -s -w): reused if present.
PROMTOOL_BIN=$CACHE/tools/promtool-v$PROMETHEUS_VERSION/promtool
PROMETHEUS_BIN=$CACHE/tools/prometheus-v$PROMETHEUS_VERSION/prometheus

image_prepare() {
    go_binary "$PROMETHEUS_BIN" "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION" \
        "$LDFLAGS" "$PROMETHEUS_REPLACE"
    go_binary "$PROMTOOL_BIN" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" \
        "-X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" "$PROMETHEUS_REPLACE"
}

image_populate() {
    local rootfs=$1
    scratch_files "$rootfs"
    install -d "$rootfs/bin" "$rootfs/etc/prometheus"
    install -d -o 65534 -g 65534 "$rootfs/prometheus"
    install -m 755 "$PROMETHEUS_BIN" "$rootfs/bin/prometheus"
    install -m 755 "$PROMTOOL_BIN" "$rootfs/bin/promtool"
    # For a bare `ctr run`: scrape itself. The monitoring role mounts its own.
    printf '%s\n' 'global:' '  scrape_interval: 15s' 'scrape_configs:' '  - job_name: prometheus' \
        '    static_configs:' '      - targets: ["localhost:9090"]' > "$rootfs/etc/prometheus/prometheus.yml"
}
