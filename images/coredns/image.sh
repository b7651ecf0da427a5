# coredns: CoreDNS built from the Go module proxy (upstream image:
# registry.k8s.io/coredns/coredns, distroless). One static binary, CA
# certificates, and passwd/group entries for the nonroot user (65532).
COREDNS_VERSION=v1.12.4
IMAGE_TAG=${COREDNS_VERSION#v}
IMAGE_BASE=
IMAGE_KEY_EXTRA="coredns $COREDNS_VERSION $(go version 2>/dev/null) $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
IMAGE_CONFIG=(
    --config.entrypoint /coredns
    --config.cmd -conf --config.cmd /etc/coredns/Corefile
    --config.user 65532:65532
    --config.exposedports 53/udp --config.exposedports 53/tcp --config.exposedports 9153/tcp
)
COREDNS_BIN=$CACHE/tools/coredns-$COREDNS_VERSION/coredns

# The binary is cached by version (a cold build takes a few minutes).
image_prepare() {
    go_binary "$COREDNS_BIN" "github.com/coredns/coredns@$COREDNS_VERSION" "-s -w"
}

image_populate() {
    local rootfs=$1
    scratch_files "$rootfs"
    install -m 755 "$COREDNS_BIN" "$rootfs/coredns"
    # Like the upstream image: it may bind port 53 as a non-root user.
    setcap cap_net_bind_service=+ep "$rootfs/coredns"
    install -d "$rootfs/etc/coredns"
    # A default configuration, for a bare `ctr run`; a Deployment mounts its own.
    printf '.:53 {\n    errors\n    health :8080\n    ready :8181\n    forward . /etc/resolv.conf\n    cache 30\n}\n' \
        > "$rootfs/etc/coredns/Corefile"
}
