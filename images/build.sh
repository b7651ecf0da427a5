#!/usr/bin/env bash
# Builds the container images the local inventory deploys, without a Docker
# engine and without a registry, as OCI archives, and optionally imports them
# into a containerd.
#
#   images/build.sh [--import CONTAINERD_SOCKET] [NAME ...]    # no NAME = all
#
# "All" is the images the local inventory deploys; the ON_DEMAND ones (KEDA's
# operator and metrics API server, for the issue 17 benchmark) are built only
# when named: images/build.sh keda-operator keda-metrics-apiserver
#
# Every image is a directory images/<name>/ with an image.sh (sourced in a
# subshell) that says what the image holds: IMAGE_TAG, IMAGE_BASE (another
# image of this directory, or empty for an image from scratch),
# IMAGE_PACKAGES (Debian packages, pinned), IMAGE_CONFIG (umoci config flags:
# entrypoint, user, env, ports) and the functions image_prepare (on the host,
# before the root file system is touched: compile, download into the cache)
# and image_populate ROOTFS (fill the root file system).
#
# An image is base layers + one layer of its own: umoci unpacks the base,
# image_populate changes the root file system, umoci repack records the
# difference as a new layer. The result is an OCI layout, tarred to
#   $ELASTIC_AIRFLOW_CACHE/images/<name>-<key>.tar
# where <key> hashes the image's inputs: its directory, its base's key, the
# functions below that shape a layer, and the pins image.sh adds to the key
# (IMAGE_KEY_EXTRA, e.g. the Go toolchain). An unchanged input set is a cache
# hit; a second run with nothing changed does nothing.
#
# The image is named localhost/elastic-airflow/<name>:<IMAGE_TAG> once
# imported (`ctr -n k8s.io images import --base-name`); the import is skipped
# when containerd already holds that name at the same manifest digest.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${ELASTIC_AIRFLOW_CACHE:-$HOME/.cache/elastic-airflow}
OUT=$CACHE/images
REPO=localhost/elastic-airflow
DEBIAN_MIRROR=http://deb.debian.org/debian
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
# Build order: a base before the images on it.
ALL=(pause coredns debian-base redis postgresql pgbouncer mariadb rabbitmq
     prometheus statsd-exporter kube-state-metrics airflow airflow-demo)
# Built only when named (not by `make images`): the local inventory does not
# deploy them.
ON_DEMAND=(keda-operator keda-metrics-apiserver)

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

SOCKET=
NAMES=()
while [ $# -gt 0 ]; do
    case $1 in
        --import) SOCKET=${2:?--import needs a containerd socket}; shift 2 ;;
        --import=*) SOCKET=${1#--import=}; shift ;;
        -h|--help) usage 0 ;;
        -*) echo "build.sh: unknown option $1" >&2; usage 2 >&2 ;;
        *) NAMES+=("$1"); shift ;;
    esac
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=("${ALL[@]}")
for n in "${NAMES[@]}"; do
    [ -f "$HERE/$n/image.sh" ] || { echo "build.sh: no image $n (no $HERE/$n/image.sh; images: ${ALL[*]} ${ON_DEMAND[*]})" >&2; exit 2; }
done

# One build at a time per cache (they share the base layers and apt's cache).
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
if ! flock -n 9; then
    echo "build.sh: waiting for another build.sh using $OUT" >&2
    flock 9
fi

T0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }
log() { printf '[%7s] %s\n' "$(elapsed "$T0")" "$*" >&2; }

# --- What shapes a layer: these functions are part of every image's key -------

# Runs a command inside ROOTFS with /proc, /dev, the host's resolver and the
# shared apt cache (lists and .debs, kept outside the layer) mounted.
in_rootfs() {
    local rootfs=$1; shift
    mkdir -p "$OUT/apt/lists/partial" "$OUT/apt/archives/partial"
    mount -t proc proc "$rootfs/proc"
    mount --bind /dev "$rootfs/dev"
    mount --bind "$OUT/apt/lists" "$rootfs/var/lib/apt/lists"
    mount --bind "$OUT/apt/archives" "$rootfs/var/cache/apt/archives"
    MOUNTED+=("$rootfs/var/cache/apt/archives" "$rootfs/var/lib/apt/lists" "$rootfs/dev" "$rootfs/proc")
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    local rc=0
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        chroot "$rootfs" "$@" || rc=$?
    : > "$rootfs/etc/resolv.conf"
    unmount_all
    return $rc
}

unmount_all() {
    local m
    for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    MOUNTED=()
}

