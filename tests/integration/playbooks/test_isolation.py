# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Issue 14, isolation, on the local cluster: Pod Security Admission enforced
by the API server, and the NetworkPolicies and PodDisruptionBudgets as it
stores them, converged and re-converged.

The local cluster's bridge CNI enforces no NetworkPolicy: here they are
objects (what is allowed and denied is checked on the rendered objects by
tests/unit/test_network_policy_objects.py). Pod Security Admission is the
API server's own and is enforced: every pod of this suite was admitted
under `restricted`.
"""

from __future__ import annotations

import json

import pytest

from conftest import CLUSTER_NAME, NAMESPACE, kubectl, run_playbook

INSTANCE = f"app.kubernetes.io/instance={CLUSTER_NAME}"


def _items(kind: str, selector: str = INSTANCE) -> list[dict]:
    return json.loads(kubectl("get", kind, "-n", NAMESPACE, "-l", selector, "-o", "json"))["items"]


def _dry_run_pod(name: str, spec: dict) -> None:
    kubectl("run", name, "-n", NAMESPACE, "--image=localhost/elastic-airflow/airflow-demo:3.3.2", "--restart=Never",
            "--dry-run=server", "--overrides", json.dumps({"apiVersion": "v1", "spec": spec}))


def test_the_namespace_enforces_restricted(converged):
    labels = json.loads(kubectl("get", "namespace", NAMESPACE, "-o", "json"))["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith("pod-security.kubernetes.io/")} == {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/warn": "restricted"}


def test_every_pod_of_the_cluster_was_admitted_under_restricted(converged):
    """Every workload has its pods (the worker pods are the ElasticWorker controller's, and on
    KWOK nodes the controller runs no container: the unit tests check their template)."""
    pods = _items("pods")
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert {"api-server", "scheduler", "dag-processor", "triggerer", "flower", "migrate", "database", "broker",
            "prometheus", "statsd-exporter", "kube-state-metrics", "grafana", "metrics-adapter",
            "elastic-worker-controller"} <= components
    for workload in _items("deployments") + _items("statefulsets"):
        assert workload["status"].get("readyReplicas", 0) == workload["spec"]["replicas"], workload["metadata"]["name"]


def test_a_pod_that_breaks_restricted_is_rejected_and_a_restricted_one_is_not(converged):
    container = {"name": "probe", "image": "localhost/elastic-airflow/airflow-demo:3.3.2"}
    with pytest.raises(AssertionError, match="violates PodSecurity"):
        _dry_run_pod("isolation-probe-root", {"containers": [dict(container, securityContext={"privileged": True})]})
    _dry_run_pod("isolation-probe-restricted", {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 50000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [dict(container, securityContext={"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}})]})


# What inventories/local with local-kwok renders: every layer, the adapter's
# APIService unregistered (so no custom-metrics-api flow), Flower on.
POLICIES = {f"{CLUSTER_NAME}-{name}" for name in [
    "default-deny", "dns-egress", "kubernetes-api-egress",
    "database-ingress", "database-egress", "broker-ingress", "broker-egress",
    "execution-api-ingress", "execution-api-egress", "api-server-ui-ingress", "worker-logs-ingress",
    "worker-logs-egress", "triggerer-logs-ingress", "triggerer-logs-egress", "flower-ui-ingress",
    "statsd-ingress", "statsd-egress", "scrape-statsd-exporter-ingress", "scrape-statsd-exporter-egress",
    "scrape-kube-state-metrics-ingress", "scrape-kube-state-metrics-egress", "prometheus-ingress",
    "prometheus-egress", "grafana-ui-ingress"]}
BUDGETS = {f"{CLUSTER_NAME}-{c}" for c in ["api-server", "scheduler", "dag-processor", "triggerer", "database"]}


def test_the_network_policies_are_those_of_the_flows(converged):
    assert {p["metadata"]["name"] for p in _items("networkpolicies")} == POLICIES


def test_each_budget_lets_a_drain_evict_its_single_pod(converged):
    budgets = {b["metadata"]["name"]: b for b in _items("poddisruptionbudgets")}
    assert set(budgets) == BUDGETS
    for name, budget in budgets.items():
        assert budget["spec"]["maxUnavailable"] == 1, name
        assert budget["status"]["expectedPods"] == 1, name
        assert budget["status"]["disruptionsAllowed"] == 1, name  # a drain is never blocked


def test_check_mode_with_network_policies_off_would_delete_them_and_changes_nothing(converged):
    before = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in _items("networkpolicies")}
    run = run_playbook("site.yml", "--check", "--diff", extra_vars={"elastic_airflow_network_policies": False})
    assert run.rc == 0, run.output[-4000:]
    assert run.changed > 0
    for name in before:  # the diff's header of each object
        assert f"NetworkPolicy {name} (would delete)" in run.output, name
    assert {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in _items("networkpolicies")} == before


def test_changed_isolation_settings_converge_once_and_are_undone(converged):
    """The user's allow list and a changed budget: applied once (a re-run changes nothing), and
    removed again by the run with the defaults (each layer prunes what it no longer renders)."""
    layers = {"elastic_airflow_only_layers": ["namespace", "database"]}
    changed = dict(layers, database_disruption_budget={"minAvailable": 0},
                   elastic_airflow_network_extra_flows=[
                       {"name": "tasks-https", "from": ["worker"], "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                        "ports": [{"port": 443}]}],
                   elastic_airflow_network_extra_policies=[
                       {"name": "scrape-flower", "spec": {
                           "podSelector": {"matchLabels": {"app.kubernetes.io/component": "flower"}},
                           "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 5555}]}]}}])
    try:
        first = run_playbook("site.yml", extra_vars=changed)
        assert first.rc == 0, first.output[-4000:]
        assert first.changed > 0
        policies = {p["metadata"]["name"]: p for p in _items("networkpolicies")}
        assert policies[f"{CLUSTER_NAME}-extra-tasks-https-egress"]["spec"]["egress"] == [
            {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]
        assert f"{CLUSTER_NAME}-extra-scrape-flower" in policies
        budget = json.loads(kubectl("get", "pdb", f"{CLUSTER_NAME}-database", "-n", NAMESPACE, "-o", "json"))
        assert budget["spec"].get("minAvailable") == 0 and "maxUnavailable" not in budget["spec"]
        again = run_playbook("site.yml", extra_vars=changed)
        assert again.rc == 0, again.output[-4000:]
        assert again.changed == 0, again.changed_tasks
    finally:
        back = run_playbook("site.yml", extra_vars=layers)
    assert back.rc == 0, back.output[-4000:]
    assert {p["metadata"]["name"] for p in _items("networkpolicies")} == POLICIES
    budget = json.loads(kubectl("get", "pdb", f"{CLUSTER_NAME}-database", "-n", NAMESPACE, "-o", "json"))
    assert budget["spec"].get("maxUnavailable") == 1 and "minAvailable" not in budget["spec"]
