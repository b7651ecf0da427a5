"""Molecule verifier (pytest-testinfra) for the `local` scenario: the host
side of the embedded control plane, then the API side of what site.yml
deployed."""

from __future__ import annotations

import json
import os
import pathlib

CACHE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", pathlib.Path.home() / ".cache" / "elastic-airflow"))
KUBECONFIG = CACHE / "run" / "cluster" / "kubeconfig"
NAMESPACE = "airflow"
PREFIX = "airflow"


def kubectl(host, *args):
    bin_dir = host.check_output(f"{os.environ['MOLECULE_PROJECT_DIRECTORY']}/tests/cluster/build.sh 2>/dev/null")
    return json.loads(host.check_output(f"{bin_dir}/kubectl --kubeconfig {KUBECONFIG} {' '.join(args)} -o json"))


def test_kubeconfig_is_private(host):
    kubeconfig = host.file(str(KUBECONFIG))
    assert kubeconfig.exists
    assert kubeconfig.mode & 0o077 == 0


def test_control_plane_processes_run(host):
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        assert host.process.filter(comm=name[:15]), f"{name} is not running"


def test_api_server_listens_on_loopback_only(host):
    api = [s for s in host.socket.get_listening_sockets() if s.endswith(":16443")]
    assert api and all("127.0.0.1" in s for s in api), api


def test_workloads_are_ready(host):
    for kind in ("deployments", "statefulsets"):
        items = kubectl(host, "get", kind, "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={PREFIX}")["items"]
        assert items, f"no {kind}"
        for item in items:
            want = item["spec"].get("replicas", 1)
            assert item["status"].get("readyReplicas", 0) == want, item["metadata"]["name"]


def test_migrations_completed_before_airflow(host):
    jobs = [j for j in kubectl(host, "get", "jobs", "-n", NAMESPACE)["items"] if j["metadata"]["name"].startswith(f"{PREFIX}-migrate")]
    assert jobs
    done = [c for j in jobs for c in j["status"].get("conditions", []) if c["type"] == "Complete" and c["status"] == "True"]
    assert done
    scheduler = kubectl(host, "get", "deployment", f"{PREFIX}-scheduler", "-n", NAMESPACE)
    assert scheduler["metadata"]["creationTimestamp"] >= min(c["lastTransitionTime"] for c in done)


def test_secrets_were_generated(host):
    secret = kubectl(host, "get", "secret", f"{PREFIX}-generated-secrets", "-n", NAMESPACE)
    assert {"fernet-key", "api-secret-key", "jwt-secret", "database-password", "broker-password"} <= set(secret["data"])