# apt-get install of the pinned packages in ROOTFS, then no apt state left.
apt_install() {
    local rootfs=$1; shift
    local aptlog=$OUT/work/apt-$$.log
    in_rootfs "$rootfs" sh -euc '
        apt-get -q update
        apt-get -q -y install --no-install-recommends "$@"' sh "$@" >"$aptlog" 2>&1 \
        || { tail -30 "$aptlog" >&2; echo "apt-get install $* failed (a pin the archive no longer has? see apt-cache policy)" >&2; return 1; }
    rm -f "$aptlog"
    rm -rf "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/var/lib/dpkg/*-old "$rootfs"/tmp/* "$rootfs"/root/.cache
}

# One image: its base's layout (blobs hard-linked; index.json copied, since
# umoci rewrites it), unpacked, populated, repacked as one more layer,
# configured, garbage-collected and tarred.
build_layers() {
    local name=$1 key=$2 work=$3 base_layout=$4 base_tag=$5
    local layout=$work/layout bundle=$work/bundle
    if [ -n "$base_layout" ]; then
        mkdir -p "$layout"
        cp "$base_layout/oci-layout" "$base_layout/index.json" "$layout/"
        cp -al "$base_layout/blobs" "$layout/blobs"
        umoci unpack --image "$layout:$base_tag" "$bundle" >/dev/null
    else
        umoci init --layout "$layout"
        umoci new --image "$layout:$IMAGE_TAG"
        umoci unpack --image "$layout:$IMAGE_TAG" "$bundle" >/dev/null
    fi
    image_populate "$bundle/rootfs"
    umoci repack --image "$layout:$IMAGE_TAG" --history.created_by "images/build.sh $name (key $key)" "$bundle"
    if [ -n "$base_layout" ] && [ "$base_tag" != "$IMAGE_TAG" ]; then
        umoci rm --image "$layout:$base_tag"
    fi
    umoci config --image "$layout:$IMAGE_TAG" --no-history \
        --config.label "org.opencontainers.image.title=$REPO/$name" \
        --config.label "org.opencontainers.image.source=elastic_airflow.cluster images/$name" \
        "${IMAGE_CONFIG[@]}"
    umoci gc --layout "$layout"
}

# The few files a from-scratch image of one static binary needs: users root,
# nobody (65534) and nonroot (65532), /tmp, and the host's (Debian's) CA
# certificates.
scratch_files() {
    local rootfs=$1
    install -d "$rootfs/etc/ssl/certs"
    install -d -m 1777 "$rootfs/tmp"
    install -m 644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$rootfs/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' > "$rootfs/etc/group"
}

