"""Helpers for the tests of the local control plane (tests/cluster/cluster.sh).

The cluster under test is the one `make test-cluster` made sure is up; its
admin kubeconfig is $ELASTIC_AIRFLOW_CLUSTER_STATE/kubeconfig (default
$ELASTIC_AIRFLOW_CACHE/run/cluster/kubeconfig).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

HERE = pathlib.Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
IMAGES = HERE.parent.parent / "images"


def cache_dir() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "elastic-airflow"
    return pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", default))


def state_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CLUSTER_STATE", cache_dir() / "run" / "cluster"))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll predicate() until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def image_ref(name: str) -> str:
    """The name of a local image (images/<name>/image.sh says its tag)."""
    tag = subprocess.run(["bash", "-c", f'CACHE={cache_dir()}; . "{IMAGES}/{name}/image.sh" && echo "$IMAGE_TAG"'],
                         capture_output=True, text=True, check=True).stdout.strip()
    return f"localhost/elastic-airflow/{name}:{tag}"


def kubectl_cmd(*args: str) -> list[str]:
    """A kubectl command line (the cluster's own build) against the cluster under test."""
    kubectl = (state_dir() / "bin").read_text().strip() + "/kubectl"
    return [kubectl, "--kubeconfig", str(state_dir() / "kubeconfig"), *args]
