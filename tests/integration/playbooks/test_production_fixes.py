# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Issue 14 ("Safe to put in production"), items 1, 3, 5 and 9, on the local
cluster's KWOK nodes: the objects as the API server stores them, and what a
changed setting would apply (--check --diff, which changes nothing)."""

from __future__ import annotations

import base64
import json

import pytest

from conftest import CLUSTER_NAME, NAMESPACE, kubectl, run_playbook


def _get(kind: str, name: str, namespace: str = NAMESPACE) -> dict:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json"))


# --- item 5: the triggerer has a resolvable name ---------------------------------

def test_triggerer_is_a_statefulset_under_a_headless_service_with_its_log_port(converged):
    sts = _get("statefulset", f"{CLUSTER_NAME}-triggerer")
    assert sts["spec"]["serviceName"] == f"{CLUSTER_NAME}-triggerer"
    container = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "triggerer")
    assert {"name": "triggerer-logs", "containerPort": 8794, "protocol": "TCP"} in container["ports"]
    svc = _get("service", f"{CLUSTER_NAME}-triggerer")
    assert svc["spec"]["clusterIP"] == "None"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8794, "triggerer-logs")]
    pods = json.loads(kubectl("get", "pods", "-n", NAMESPACE, "-l",
                              f"app.kubernetes.io/instance={CLUSTER_NAME},app.kubernetes.io/component=triggerer",
                              "-o", "json"))["items"]
    assert pods
    for pod in pods:  # <pod>.<c>-triggerer: what getfqdn() returns in it
        assert pod["spec"]["hostname"] == pod["metadata"]["name"]
        assert pod["spec"]["subdomain"] == f"{CLUSTER_NAME}-triggerer"
    deployments = kubectl("get", "deployments", "-n", NAMESPACE, "-o", "name")
    assert f"deployment.apps/{CLUSTER_NAME}-triggerer" not in deployments


# --- item 3: the controller ------------------------------------------------------

def test_controller_pod_is_restricted(converged):
    pod = _get("deployment", f"{CLUSTER_NAME}-elastic-worker-controller")["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}


def test_controller_rbac_and_broker_secret_ref_follow_the_broker_in_use(converged):
    role = _get("role", f"{CLUSTER_NAME}-elastic-worker-controller")
    secrets = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    # the broker's Secret, and the database's for the result backend (elastic_worker_result_backend_check)
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"],
                        "resourceNames": [f"{CLUSTER_NAME}-broker", f"{CLUSTER_NAME}-database"], "verbs": ["get"]}]
    ew = _get("elasticworker", f"{CLUSTER_NAME}-worker")
    assert ew["spec"]["drain"]["brokerSecretRef"] == {"name": f"{CLUSTER_NAME}-broker", "key": "url"}
    assert ew["spec"]["drain"]["resultBackendSecretRef"] == {"name": f"{CLUSTER_NAME}-database",
                                                             "key": "result-backend-url"}
    # Without the result backend check: neither the Secret in the Role nor the reference.
    run = run_playbook("elastic_worker.yml", "--check", "--diff",
                       extra_vars={"elastic_worker_result_backend_check": False})
    assert run.rc == 0, run.output[-4000:]
    removed = [line for line in run.output.splitlines() if line.startswith("-")]
    assert any("resultBackendSecretRef" in line for line in removed), run.output[-4000:]
    assert any(f"{CLUSTER_NAME}-database" in line for line in removed), run.output[-4000:]
    # An external broker: its Secret, in the Role and the ElasticWorker.
    kubectl("create", "secret", "generic", "ext-broker-14", "-n", NAMESPACE, "--from-literal=url=redis://ext:6379/0")
    try:
        run = run_playbook("elastic_worker.yml", "--check", "--diff",
                           extra_vars={"broker_engine": "external", "broker_external_secret": "ext-broker-14"})
    finally:
        kubectl("delete", "secret", "ext-broker-14", "-n", NAMESPACE)
    assert run.rc == 0, run.output[-4000:]
    diff = run.output
    assert '"ext-broker-14"' in diff or "ext-broker-14" in diff, diff[-4000:]
    assert diff.count("ext-broker-14") >= 2, diff[-4000:]  # the Role's resourceNames and brokerSecretRef


def test_controller_role_gets_the_custom_metric_for_the_custom_metrics_source(converged):
    role = _get("role", f"{CLUSTER_NAME}-elastic-worker-controller")
    assert not [r for r in role["rules"] if "custom.metrics.k8s.io" in r["apiGroups"]]  # celery source: not needed
    run = run_playbook("elastic_worker.yml", "--check", "--diff", extra_vars={"elastic_worker_metric": "customMetrics"})
    assert run.rc == 0, run.output[-4000:]
    assert "custom.metrics.k8s.io" in run.output and "total_cluster_load" in run.output, run.output[-4000:]


def test_controller_image_follows_the_airflow_image_settings_when_left_empty(converged):
    run = run_playbook("elastic_worker.yml", "--check", "--diff",
                       extra_vars={"elastic_worker_controller_image": "",
                                   "airflow_image_repository": "registry.example/airflow",
                                   "airflow_image_tag": "3.3.9", "airflow_image_pull_secrets": ["regcred-14"]})
    assert run.rc == 0, run.output[-4000:]
    assert "registry.example/airflow:3.3.9" in run.output, run.output[-4000:]
    assert "regcred-14" in run.output, run.output[-4000:]


# --- items 1 and 9: RabbitMQ with persistence; a fresh Fernet key -----------------

RABBIT_NS = "airflow-issue14-rabbitmq"


@pytest.fixture(scope="module")
def rabbitmq():
    def deploy(image: str) -> None:
        run = run_playbook("site.yml", extra_vars={
            "elastic_airflow_namespace": RABBIT_NS, "elastic_airflow_only_layers": ["namespace", "broker"],
            "broker_engine": "rabbitmq", "broker_rabbitmq_image": image,
            "broker_rabbitmq_consumer_timeout_seconds": 86400})
        assert run.rc == 0, run.output[-4000:]
    try:
        yield deploy
    finally:
        kubectl("delete", "namespace", RABBIT_NS, "--ignore-not-found", "--wait=false")


def test_rabbitmq_keeps_its_cookie_off_the_volume_and_gets_its_conf_d_file(rabbitmq):
    rabbitmq("docker.io/library/rabbitmq:4.0.9")
    sts = _get("statefulset", f"{CLUSTER_NAME}-broker", RABBIT_NS)
    pod = sts["spec"]["template"]
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["data"]["mountPath"] == "/var/lib/rabbitmq/mnesia"  # the cookie stays in /var/lib/rabbitmq, 0400
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/rabbitmq/conf.d/30-elastic-airflow.conf",
                                "subPath": "30-elastic-airflow.conf", "readOnly": True}
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = _get("configmap", f"{CLUSTER_NAME}-broker-config", RABBIT_NS)["data"]["30-elastic-airflow.conf"]
    assert "consumer_timeout = 86400000" in conf
    assert "deprecated_features.permit.transient_nonexcl_queues = true" in conf
    checksum = pod["metadata"]["annotations"]["checksum/config"]
    # RabbitMQ 3 (the local image's Debian 3.10) has no such key: it is left out, and the pod rolls.
    rabbitmq("localhost/elastic-airflow/rabbitmq:3.10.8")
    conf = _get("configmap", f"{CLUSTER_NAME}-broker-config", RABBIT_NS)["data"]["30-elastic-airflow.conf"]
    assert "consumer_timeout = 86400000" in conf and "deprecated_features" not in conf
    assert _get("statefulset", f"{CLUSTER_NAME}-broker", RABBIT_NS)["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"] != checksum


def test_a_new_fernet_key_is_32_random_bytes(rabbitmq):
    rabbitmq("localhost/elastic-airflow/rabbitmq:3.10.8")
    data = _get("secret", f"{CLUSTER_NAME}-generated-secrets", RABBIT_NS)["data"]
    key = base64.b64decode(data["fernet-key"]).decode()
    raw = base64.urlsafe_b64decode(key)
    assert len(key) == 44 and len(raw) == 32
    # base64 of printable characters never has a byte >= 0x80 (2**-32 for random bytes).
    assert any(b >= 0x80 for b in raw), key