# go_binary OUT PKG@VERSION LDFLAGS [REPLACE]: a static binary from the Go
# module proxy, built once per OUT path (which names the version). With
# REPLACE (a go.mod replace directive) it is built in a throwaway main module
# that carries it, since `go install pkg@version` refuses modules with one.
go_binary() {
    local out=$1 pkgver=$2 ldflags=$3 replace=${4:-}
    [ -x "$out" ] && return
    echo "building $(basename "$out") ${pkgver#*@} from the Go module proxy (cold: minutes)" >&2
    mkdir -p "$(dirname "$out")"
    if [ -z "$replace" ]; then
        local bin=$out.gobin
        rm -rf "$bin"
        GOBIN=$bin CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "$pkgver"
        mv "$bin"/* "$out.tmp"
        rm -rf "$bin"
    else
        local d
        d=$(mktemp -d)
        printf 'module %s-build\n\ngo 1.24\n\nreplace %s\n' "$(basename "$out")" "$replace" > "$d/go.mod"
        (cd "$d" && go get "$pkgver" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "${pkgver%@*}")
        rm -rf "$d"
    fi
    mv "$out.tmp" "$out"
}

LAYER_FUNCTIONS=(in_rootfs unmount_all apt_install build_layers scratch_files go_binary)

# --- Keys, builds, imports ------------------------------------------------------

# image_var NAME VAR: a variable of images/NAME/image.sh.
image_var() { ( source "$HERE/$1/image.sh"; eval "printf '%s' \"\${$2:-}\"" ); }

declare -A KEYS=()
image_key() {
    local name=$1
    if [ -z "${KEYS[$name]:-}" ]; then
        local base extra
        base=$(image_var "$name" IMAGE_BASE)
        extra=$(source "$HERE/$name/image.sh"; printf '%s' "${IMAGE_KEY_EXTRA:-}")
        KEYS[$name]=$( {
            (cd "$HERE/$name" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum)
            [ -z "$base" ] || echo "base $base $(image_key "$base")"
            declare -f "${LAYER_FUNCTIONS[@]}"
            echo "repo $REPO mirror $DEBIAN_MIRROR extra $extra"
        } | sha256sum | cut -c1-16)
    fi
    printf '%s' "${KEYS[$name]}"
}

MOUNTED=()
WORKDIRS=()
cleanup() {
    unmount_all
    local w
    for w in "${WORKDIRS[@]}"; do rm -rf "$w"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A DONE=()
# ensure_built NAME: builds NAME (and its base) unless cached.
ensure_built() {
    local name=$1
    [ -z "${DONE[$name]:-}" ] || return 0
    local key base base_key="" s
    key=$(image_key "$name")
    base=$(image_var "$name" IMAGE_BASE)
    [ -z "$base" ] || { ensure_built "$base"; base_key=$(image_key "$base"); }
    local archive=$OUT/$name-$key.tar layout=$OUT/layouts/$name-$key
    if [ -f "$archive" ] && [ -f "$layout/index.json" ]; then
        log "$name: cached ($key)"
    else
        s=$(date +%s.%N)
        log "$name: building ($key)"
        mkdir -p "$OUT/work" "$OUT/layouts"
        local work
        work=$(mktemp -d "$OUT/work/$name-XXXX")
        WORKDIRS+=("$work")
        (
            set -euo pipefail
            trap unmount_all EXIT
            source "$HERE/$name/image.sh"
            IMAGE_DIR=$HERE/$name
            export IMAGE_DIR OUT CACHE DEBIAN_MIRROR
            if declare -F image_prepare >/dev/null; then image_prepare "$work"; fi
            local base_tag=""
            [ -z "$base" ] || base_tag=$(image_var "$base" IMAGE_TAG)
            build_layers "$name" "$key" "$work" "${base:+$OUT/layouts/$base-$base_key}" "$base_tag"
        )
        rm -rf "$layout"
        mv "$work/layout" "$layout"
        tar -C "$layout" -cf "$archive.tmp" oci-layout index.json blobs
        mv "$archive.tmp" "$archive"
        rm -rf "$work"
        # Older builds of this image are garbage now.
        local old
        for old in "$OUT/$name"-*.tar; do
            [ "$old" = "$archive" ] || [[ ! $(basename "$old" .tar) =~ ^$name-[0-9a-f]{16}$ ]] || rm -f "$old"
        done
        for old in "$OUT/layouts/$name"-*; do
            [ "$old" = "$layout" ] || [[ ! $(basename "$old") =~ ^$name-[0-9a-f]{16}$ ]] || rm -rf "$old"
        done
        log "$name: built in $(elapsed "$s"), $(du -sh "$archive" | cut -f1) archive"
    fi
    DONE[$name]=1
}

# The manifest digest an archive's index names.
manifest_digest() { jq -r '.manifests[0].digest' "$OUT/layouts/$1-$(image_key "$1")/index.json"; }

import_image() {
    local name=$1 tag ref digest have s
    tag=$(image_var "$name" IMAGE_TAG)
    ref=$REPO/$name:$tag
    digest=$(manifest_digest "$name")
    have=$(ctr --address "$SOCKET" -n k8s.io images ls -q "name==$ref" 2>/dev/null | head -1)
    if [ -n "$have" ] && ctr --address "$SOCKET" -n k8s.io images ls "name==$ref" | awk 'NR>1 {print $3}' | grep -qx "$digest"; then
        log "$ref: already in containerd ($digest)"
        return
    fi
    s=$(date +%s.%N)
    ctr --address "$SOCKET" -n k8s.io images import --base-name "$REPO/$name" \
        "$OUT/$name-$(image_key "$name").tar" >/dev/null
    log "$ref: imported in $(elapsed "$s") ($digest)"
}

for n in "${NAMES[@]}"; do ensure_built "$n"; done
if [ -n "$SOCKET" ]; then
    [ -S "$SOCKET" ] || { echo "build.sh: $SOCKET is not a socket (is containerd running?)" >&2; exit 1; }
    for n in "${NAMES[@]}"; do
        [ "$(image_var "$n" IMAGE_IMPORT)" = no ] || import_image "$n"
    done
fi
for n in "${NAMES[@]}"; do
    [ "$(image_var "$n" IMAGE_IMPORT)" = no ] || printf '%s\t%s\n' "$REPO/$n:$(image_var "$n" IMAGE_TAG)" "$OUT/$n-$(image_key "$n").tar"
done
log "total $(elapsed "$T0")"
