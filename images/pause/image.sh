# pause: the pod sandbox image containerd starts first in every pod
# (sandbox_image). One static binary of our own (pause.c), nothing else.
IMAGE_TAG=3.10
IMAGE_BASE=
IMAGE_KEY_EXTRA="$(gcc --version | head -1)"
IMAGE_CONFIG=(
    --config.entrypoint /pause
    --config.user 65535:65535
)

image_populate() {
    local rootfs=$1
    gcc -static -Os -s -Wall -Werror -o "$rootfs/pause" "$IMAGE_DIR/pause.c"
}
