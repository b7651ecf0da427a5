"""DAGs from git: site.yml in git mode (SSH) converges with git-sync in the
pods that read DAG files, re-runs without a change, and switching to image
mode removes the credentials it no longer needs. A second Airflow cluster in its own namespace, without the
monitoring, metrics adapter and elastic worker layers."""

import base64
import json

import pytest

from conftest import kubectl, run_playbook

NAMESPACE = "airflow-git"
CLUSTER = "gitdags"
GIT_SYNC_SECRETS = f"app.kubernetes.io/instance={CLUSTER},app.kubernetes.io/name=git-sync"
# Shape-valid test values: KWOK runs no container, so nothing connects with them.
KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
       "-----END OPENSSH PRIVATE KEY-----")
KNOWN_HOSTS = "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
GIT = {
    "elastic_airflow_namespace": NAMESPACE,
    "elastic_airflow_cluster_name": CLUSTER,
    "elastic_airflow_skip_layers": ["monitoring", "metrics_adapter", "elastic_worker"],
    "elastic_airflow_worker_autoscaling": "none",
    "git_sync_mode": "git",
    "git_sync_repo": "git@github.com:example/dags.git",
    "git_sync_auth": "ssh",
    "git_sync_ssh_private_key": KEY,
    "git_sync_ssh_known_hosts": KNOWN_HOSTS,
    "git_sync_ref": "main",
    "git_sync_subpath": "dags",
}


def _json(*args):
    return json.loads(kubectl(*args, "-n", NAMESPACE, "-o", "json"))


@pytest.fixture(scope="module")
def git_cluster():
    run = run_playbook("site.yml", extra_vars=GIT)
    assert run.rc == 0, run.output[-6000:]
    yield run
    down = run_playbook("teardown.yml", extra_vars={**GIT, "elastic_airflow_teardown_namespace": True})
    assert down.rc == 0, down.output[-4000:]


def test_git_mode_converges_with_git_sync_in_every_pod_that_reads_dags(git_cluster):
    for kind in ("deployments", "statefulsets"):
        for item in _json("get", kind)["items"]:
            status = item.get("status", {})
            assert status.get("readyReplicas", 0) == item["spec"]["replicas"], (kind, item["metadata"]["name"], status)
    # Airflow 3: the dag-processor parses DAG files, triggerer and workers run
    # their code; the scheduler and api-server read serialized DAGs only.
    for kind, component in [("deployment", "dag-processor"), ("statefulset", "triggerer"), ("statefulset", "worker")]:
        pod = _json("get", kind, f"{CLUSTER}-{component}")["spec"]["template"]["spec"]
        assert "git-sync" in [c["name"] for c in pod["containers"]], component
        assert "git-sync-init" in [c["name"] for c in pod["initContainers"]], component
        assert pod["securityContext"]["fsGroup"] == 65533, component
    scheduler = _json("get", "deployment", f"{CLUSTER}-scheduler")["spec"]["template"]["spec"]
    # No git-sync there (its log-cleanup sidecar is the only other container).
    assert [c["name"] for c in scheduler["containers"]] == ["scheduler", "log-cleanup"]
    assert not [c for c in scheduler.get("initContainers", []) if c["name"].startswith("git-sync")]
    env = _json("get", "configmap", f"{CLUSTER}-airflow-env")["data"]
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags"), env["AIRFLOW__CORE__DAGS_FOLDER"]
    secret = _json("get", "secret", "-l", GIT_SYNC_SECRETS)["items"]
    assert len(secret) == 1 and base64.b64decode(secret[0]["data"]["known_hosts"]).decode().strip() == KNOWN_HOSTS


def test_git_mode_rerun_changes_nothing(git_cluster):
    run = run_playbook("site.yml", extra_vars=GIT)
    assert run.rc == 0, run.output[-4000:]
    assert run.changed == 0, run.changed_tasks


def test_switching_to_image_mode_removes_the_git_credentials(git_cluster):
    run = run_playbook("site.yml", extra_vars={**GIT, "git_sync_mode": "image", "git_sync_auth": "none",
                                               "git_sync_ssh_private_key": "", "git_sync_ssh_known_hosts": ""})
    assert run.rc == 0, run.output[-4000:]
    assert _json("get", "secret", "-l", GIT_SYNC_SECRETS)["items"] == []
    processor = _json("get", "deployment", f"{CLUSTER}-dag-processor")["spec"]["template"]["spec"]
    assert "git-sync" not in [c["name"] for c in processor["containers"]]
