"""Molecule verifier (pytest-testinfra): the API side of what site.yml deployed and, inside
its running containers, what the components see. On the local cluster also the host side of
the embedded control plane (those cases are skipped on kind, whose control plane is not ours)."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

CLUSTER = os.environ.get("ELASTIC_AIRFLOW_MOLECULE_CLUSTER") or "kind"
CACHE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", pathlib.Path.home() / ".cache" / "elastic-airflow"))
# molecule.yml: kind's kubeconfig is in Molecule's ephemeral directory ($KUBECONFIG).
KUBECONFIG = CACHE / "run" / "cluster" / "kubeconfig" if CLUSTER == "local" else pathlib.Path(os.environ["KUBECONFIG"])
NAMESPACE = "airflow"
PREFIX = "airflow"
local_cluster_only = pytest.mark.skipif(CLUSTER != "local", reason="the local cluster's host processes")


def kubectl_command(host):
    if CLUSTER != "local":
        return f"kubectl --kubeconfig {KUBECONFIG}"
    bin_dir = host.check_output(f"{os.environ['MOLECULE_PROJECT_DIRECTORY']}/tests/cluster/build.sh 2>/dev/null")
    return f"{bin_dir}/kubectl --kubeconfig {KUBECONFIG}"


def kubectl(host, *args):
    return json.loads(host.check_output(f"{kubectl_command(host)} {' '.join(args)} -o json"))


def test_kubeconfig_is_private(host):
    kubeconfig = host.file(str(KUBECONFIG))
    assert kubeconfig.exists
    assert kubeconfig.mode & 0o077 == 0


@local_cluster_only
def test_control_plane_and_node_processes_run(host):
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                 "containerd", "kubelet", "kube-proxy"):
        assert host.process.filter(comm=name[:15]), f"{name} is not running"


@local_cluster_only
def test_api_server_listens_on_the_node_address_only(host):
    # The real node's bridge address (ours, 198.18.0.1): pods reach the API there.
    api = [s for s in host.socket.get_listening_sockets() if s.endswith(":16443")]
    assert api and all("198.18.0.1" in s for s in api), api


def test_workloads_are_ready(host):
    for kind in ("deployments", "statefulsets"):
        items = kubectl(host, "get", kind, "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={PREFIX}")["items"]
        assert items, f"no {kind}"
        for item in items:
            want = item["spec"].get("replicas", 1)
            assert item["status"].get("readyReplicas", 0) == want, item["metadata"]["name"]


def test_migrations_completed_before_airflow(host):
    jobs = [j for j in kubectl(host, "get", "jobs", "-n", NAMESPACE)["items"]
            if j["metadata"]["name"].startswith(f"{PREFIX}-migrate")]
    assert jobs
    done = [c for j in jobs for c in j["status"].get("conditions", [])
            if c["type"] == "Complete" and c["status"] == "True"]
    assert done
    scheduler = kubectl(host, "get", "deployment", f"{PREFIX}-scheduler", "-n", NAMESPACE)
    assert scheduler["metadata"]["creationTimestamp"] >= min(c["lastTransitionTime"] for c in done)


def test_secrets_were_generated(host):
    secret = kubectl(host, "get", "secret", f"{PREFIX}-generated-secrets", "-n", NAMESPACE)
    assert {"fernet-key", "api-secret-key", "jwt-secret", "database-password", "broker-password"} <= set(secret["data"])


# --- Inside the running containers ------------------------

def exec_in(host, workload, *command):
    return host.run(f"{kubectl_command(host)} -n {NAMESPACE} exec {workload} -- " + " ".join(command))


def airflow_config(host, section, key):
    result = exec_in(host, f"deploy/{PREFIX}-scheduler", "airflow", "config", "get-value", section, key)
    assert result.rc == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_components_see_the_executor_broker_and_database_from_the_secrets(host):
    assert airflow_config(host, "core", "executor") == "CeleryExecutor"
    # Credentials are in these values: only booleans reach an assert (pytest prints its operands).
    broker = airflow_config(host, "celery", "broker_url")
    names_our_broker = (broker.startswith("redis://")
                        and f"@{PREFIX}-broker.{NAMESPACE}.svc.cluster.local:6379/" in broker)
    assert names_our_broker, "broker_url does not name our broker"
    database = airflow_config(host, "database", "sql_alchemy_conn")
    names_our_database = (database.startswith("postgresql")
                          and f"@{PREFIX}-database.{NAMESPACE}.svc.cluster.local:5432/" in database)
    assert names_our_database, "sql_alchemy_conn does not name our database"
    assert airflow_config(host, "core", "auth_manager").endswith("SimpleAuthManager")


def test_processes_run_as_their_images_users(host):
    for workload, uid in ((f"deploy/{PREFIX}-scheduler", "50000"), (f"deploy/{PREFIX}-api-server", "50000"),
                          (f"statefulset/{PREFIX}-database", "999"), (f"statefulset/{PREFIX}-broker", "999")):
        result = exec_in(host, workload, "id", "-u")
        assert result.rc == 0 and result.stdout.strip() == uid, (workload, result.stdout, result.stderr)


def test_mounted_secrets_are_readable_by_their_user_only(host):
    # The users' passwords Secret is mounted only in the init container that writes
    # SimpleAuthManager's file: the long-running server never sees the Secret itself ...
    result = exec_in(host, f"deploy/{PREFIX}-api-server", "test", "-e", "/opt/airflow/passwords")
    assert result.rc == 1, result.stdout + result.stderr
    # ... only that file, in memory, the airflow user's alone.
    result = exec_in(host, f"deploy/{PREFIX}-api-server", "stat", "-c", "%a:%u", "/opt/airflow/auth/passwords.json")
    assert result.rc == 0 and result.stdout.strip() == "600:50000", result.stdout + result.stderr
