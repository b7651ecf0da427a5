# airflow-demo: the local airflow image plus the collection's demo DAGs in
# /opt/airflow/dags, for git_sync_mode `image` (DAGs baked into the image,
# the way a user ships theirs: FROM apache/airflow + COPY dags/). `make demo`
# and the end-to-end tests deploy it; everything else is the airflow image's.
IMAGE_TAG=3.3.2
IMAGE_BASE=airflow
IMAGE_CONFIG=()

image_populate() {
    local rootfs=$1
    install -o 50000 -g 0 -m 644 "$IMAGE_DIR"/dags/*.py "$rootfs/opt/airflow/dags/"
}
