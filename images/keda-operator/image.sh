# keda-operator: the KEDA operator (`keda`, from $KEDA_MODULE/cmd/operator)
# built from the Go module proxy, version and build in keda.sh (upstream
# image: ghcr.io/kedacore/keda, distroless static:nonroot). One static
# binary, CA certificates, nonroot (65532). Not in the local inventory: for
# the KEDA benchmark (issue 17), built on demand.
source "$(dirname "${BASH_SOURCE[0]}")/keda.sh"
IMAGE_TAG=${KEDA_VERSION#v}
IMAGE_BASE=
IMAGE_KEY_EXTRA="$KEDA_KEY $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
# Upstream's Dockerfile: ENTRYPOINT ["/keda", "--zap-log-level=info",
# "--zap-encoder=console"], USER 65532:65532, WORKDIR /. Its manifests: 8080
# Prometheus metrics, 8081 /healthz and /readyz, 9666 the gRPC metrics service
# the metrics API server calls.
IMAGE_CONFIG=(
    --config.entrypoint /keda --config.entrypoint --zap-log-level=info --config.entrypoint --zap-encoder=console
    --config.user 65532:65532
    --config.workingdir /
    --config.exposedports 8080/tcp --config.exposedports 8081/tcp --config.exposedports 9666/tcp
)

image_prepare() {
    keda_binary keda operator
}

image_populate() {
    local rootfs=$1
    scratch_files "$rootfs"
    install -m 755 "$KEDA_TOOLS/keda" "$rootfs/keda"
}
