# keda-metrics-apiserver: KEDA's metrics API server (`keda-adapter`, from
# $KEDA_MODULE/cmd/adapter) built from the Go module proxy, version and build
# in ../keda-operator/keda.sh (upstream image:
# ghcr.io/kedacore/keda-metrics-apiserver, distroless static:nonroot). One
# static binary, CA certificates, nonroot (65532). Not in the local
# inventory: for the KEDA benchmark (issue 17), built on demand.
KEDA_SH=$(cd "$(dirname "${BASH_SOURCE[0]}")/../keda-operator" && pwd)/keda.sh
source "$KEDA_SH"
IMAGE_TAG=${KEDA_VERSION#v}
IMAGE_BASE=
# keda.sh is outside this directory: its content is part of the key.
IMAGE_KEY_EXTRA="$KEDA_KEY $(sha256sum "$KEDA_SH" | cut -c1-16) $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
# Upstream's Dockerfile.adapter: ENTRYPOINT ["/keda-adapter",
# "--secure-port=6443", "--zap-log-level=info", "--zap-encoder=console"],
# USER 65532:65532, WORKDIR /. Its manifests: 6443 the aggregated
# external.metrics.k8s.io API (HTTPS, /healthz, /readyz), 8080 Prometheus
# metrics; certificates in /certs, an emptyDir on /tmp.
IMAGE_CONFIG=(
    --config.entrypoint /keda-adapter --config.entrypoint --secure-port=6443
    --config.entrypoint --zap-log-level=info --config.entrypoint --zap-encoder=console
    --config.user 65532:65532
    --config.workingdir /
    --config.exposedports 6443/tcp --config.exposedports 8080/tcp
)

image_prepare() {
    keda_binary keda-adapter adapter
}

image_populate() {
    local rootfs=$1
    scratch_files "$rootfs"
    install -m 755 "$KEDA_TOOLS/keda-adapter" "$rootfs/keda-adapter"
}
