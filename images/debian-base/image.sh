# debian-base: Debian 12 (bookworm) `debootstrap --variant=minbase`, the
# shared first layer of every Debian-based image here. Not imported on its
# own: it reaches containerd as the first layer of the images built on it.
# Its key is this directory: change `packages` (or this file) to rebuild it.
IMAGE_TAG=bookworm
IMAGE_BASE=
IMAGE_IMPORT=no
IMAGE_CONFIG=(
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --config.env LANG=C.UTF-8
    --config.cmd /bin/bash
)

image_populate() {
    local rootfs=$1 include
    include=$(grep -v '^#' "$IMAGE_DIR/packages" | xargs | tr ' ' ,)
    mkdir -p "$OUT/apt/archives"
    debootstrap --variant=minbase --include="$include" --cache-dir="$OUT/apt/archives" \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$OUT/work/debootstrap.log" 2>&1 \
        || { tail -20 "$OUT/work/debootstrap.log" >&2; return 1; }
    # The updates and security suites too (same host: the only mirror reachable).
    cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_MIRROR}-security bookworm-security main
SOURCES
    # No recommends, no docs/man pages/translations (copyrights stay).
    cat > "$rootfs/etc/apt/apt.conf.d/90elastic-airflow" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APT
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/90elastic-airflow-nodoc" <<'DPKG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
DPKG
    # A package install never starts a service in an image.
    printf '#!/bin/sh\n# images/debian-base: no service starts inside an image build.\nexit 101\n' \
        > "$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    # Fixes from bookworm-updates and bookworm-security.
    in_rootfs "$rootfs" sh -euc 'apt-get -q update; apt-get -q -y upgrade' >"$OUT/work/debootstrap.log" 2>&1 \
        || { tail -20 "$OUT/work/debootstrap.log" >&2; return 1; }
    # What the dpkg excludes above would have kept out, had they been there
    # during debootstrap.
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/lintian/*
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    # Left by debootstrap: its .debs, device nodes (the runtime provides /dev), its
    # own logs, machine-specific files.
    rm -rf "$rootfs"/dev/* "$rootfs"/var/log/bootstrap.log "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log \
        "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    : > "$rootfs/etc/machine-id" 2>/dev/null || true
    : > "$rootfs/etc/resolv.conf"
    echo localhost > "$rootfs/etc/hostname"
}
