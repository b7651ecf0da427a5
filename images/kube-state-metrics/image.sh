# kube-state-metrics: kube-state-metrics 2.15.0 built from the Go module
# proxy (upstream image: registry.k8s.io/kube-state-metrics/kube-state-metrics,
# distroless). One static binary, CA certificates, nobody (65534).
KSM_VERSION=v2.15.0
IMAGE_TAG=${KSM_VERSION#v}
IMAGE_BASE=
IMAGE_KEY_EXTRA="kube-state-metrics $KSM_VERSION $(go version 2>/dev/null) $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
IMAGE_CONFIG=(
    --config.entrypoint /kube-state-metrics
    --config.cmd --port=8080 --config.cmd --telemetry-port=8081
    --config.user 65534:65534
    --config.exposedports 8080/tcp --config.exposedports 8081/tcp
)
KSM_BIN=$CACHE/tools/kube-state-metrics-$KSM_VERSION/kube-state-metrics

image_prepare() {
    go_binary "$KSM_BIN" "k8s.io/kube-state-metrics/v2@$KSM_VERSION" \
        "-s -w -X github.com/prometheus/common/version.Version=$KSM_VERSION"
}

image_populate() {
    local rootfs=$1
    scratch_files "$rootfs"
    install -m 755 "$KSM_BIN" "$rootfs/kube-state-metrics"
}
