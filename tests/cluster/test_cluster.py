"""The local control plane behaves like a real cluster for what our roles use.

Run with `make test-cluster` (starts the cluster when it is not up, and stops
it again afterwards only in that case). KWOK-level tests: every pod here goes
to the fake (KWOK) nodes, where it becomes Running/Ready (and a Job's pod
Succeeded) without running anything; they prove the control plane (API,
controllers, scheduler, storage binding, RBAC), not container behaviour. What
containers do is in test_real_node.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from clusterlib import wait_until

PAUSE = "registry.k8s.io/pause:3.10"  # never pulled: KWOK runs no containers
# The fake nodes are tainted and labelled type=kwok (cluster.sh).
ON_KWOK_NODES = {"nodeSelector": {"type": "kwok"},
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake",
                                  "effect": "NoSchedule"}]}


def labels(app):
    return {"app.kubernetes.io/name": app}


def pod_template(app, **spec):
    return {
        "metadata": {"labels": labels(app)},
        "spec": {"containers": [{"name": "main", "image": PAUSE}], **ON_KWOK_NODES, **spec},
    }


def condition(obj, kind):
    for c in (obj.status.conditions or []) if obj.status else []:
        if c.type == kind:
            return c.status
    return None


def test_nodes_are_ready_kwok_nodes(api):
    nodes = client.CoreV1Api(api).list_node(label_selector="type=kwok").items
    assert sorted(n.metadata.name for n in nodes) == ["kwok-node-0", "kwok-node-1", "kwok-node-2"]
    for n in nodes:
        assert n.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        assert condition(n, "Ready") == "True"
        # Only pods that tolerate it land on a fake node: the rest go to the real one.
        assert [(t.key, t.value, t.effect) for t in n.spec.taints] == [("kwok.x-k8s.io/node", "fake", "NoSchedule")]
        assert n.status.allocatable["cpu"] == "4" and n.status.allocatable["pods"] == "110"


def test_namespace_gets_service_account_and_root_ca(api, namespace):
    core = client.CoreV1Api(api)
    wait_until(lambda: core.list_namespaced_service_account(namespace).items, 30, "default ServiceAccount")
    cm = wait_until(
        lambda: [c for c in core.list_namespaced_config_map(namespace).items if c.metadata.name == "kube-root-ca.crt"],
        30,
        "kube-root-ca.crt ConfigMap",
    )
    assert "BEGIN CERTIFICATE" in cm[0].data["ca.crt"]


def test_deployment_becomes_available_on_kwok_nodes(api, namespace):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": labels("web")}, "template": pod_template("web")},
        },
    )

    def available():
        d = apps.read_namespaced_deployment("web", namespace)
        return d.status.available_replicas == 3 and condition(d, "Available") == "True"

    wait_until(available, 60, "Deployment web Available with 3 replicas")
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=web").items
    assert len(pods) == 3
    kwok_nodes = {n.metadata.name for n in core.list_node(label_selector="type=kwok").items}
    for p in pods:
        assert p.status.phase == "Running"
        assert condition(p, "Ready") == "True"
        assert p.spec.node_name in kwok_nodes
        assert p.status.pod_ip

    # Garbage collection: deleting the Deployment (background) removes its ReplicaSet and pods.
    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    wait_until(
        lambda: not apps.list_namespaced_replica_set(namespace).items
        and not core.list_namespaced_pod(namespace).items,
        60,
        "garbage collection of the ReplicaSet and its pods",
    )


def test_statefulset_with_volume_claims_becomes_ready_in_order(api, namespace):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    seen: list[tuple[str, str]] = []  # (event, pod) in the order the API reported them
    stop = threading.Event()

    def record():
        w = watch.Watch()
        ready = set()
        for ev in w.stream(core.list_namespaced_pod, namespace, timeout_seconds=90):
            pod = ev["object"]
            name = pod.metadata.name
            if ev["type"] == "ADDED":
                seen.append(("created", name))
            if condition(pod, "Ready") == "True" and name not in ready:
                ready.add(name)
                seen.append(("ready", name))
            if stop.is_set():
                w.stop()

    t = threading.Thread(target=record, daemon=True)
    t.start()
    time.sleep(0.5)  # let the watch start before anything exists
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "serviceName": "db",
                "podManagementPolicy": "OrderedReady",
                "selector": {"matchLabels": labels("db")},
                "template": pod_template("db"),
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                    }
                ],
            },
        },
    )

    def ready():
        s = apps.read_namespaced_stateful_set("db", namespace)
        return s.status.ready_replicas == 2

    wait_until(ready, 90, "StatefulSet db with 2 ready replicas")
    stop.set()
    pvcs = core.list_namespaced_persistent_volume_claim(namespace).items
    assert sorted(p.metadata.name for p in pvcs) == ["data-db-0", "data-db-1"]
    for pvc in pvcs:
        assert pvc.status.phase == "Bound", pvc.status
        assert pvc.spec.storage_class_name == "standard"  # the default class was applied
    assert seen.index(("ready", "db-0")) < seen.index(("created", "db-1")), seen
    # Each pod landed on the node of the local volume bound to its claim.
    for i in range(2):
        pod = core.read_namespaced_pod(f"db-{i}", namespace)
        claim = core.read_namespaced_persistent_volume_claim(f"data-db-{i}", namespace)
        pv = core.read_persistent_volume(claim.spec.volume_name)
        hosts = pv.spec.node_affinity.required.node_selector_terms[0].match_expressions[0].values
        assert pod.spec.node_name in hosts


def test_job_completes(api, namespace):
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "migrate"},
            "spec": {"backoffLimit": 0, "template": pod_template("migrate", restartPolicy="Never")},
        },
    )

    def complete():
        j = batch.read_namespaced_job("migrate", namespace)
        return condition(j, "Complete") == "True" and j.status.succeeded == 1

    wait_until(complete, 60, "Job migrate Complete")


def test_crd_established_then_custom_resource_created(api, namespace):
    ext = client.ApiextensionsV1Api(api)
    # Unique per run, so a re-run never races the deletion of the previous CRD.
    suffix = namespace.split("-")[-1]
    group, plural, kind = "tests.elastic-airflow.io", f"widgets{suffix}", f"Widget{suffix.capitalize()}"
    name = f"{plural}.{group}"
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": f"widget{suffix}", "kind": kind},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {"size": {"type": "integer", "minimum": 1}},
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    try:
        wait_until(lambda: condition(ext.read_custom_resource_definition(name), "Established") == "True",
                   30, "Established")
        co = client.CustomObjectsApi(api)
        body = {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": "w1"}, "spec": {"size": 3}}
        created = co.create_namespaced_custom_object(group, "v1", namespace, plural, body)
        assert created["spec"]["size"] == 3
        # Real schema validation by the real apiserver.
        with pytest.raises(ApiException) as err:
            co.create_namespaced_custom_object(group, "v1", namespace, plural,
                                               {**body, "metadata": {"name": "w2"}, "spec": {"size": 0}})
        assert err.value.status == 422
    finally:
        ext.delete_custom_resource_definition(name)


def test_hpa_v2_is_accepted_and_reconciled(api, namespace):
    apps, hpa_api = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "worker"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels("worker")},
                     "template": pod_template("worker")},
        },
    )
    hpa_api.create_namespaced_horizontal_pod_autoscaler(
        namespace,
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "worker"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
            },
        },
    )
    hpa = hpa_api.read_namespaced_horizontal_pod_autoscaler("worker", namespace)
    assert hpa.spec.max_replicas == 5
    # The HPA controller runs: it reports (no metrics server here) that it cannot get metrics.
    conds = wait_until(
        lambda: hpa_api.read_namespaced_horizontal_pod_autoscaler("worker", namespace).status.conditions,
        60,
        "HPA status conditions from the controller",
        interval=1,
    )
    assert {c.type for c in conds} & {"AbleToScale", "ScalingActive"}


def test_namespace_with_objects_is_deleted_completely(api):
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns = f"t-del-{int(time.time() * 1000) % 10**8}"
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"a": "b"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    core.create_namespaced_service(ns, {"metadata": {"name": "svc"},
                                        "spec": {"selector": labels("x"), "ports": [{"port": 80}]}})
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "x"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels("x")}, "template": pod_template("x")},
    })
    wait_until(lambda: len(core.list_namespaced_pod(ns).items) == 2, 30, "2 pods")
    core.delete_namespace(ns)

    def gone():
        try:
            core.read_namespace(ns)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_until(gone, 90, f"namespace {ns} to be deleted", interval=0.5)


def test_rbac_denies_what_a_service_account_was_not_granted(api, namespace, kubeconfig):
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"a": "b"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    })
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    cfg = client.Configuration()
    cfg.host = api.configuration.host
    cfg.ssl_ca_cert = api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    as_sa = client.CoreV1Api(client.ApiClient(cfg))

    assert as_sa.read_namespaced_config_map("cfg", namespace).data == {"a": "b"}
    for forbidden in (
        lambda: as_sa.read_namespaced_secret("s", namespace),
        lambda: as_sa.delete_namespaced_config_map("cfg", namespace),
        lambda: as_sa.list_namespaced_config_map("kube-system"),
    ):
        with pytest.raises(ApiException) as err:
            forbidden()
        assert err.value.status == 403
    # And an unauthenticated caller gets 401, not anonymous access to objects.
    cfg.api_key = {}
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(client.ApiClient(cfg)).read_namespaced_config_map("cfg", namespace)
    assert err.value.status in (401, 403)


def test_released_volume_returns_to_the_pool(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "scratch"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "user"},
        "spec": {"containers": [{"name": "main", "image": PAUSE, "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "scratch"}}], **ON_KWOK_NODES},
    })
    pv_name = wait_until(
        lambda: core.read_namespaced_persistent_volume_claim("scratch", namespace).spec.volume_name,
        60, "claim bound through WaitForFirstConsumer")
    wait_until(lambda: core.read_namespaced_pod("user", namespace).status.phase == "Running", 30, "pod Running")
    core.delete_namespaced_pod("user", namespace)
    core.delete_namespaced_persistent_volume_claim("scratch", namespace)

    def back_in_pool():
        pv = core.read_persistent_volume(pv_name)
        return pv.status.phase == "Available" and pv.spec.claim_ref is None

    wait_until(back_in_pool, 60, f"{pv_name} Released then Available again (pv-recycler)", interval=0.5)
