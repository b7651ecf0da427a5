"""The user's pod settings and the Airflow components' extension points, checked on the rendered
objects (conftest.VARIANTS, variant `platform-pod-settings-extensions`).

Every pod of the collection (each workload's, the migrate Job's, the ElasticWorker's worker template)
gets the scheduling fields, pod labels and annotations and security contexts of the base role's
settings, its component's replacing the global ones; `platform` mode leaves runAsUser, runAsGroup and
fsGroup to the platform and keeps what the Pod Security Standard `restricted` needs (checked for every
variant by test_pod_security_objects.py)."""

from __future__ import annotations

import pytest
from test_pod_security_objects import pod_templates

VARIANT = "platform-pod-settings-extensions"
SELECTOR_KEYS = ("app.kubernetes.io/instance", "app.kubernetes.io/component")


def _templates(rendered, variant=VARIANT):
    return pod_templates([obj for objects in rendered[variant].values() for obj in objects])


def _workloads(rendered, variant=VARIANT):
    return {f"{o['kind']}/{o['metadata']['name']}": o for objects in rendered[variant].values() for o in objects
            if o["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob", "ElasticWorker")}


def _containers(template):
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _component(template):
    return template["metadata"]["labels"]["app.kubernetes.io/component"]


def test_every_component_has_a_pod_in_the_variant(rendered):
    assert {_component(t) for t in _templates(rendered).values()} == {
        "api-server", "scheduler", "dag-processor", "triggerer", "worker", "flower", "migrate", "db-clean", "database",
        "broker", "prometheus", "statsd-exporter", "kube-state-metrics", "grafana", "metrics-adapter",
        "elastic-worker-controller"}


def test_fixed_mode_keeps_each_images_ids(rendered):
    templates = _templates(rendered, "defaults")
    assert templates["StatefulSet/airflow-database"]["spec"]["securityContext"]["runAsUser"] == 999
    assert templates["Deployment/airflow-scheduler"]["spec"]["securityContext"]["runAsUser"] == 50000
    assert templates["ElasticWorker/airflow-worker"]["spec"]["securityContext"]["fsGroup"] == 0


