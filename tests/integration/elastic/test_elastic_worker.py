"""ElasticWorker on the local control plane: pods, replacement, scale, schema validation."""
import pytest
from kubernetes.client.rest import ApiException

from conftest import GROUP, VERSION, elastic_worker, elastic_worker_when, kubectl, live_pods, wait_for

pytestmark = pytest.mark.usefixtures("crds")


def running(core, ns, n):
    def check():
        pods = live_pods(core, ns)
        ok = [p for p in pods if p.status.phase == "Running"]
        return pods if len(pods) == n and len(ok) == n else None
    return check


def test_min_replicas_pods_replacement_and_scale(core, custom, namespace, controllers):
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers",
                                           elastic_worker("w", namespace, low=2, high=4, policy="Immediate"))
    controllers("ctl-a")
    pods = wait_for(running(core, namespace, 2), 60, what="2 Running pods")
    for p in pods:
        assert p.metadata.name.startswith("w-") and len(p.metadata.name) == 7
        ref = p.metadata.owner_references[0]
        assert ref.kind == "ElasticWorker" and ref.controller
    # status and the scale subresource
    ew = wait_for(elastic_worker_when(custom, namespace, "w", lambda s: s.get("readyReplicas") == 2), 30,
                  what="status.readyReplicas 2")
    assert ew["status"]["selector"] == "app=w,elastic-airflow.io/elastic-worker=w"

    # a deleted pod is replaced
    victim = pods[0].metadata.name
    core.delete_namespaced_pod(victim, namespace)

    def replaced():
        ps = live_pods(core, namespace)
        names = [p.metadata.name for p in ps]
        return ps if len(ps) == 2 and victim not in names and all(p.status.phase == "Running" for p in ps) else None
    pods = wait_for(replaced, 60, what="replacement pod")

    # kubectl scale within bounds works, out of bounds is refused by the API server
    out = kubectl("scale", "-n", namespace, "elasticworker/w", "--replicas=4")
    assert out.returncode == 0, out.stderr
    wait_for(running(core, namespace, 4), 60, what="4 Running pods")
    out = kubectl("scale", "-n", namespace, "elasticworker/w", "--replicas=5")
    assert out.returncode != 0 and "replicas must lie within" in out.stderr
    out = kubectl("scale", "-n", namespace, "elasticworker/w", "--replicas=1")
    assert out.returncode != 0 and "replicas must lie within" in out.stderr
    out = kubectl("scale", "-n", namespace, "elasticworker/w", "--replicas=3")
    assert out.returncode == 0, out.stderr
    wait_for(running(core, namespace, 3), 60, what="3 Running pods")
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, "elasticworkers", "w")
    assert scale["spec"]["replicas"] == 3


@pytest.mark.parametrize("change,message", [
    ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas must not exceed maxReplicas"),
    ({"replicas": 9, "maxReplicas": 4}, "replicas must lie within"),
    ({"minReplicas": -1}, "spec.minReplicas"),
    ({"scaleInPolicy": {"type": "Sometimes"}}, "spec.scaleInPolicy.type"),
    ({"scaleInPolicy": {"type": "BySelector"}}, "scaleInPolicy.selector is required"),
    ({"selector": {"matchLabels": {"app": "other"}}}, "template's labels must match"),
])
def test_out_of_bounds_specs_are_rejected(custom, namespace, change, message):
    body = elastic_worker("bad", namespace)
    body["spec"].update(change)
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", body)
    assert err.value.status == 422 and message in err.value.body


def test_autoscaler_bounds_are_validated(custom, namespace):
    body = {"apiVersion": "%s/%s" % (GROUP, VERSION), "kind": "ElasticWorkerAutoscaler",
            "metadata": {"name": "a", "namespace": namespace},
            "spec": {"scaleTargetRef": {"name": "w"}, "minReplicas": 3, "maxReplicas": 2}}
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkerautoscalers", body)
    assert "minReplicas must not exceed maxReplicas" in err.value.body
    body["spec"].update(minReplicas=1, maxReplicas=3)
    obj = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkerautoscalers", body)
    assert obj["spec"]["scaleInThreshold"] == 0.7 and obj["spec"]["scaleInBackOffSeconds"] == 30
    assert obj["spec"]["metric"]["type"] == "celery" and obj["spec"]["targetValue"] == 80


def test_selector_is_immutable(custom, namespace):
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", elastic_worker("w", namespace))
    patch = {"spec": {"selector": {"matchLabels": {"app": "w", "x": "y"}},
                      "template": {"metadata": {"labels": {"app": "w", "x": "y"}}}}}
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", "w", patch)
    assert "selector is immutable" in err.value.body
