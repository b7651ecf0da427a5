# What both KEDA images share (sourced by keda-operator/image.sh and
# keda-metrics-apiserver/image.sh): the version, and the build of a KEDA
# command from the Go module proxy into $CACHE/tools/keda-<version>/.
#
# v2.18.1: its go.mod pins the Kubernetes libraries to v0.33.5 (client-go,
# apiserver, custom-metrics-apiserver 1.33), the minor of our v1.33 control
# plane, and needs Go >= 1.24.7. Not v2.18.2 or v2.18.3 (same Kubernetes
# pins): the Go module proxy as this machine reaches it answers 403 "This
# module version is not available" for two of their dependencies' zips
# (github.com/newrelic/newrelic-client-go/v2 v2.74.2,
# github.com/solarwinds/swo-sdk-go/swov1 v0.13.0); every module v2.18.1
# needs is there, so it builds with upstream's dependency set unchanged.
KEDA_VERSION=v2.18.1
# Upstream's release sets version.GitCommit to the tag's commit; the Go proxy
# records none for v2.18.1 (no .Origin in its .info), so it stays empty (the
# operator logs "Git Commit: " blank). Version is set.
KEDA_COMMIT=
KEDA_MODULE=github.com/kedacore/keda/v2
KEDA_TOOLS=$CACHE/tools/keda-$KEDA_VERSION
# Upstream's Makefile: -X version.Version (the release tag without its v) and
# -X version.GitCommit; CGO_ENABLED=0. -s -w as our other Go images.
KEDA_LDFLAGS="-s -w -X $KEDA_MODULE/version.Version=${KEDA_VERSION#v}${KEDA_COMMIT:+ -X $KEDA_MODULE/version.GitCommit=$KEDA_COMMIT}"
# Go's own copy of the time zone database in the binary: upstream's
# distroless base has /usr/share/zoneinfo (the cron scaler's timezone);
# these images from scratch do not.
KEDA_GOFLAGS="-mod=mod -tags=timetzdata"
KEDA_KEY="keda $KEDA_VERSION $KEDA_COMMIT $KEDA_LDFLAGS $KEDA_GOFLAGS $(go version 2>/dev/null)"

# keda_replaces: KEDA's go.mod has replace directives (Kubernetes libraries,
# Prometheus, cel-go pinned below what its requirements would select), which
# `go install pkg@version` refuses and a dependent module ignores. They are
# read from that go.mod (the Go proxy's, checksummed) and given to our
# throwaway main module as one replace block.
keda_replaces() {
    local gomod
    gomod=$(go mod download -json "$KEDA_MODULE@$KEDA_VERSION" | jq -r .GoMod)
    go mod edit -json "$gomod" | jq -r '
        "(",
        (.Replace[] | if .New.Version == null then error("local replace of \(.Old.Path)") else
            "\t\(.Old.Path)\(if .Old.Version then " " + .Old.Version else "" end) => \(.New.Path) \(.New.Version)" end),
        ")"'
}

# keda_binary NAME CMD: $KEDA_TOOLS/NAME built from $KEDA_MODULE/cmd/CMD.
keda_binary() {
    local replaces
    [ -x "$KEDA_TOOLS/$1" ] && return
    replaces=$(keda_replaces)
    GOFLAGS=$KEDA_GOFLAGS go_binary "$KEDA_TOOLS/$1" "$KEDA_MODULE/cmd/$2@$KEDA_VERSION" "$KEDA_LDFLAGS" "$replaces"
}