def test_platform_mode_sets_no_ids_but_the_users(rendered):
    for name, template in _templates(rendered).items():
        pod_context = template["spec"]["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if _component(template) == "database":  # its own entry replaces the global one
            assert {k: pod_context.get(k) for k in ("runAsUser", "runAsGroup", "fsGroup", "supplementalGroups")} \
                == {"runAsUser": 70, "runAsGroup": None, "fsGroup": 70, "supplementalGroups": None}, name
        else:
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(pod_context), name
            assert pod_context["supplementalGroups"] == [1001], name
        for container in _containers(template):
            context = container["securityContext"]
            assert not {"runAsUser", "runAsGroup"} & set(context), (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert "ALL" in context["capabilities"]["drop"], (name, container["name"])


def test_git_sync_runs_as_the_platforms_user_too(rendered):
    worker = _templates(rendered)["ElasticWorker/airflow-worker"]
    git_sync = next(c for c in worker["spec"]["containers"] if c["name"] == "git-sync")
    assert "runAsUser" not in git_sync["securityContext"]
    assert "runAsUser" in next(c for c in _templates(rendered, "git-https-prometheus-allow-lists")[
        "ElasticWorker/airflow-worker"]["spec"]["containers"] if c["name"] == "git-sync")["securityContext"]


def test_container_overrides_the_component_replaces_the_global(rendered):
    templates = _templates(rendered)
    controller = templates["Deployment/airflow-elastic-worker-controller"]
    assert controller["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # The settings win over every container's own context, the user's sidecars' too.
    for container in _containers(templates["Deployment/airflow-scheduler"]):
        assert container["securityContext"]["readOnlyRootFilesystem"] is False, container["name"]


def test_scheduling_global_and_per_component(rendered):
    for name, template in _templates(rendered).items():
        spec = template["spec"]
        assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "airflow",
                                        "effect": "NoSchedule"}], name
        assert spec["priorityClassName"] == "airflow", name
        assert spec.get("nodeSelector") == ({"pool": "workers"} if _component(template) == "worker" else None), name


def test_pod_labels_and_annotations_and_the_collections_win(rendered):
    for name, template in _templates(rendered).items():
        meta = template["metadata"]
        if _component(template) == "database":
            assert (meta["labels"]["team"], meta["labels"]["backup"]) == ("dba", "daily"), name
        else:
            assert meta["labels"]["team"] == "data" and "backup" not in meta["labels"], name
        expected = ({"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"} if _component(template) == "worker"
                    else {"example.com/owner": "data-platform"})
        assert expected.items() <= meta["annotations"].items(), name
    # The collection's own annotations stay.
    assert "checksum/airflow-env" in _templates(rendered)["Deployment/airflow-scheduler"]["metadata"]["annotations"]


def test_each_workload_still_selects_its_pods(rendered):
    for name, workload in _workloads(rendered).items():
        if workload["kind"] in ("Job", "CronJob"):
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert set(SELECTOR_KEYS) <= set(selector), name
        assert selector.items() <= labels.items(), name


def test_defaults_render_no_user_settings(rendered):
    for name, template in _templates(rendered, "defaults").items():
        spec = template["spec"]
        assert not {"tolerations", "nodeSelector", "affinity", "priorityClassName"} & set(spec), name
        assert "team" not in template["metadata"]["labels"], name


@pytest.mark.parametrize("kind", ["ElasticWorker/airflow-worker"])
def test_worker_extension_points(rendered, kind):
    spec = _templates(rendered)[kind]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    init = [c["name"] for c in spec["initContainers"]]
    assert list(containers) == ["worker", "git-sync", "log-cleanup", "proxy"]
    assert init == ["git-sync-init", "wait-for-migrations", "prepare"]
    for airflow_container in (containers["worker"], spec["initContainers"][1]):
        assert {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/ca/ca.crt"} in airflow_container["env"]
        assert {"secretRef": {"name": "worker-env"}} in airflow_container["envFrom"]
        assert {"name": "ca", "mountPath": "/etc/ca", "readOnly": True} in airflow_container["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in spec["volumes"]
    # The user's containers get the collection's container security context.
    for user in (containers["proxy"], spec["initContainers"][2]):
        assert user["securityContext"]["allowPrivilegeEscalation"] is False
        assert user["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Only the worker's Airflow containers: the git-sync and log-cleanup containers get none of them.
    assert "REQUESTS_CA_BUNDLE" not in str(containers["git-sync"])
    assert "REQUESTS_CA_BUNDLE" not in str(containers["log-cleanup"])
    assert "worker-env" not in str(containers["log-cleanup"])


def test_other_components_extension_points(rendered):
    templates = _templates(rendered)
    api = templates["Deployment/airflow-api-server"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "api-env"}, "prefix": "API_"} in api["envFrom"]
    assert [c["name"] for c in templates["Deployment/airflow-scheduler"]["spec"]["containers"]] == [
        "scheduler", "log-cleanup", "log-shipper"]
    assert {"name": "DAG_ENV", "value": "prod"} in templates["Deployment/airflow-dag-processor"]["spec"][
        "containers"][0]["env"]
    assert templates["StatefulSet/airflow-triggerer"]["spec"]["initContainers"][-1]["name"] == "wait"
    assert {"name": "FLOWER_PURGE_OFFLINE_WORKERS", "value": "60"} in templates["Deployment/airflow-flower"][
        "spec"]["containers"][0]["env"]
    # One component's extensions stay in its pods.
    assert "worker-env" not in str(templates["Deployment/airflow-scheduler"])
    assert "api-env" not in str(templates[next(n for n in templates if n.startswith("Job/"))])
