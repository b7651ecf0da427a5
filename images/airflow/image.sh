# airflow: Apache Airflow 3.3.2 from PyPI in a venv on Debian bookworm's
# Python 3.11 (upstream image: apache/airflow:3.3.2, Python 3.12 on Debian).
# The full pin list is requirements.txt here; the wheels are built on the
# host (mysqlclient compiles against Debian's libmariadb) into a wheelhouse
# cached by that list, and installed offline. The image gets the runtime
# libraries only. Its entrypoint (/entrypoint, ours) keeps the contract of
# apache/airflow's entrypoint_prod.sh that our manifests rely on.
AIRFLOW_VERSION=3.3.2
IMAGE_TAG=$AIRFLOW_VERSION
IMAGE_BASE=debian-base
PYTHON_DEB=3.11.2-1+b1
MARIADB_DEB=1:10.11.19-0+deb12u1
# The interpreter that builds the wheels: Debian's, the same as the image's.
HOST_PYTHON=/usr/bin/python3.11
VENV=/opt/airflow-venv
IMAGE_CONFIG=(
    --config.entrypoint /usr/bin/dumb-init --config.entrypoint -- --config.entrypoint /entrypoint
    --config.user 50000:0
    --config.workingdir /opt/airflow
    --config.env PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --config.env AIRFLOW_HOME=/opt/airflow
    --config.env AIRFLOW_USER_HOME_DIR=/home/airflow
    --config.env AIRFLOW_UID=50000
    --config.env AIRFLOW_VERSION=$AIRFLOW_VERSION
    --config.env DUMB_INIT_SETSID=1
    --config.env PYTHONUNBUFFERED=1
    --config.exposedports 8080/tcp --config.exposedports 8793/tcp --config.exposedports 5555/tcp
)

wheelhouse() { echo "$OUT/wheelhouse-$(sha256sum "$IMAGE_DIR/requirements.txt" | cut -c1-12)"; }

# The wheels of requirements.txt, built once per pin list (pip's own cache
# keeps the downloads).
image_prepare() {
    local wh builder=$OUT/wheel-builder
    wh=$(wheelhouse)
    [ -f "$wh/.done" ] && return
    "$HOST_PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
        || { echo "airflow: wheels must be built by Python 3.11 (bookworm's)" >&2; return 1; }
    [ -x "$builder/bin/pip" ] || "$HOST_PYTHON" -m venv "$builder"
    echo "airflow: building the wheelhouse (cold: a few minutes)" >&2
    rm -rf "$wh.tmp"
    "$builder/bin/pip" wheel --quiet --no-deps -r "$IMAGE_DIR/requirements.txt" -w "$wh.tmp"
    touch "$wh.tmp/.done"
    rm -rf "$wh"
    mv "$wh.tmp" "$wh"
}

image_populate() {
    local rootfs=$1
    in_rootfs "$rootfs" sh -euc '
        useradd --uid 50000 --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow'
    apt_install "$rootfs" "python3=$PYTHON_DEB" "python3-venv=$PYTHON_DEB" "libmariadb3=$MARIADB_DEB" \
        dumb-init=1.2.5-2 procps
    # The wheelhouse is linked in for the install only (not in the layer).
    cp -al "$(wheelhouse)" "$rootfs/wheelhouse"
    cp "$IMAGE_DIR/requirements.txt" "$rootfs/wheelhouse/requirements.txt"
    in_rootfs "$rootfs" sh -euc "
        python3 -m venv $VENV
        $VENV/bin/pip install --quiet --no-index --find-links /wheelhouse --no-deps -r /wheelhouse/requirements.txt
        $VENV/bin/pip check
        $VENV/bin/airflow version >/dev/null"
    rm -rf "$rootfs/wheelhouse" "$rootfs/root/.cache" "$rootfs/opt/airflow"
    # AIRFLOW_HOME and its dags/, logs/, plugins/: group 0 may write, as upstream.
    install -d -o 50000 -g 0 -m 775 "$rootfs/opt/airflow" "$rootfs/opt/airflow/dags" \
        "$rootfs/opt/airflow/logs" "$rootfs/opt/airflow/plugins"
    chmod 775 "$rootfs/home/airflow"
    chgrp 0 "$rootfs/home/airflow"
    install -m 755 "$IMAGE_DIR/entrypoint" "$rootfs/entrypoint"
}
