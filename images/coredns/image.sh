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
    [ -x "$COREDNS_BIN" ] && return
    echo "building coredns $COREDNS_VERSION from the Go module proxy (cold: minutes)" >&2
    GOBIN=$(dirname "$COREDNS_BIN") CGO_ENABLED=0 GOFLAGS=-mod=mod \
        go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}

image_populate() {
    local rootfs=$1
    install -m 755 "$COREDNS_BIN" "$rootfs/coredns"
    # Like the upstream image: it may bind port 53 as a non-root user.
    setcap cap_net_bind_service=+ep "$rootfs/coredns"
    install -d "$rootfs/etc/ssl/certs" "$rootfs/etc/coredns" "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    install -m 644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
    # A default configuration, for a bare `ctr run`; a Deployment mounts its own.
    printf '.:53 {\n    errors\n    health :8080\n    ready :8181\n    forward . /etc/resolv.conf\n    cache 30\n}\n' \
        > "$rootfs/etc/coredns/Corefile"
}
