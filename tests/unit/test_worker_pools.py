"""Extra Celery worker pools (airflow_worker_pools): what the roles render for them in each
autoscaling mode, that their pods get the worker's NetworkPolicies and meet the Pod Security
Standard like the main workers', that the controller keeps the pools apart although the main
workers' selector (immutable, as it always was) also matches their pods, and the checks behind
the airflow role's validation (plugins/module_utils/elastic/worker_pools.py).

The variant `worker-pools` of conftest.VARIANTS (mode elastic) is rendered with the others, so
test_pod_security_objects.py and test_network_policy_objects.py check it too; the modes hpa and
none are rendered here. That a task with queue= runs on its pool's pod, and that a burst scales
only its pool, is for the real node: tests/integration/e2e_pods/test_worker_pools.py.
"""

from __future__ import annotations

import copy
import os
import sys

import pytest
from test_network_policy_objects import DENIED, NAMESPACE, NEEDED, Endpoint, cluster_of
from test_pod_security_objects import pod_templates, restricted_violations

from conftest import VARIANTS, render

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import reconcile as R  # noqa: E402
from elastic.worker_pools import worker_pool_errors  # noqa: E402

VARIANT = "worker-pools"
POOLS = VARIANTS[VARIANT]["airflow_worker_pools"]
POOL_LABEL = "elastic-airflow.io/worker-pool"
WORKERS = {"app.kubernetes.io/instance": "airflow", "app.kubernetes.io/component": "worker"}
# The same pools in the modes that run StatefulSets.
MODES = {
    "pools-hpa": dict(VARIANTS[VARIANT], elastic_airflow_worker_autoscaling="hpa",
                      airflow_worker_pools=[dict(POOLS[0], min_replicas=1), POOLS[1]]),
    "pools-none": dict(VARIANTS[VARIANT], elastic_airflow_worker_autoscaling="none",
                       airflow_worker_pools=[dict(POOLS[0], replicas=3), POOLS[1]]),
}


@pytest.fixture(scope="module")
def modes():
    return render(MODES)


def _objects(layers):
    return [o for objects in layers.values() for o in objects]


def _by(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _command(template):
    container = template["spec"]["containers"][0]
    assert container["name"] == "worker"
    return container["args"][-1]


# -- mode elastic (the variant of conftest.VARIANTS) -------------------------------------

def test_each_pool_has_its_elastic_worker_and_autoscaler(rendered):
    objects = _objects(rendered[VARIANT])
    workers, scalers = _by(objects, "ElasticWorker"), _by(objects, "ElasticWorkerAutoscaler")
    assert sorted(workers) == sorted(scalers) == ["airflow-worker", "airflow-worker-heavy", "airflow-worker-light"]
    assert not [o for o in objects if o["kind"] in ("StatefulSet", "HorizontalPodAutoscaler")
                and "worker" in o["metadata"]["name"]]
    heavy, light = workers["airflow-worker-heavy"]["spec"], workers["airflow-worker-light"]["spec"]
    assert (heavy["minReplicas"], heavy["maxReplicas"]) == (0, 4)
    assert (light["minReplicas"], light["maxReplicas"]) == (1, 10)  # elastic_worker_min/max_replicas
    assert heavy["drain"]["queues"] == ["heavy", "ml"] and light["drain"]["queues"] == ["light"]
    for name in ("heavy", "light"):
        spec = workers[f"airflow-worker-{name}"]["spec"]
        assert spec["selector"]["matchLabels"] == dict(WORKERS, **{POOL_LABEL: name})
        # the CRD's rule: the template's labels carry the selector's
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        assert workers[f"airflow-worker-{name}"]["metadata"]["labels"][POOL_LABEL] == name
        scaler = scalers[f"airflow-worker-{name}"]["spec"]
        assert scaler["scaleTargetRef"]["name"] == f"airflow-worker-{name}"
        assert scaler["metric"] == {"type": "celery", "celery": {"queues": spec["drain"]["queues"]}}
        assert (scaler["minReplicas"], scaler["maxReplicas"]) == (spec["minReplicas"], spec["maxReplicas"])
    assert scalers["airflow-worker-heavy"]["spec"]["targetValue"] == 60
    assert scalers["airflow-worker-light"]["spec"]["targetValue"] == 80  # elastic_worker_target_value


def test_pool_workers_consume_only_their_queues_with_their_settings(rendered):
    workers = _by(_objects(rendered[VARIANT]), "ElasticWorker")
    heavy = workers["airflow-worker-heavy"]["spec"]["template"]
    light = workers["airflow-worker-light"]["spec"]["template"]
    main = workers["airflow-worker"]["spec"]["template"]
    base = 'exec airflow celery worker --celery-hostname "$(hostname)"'
    assert _command(main) == base  # the queue default ([operators] default_queue)
    assert _command(heavy) == base + " --queues heavy,ml --concurrency 2"
    assert _command(light) == base + " --queues light --concurrency 16"  # airflow_worker_concurrency
    assert heavy["spec"]["containers"][0]["resources"] == POOLS[0]["resources"]
    assert light["spec"]["containers"][0]["resources"] == main["spec"]["containers"][0]["resources"]
    assert heavy["spec"]["terminationGracePeriodSeconds"] == 1800
    assert light["spec"]["terminationGracePeriodSeconds"] == main["spec"]["terminationGracePeriodSeconds"] == 600
    # A pool's scheduling replaces the worker component's field by field; the rest stays.
    assert heavy["spec"]["nodeSelector"] == {"node-pool": "highmem"}
    assert light["spec"]["nodeSelector"] == main["spec"]["nodeSelector"] == {"pool": "workers"}
    tolerations = [{"key": "dedicated", "operator": "Exists"}]
    assert heavy["spec"]["tolerations"] == light["spec"]["tolerations"] == tolerations
    for template in (heavy, light):
        # the rest of a worker pod: its log DNS name under the one headless Service, the
        # extension points, the sidecars and init containers, the security contexts
        assert template["spec"]["subdomain"] == "airflow-worker"
        without = copy.deepcopy(template)
        for key in ("nodeSelector", "terminationGracePeriodSeconds"):
            without["spec"].pop(key)
        without["spec"]["containers"][0].pop("args")
        without["spec"]["containers"][0].pop("resources")
        without["spec"]["initContainers"][-1].pop("resources")  # wait-for-migrations: the worker's
        without["metadata"]["labels"].pop(POOL_LABEL)
        same = copy.deepcopy(main)
        for key in ("nodeSelector", "terminationGracePeriodSeconds"):
            same["spec"].pop(key)
        same["spec"]["containers"][0].pop("args")
        same["spec"]["containers"][0].pop("resources")
        same["spec"]["initContainers"][-1].pop("resources")
        assert without == same


def test_the_main_workers_are_as_without_pools(rendered):
    def main(variant):
        found = {kind: _by(_objects(rendered[variant]), kind)["airflow-worker"]
                 for kind in ("ElasticWorker", "ElasticWorkerAutoscaler")}
        # but for the variant's pod settings and extension point
        spec = found["ElasticWorker"]["spec"]["template"]["spec"]
        for key in ("nodeSelector", "tolerations"):
            spec.pop(key, None)
        for container in spec["containers"] + spec["initContainers"]:
            container["env"] = [e for e in container.get("env") or [] if e["name"] != "REQUESTS_CA_BUNDLE"]
        return found
    assert main(VARIANT) == main("defaults")


def test_the_log_service_selects_every_pool_and_no_budget_is_added(rendered):
    objects = _objects(rendered[VARIANT])
    service = _by(objects, "Service")["airflow-worker"]
    for worker in _by(objects, "ElasticWorker").values():
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
    budgets = {o["metadata"]["name"] for o in objects if o["kind"] == "PodDisruptionBudget"}
    assert budgets == {o["metadata"]["name"] for o in _objects(rendered["defaults"])
                       if o["kind"] == "PodDisruptionBudget"}


def _pool_cluster(objects):
    """The variant's cluster, with one endpoint per worker set (cluster_of keeps one per component)."""
    cluster = cluster_of(objects)
    sets = {o["metadata"]["name"]: o for o in objects if o["kind"] in ("StatefulSet", "ElasticWorker")
            and o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}
    for index, (name, obj) in enumerate(sorted(sets.items())):
        template = obj["spec"]["template"]
        ports = [p for c in template["spec"]["containers"] for p in c.get("ports") or []]
        cluster.endpoints[name] = Endpoint(f"198.18.1.{index + 10}", NAMESPACE, template["metadata"]["labels"], ports)
    return cluster, sorted(sets)


def _as(flows, name):
    return [tuple(name if end == "worker" else end for end in f[:2]) + tuple(f[2:]) for f in flows
            if "worker" in f[:2]]


@pytest.mark.parametrize("variant", [VARIANT, *MODES])
def test_every_worker_set_gets_the_flows_of_a_worker(rendered, modes, variant):
    objects = _objects((rendered if variant == VARIANT else modes)[variant])
    cluster, sets = _pool_cluster(objects)
    assert sets == ["airflow-worker", "airflow-worker-heavy", "airflow-worker-light"]
    endpoints = set(cluster.endpoints)
    for name in sets:
        needed = [f for f in _as(NEEDED, name) if set(f[:2]) <= endpoints]
        denied = [f for f in _as(DENIED, name) if set(f[:2]) <= endpoints]
        assert needed and denied
        assert [f for f in needed if not cluster.allowed(*f)] == [], name
        assert [f for f in denied if cluster.allowed(*f)] == [], name
    # a pool's workers reach no other worker's log port, as the main workers do not
    assert not cluster.allowed("airflow-worker-heavy", "airflow-worker-light", 8793)


@pytest.mark.parametrize("variant", [VARIANT, *MODES])
def test_every_pool_pod_meets_restricted(rendered, modes, variant):
    templates = pod_templates(_objects((rendered if variant == VARIANT else modes)[variant]))
    pools = {name: t for name, t in templates.items() if name.split("/")[1].startswith("airflow-worker-")}
    assert len(pools) == 2
    assert {name: v for name, t in pools.items() if (v := restricted_violations(t))} == {}


# -- modes hpa and none (StatefulSets) ---------------------------------------------------

def test_each_pool_has_its_statefulset_and_hpa(modes):
    objects = _objects(modes["pools-hpa"])
    sets, hpas = _by(objects, "StatefulSet"), _by(objects, "HorizontalPodAutoscaler")
    workers = sorted(n for n in sets if n.startswith("airflow-worker"))
    assert workers == sorted(hpas) == ["airflow-worker", "airflow-worker-heavy", "airflow-worker-light"]
    assert not _by(objects, "ElasticWorker")
    for name in ("heavy", "light"):
        sts = sets[f"airflow-worker-{name}"]["spec"]
        assert "replicas" not in sts  # the HPA owns it
        assert sts["serviceName"] == "airflow-worker" and sts["podManagementPolicy"] == "Parallel"
        assert sts["selector"]["matchLabels"] == dict(WORKERS, **{POOL_LABEL: name})
        assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()
        hpa = hpas[f"airflow-worker-{name}"]
        assert hpa["metadata"]["labels"][POOL_LABEL] == name  # what the airflow role prunes by
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "name": f"airflow-worker-{name}"}
        # airflow_tasks_per_worker counts every queue's tasks: a pool scales on its CPU instead
        assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    heavy, light = hpas["airflow-worker-heavy"]["spec"], hpas["airflow-worker-light"]["spec"]
    assert heavy["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization",
                                                                         "averageUtilization": 60}}
    assert light["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    assert (heavy["minReplicas"], heavy["maxReplicas"]) == (1, 4)
    assert (light["minReplicas"], light["maxReplicas"]) == (1, 10)  # airflow_worker_min/max_replicas
    main = hpas["airflow-worker"]["spec"]
    assert main["metrics"][0]["type"] == "Object"
    assert main["metrics"][0]["object"]["describedObject"]["name"] == "airflow-worker"
    assert _command(sets["airflow-worker-heavy"]["spec"]["template"]).endswith("--queues heavy,ml --concurrency 2")


def test_mode_none_gives_each_pool_its_replicas(modes):
    objects = _objects(modes["pools-none"])
    sets = _by(objects, "StatefulSet")
    assert sets["airflow-worker-heavy"]["spec"]["replicas"] == 3
    assert sets["airflow-worker-light"]["spec"]["replicas"] == sets["airflow-worker"]["spec"]["replicas"] == 1
    assert not _by(objects, "HorizontalPodAutoscaler") and not _by(objects, "ElasticWorker")


# -- the controller keeps the pools apart ------------------------------------------------

def test_the_controller_counts_only_the_pods_an_elastic_worker_owns(rendered):
    workers = _by(_objects(rendered[VARIANT]), "ElasticWorker")
    for name, ew in workers.items():
        ew["metadata"].update(uid=f"uid-{name}", namespace=NAMESPACE)
    pods = [R.build_pod(ew, R.new_pod_name(name, set())) for name, ew in sorted(workers.items())]
    main = workers["airflow-worker"]
    # the main selector matches every worker pod, the pools' pods too ...
    assert all(R.selector_matches(main["spec"]["selector"], p["metadata"]["labels"]) for p in pods)
    # ... but each ElasticWorker owns only its own, and its pods are named after it
    for name, ew in workers.items():
        owned = R.owned_pods(ew, pods)
        assert len(owned) == 1 and owned[0]["metadata"]["name"].startswith(name + "-")
        assert owned[0]["metadata"]["labels"][R.OWNER_LABEL] == name
        assert owned[0]["spec"]["hostname"] == owned[0]["metadata"]["name"]
        assert len(owned[0]["metadata"]["name"]) <= 63


# -- the checks of the airflow role's validation ------------------------------------------

DEFAULTS = {"concurrency": 16, "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}, "replicas": 1,
            "min_replicas": 1, "max_replicas": 10, "target": 80, "termination_grace_period_seconds": 600,
            "scheduling": {}}


def _errors(pools, mode="elastic", defaults=None, cluster="airflow"):
    return worker_pool_errors(pools, dict(DEFAULTS, **(defaults or {})), cluster, mode)


def test_valid_pools_pass_in_every_mode():
    for mode in ("elastic", "hpa", "none"):
        assert _errors(POOLS if mode != "hpa" else [dict(POOLS[0], min_replicas=1), POOLS[1]], mode) == [], mode
    assert _errors([]) == []


@pytest.mark.parametrize(("pools", "mode", "expect"), [
    ("heavy", "elastic", "airflow_worker_pools must be a list of pools"),
    ([{"queues": ["q"]}], "elastic", "airflow_worker_pools[0]: name must be lower-case letters"),
    ([{"name": "Heavy", "queues": ["q"]}], "elastic", "airflow_worker_pools[0] (Heavy): name must be"),
    ([{"name": "9x", "queues": ["q"]}], "elastic", "starting with a letter"),
    ([{"name": "a" * 40, "queues": ["q"]}], "elastic", "name is too long: the pool's StatefulSet or ElasticWorker"),
    ([{"name": "a", "queues": ["q"]}, {"name": "a", "queues": ["r"]}], "elastic", "names must be unique"),
    ([{"name": "a", "queues": []}], "elastic", "airflow_worker_pools[0] (a): queues must be a non-empty list"),
    ([{"name": "a"}], "elastic", "queues must be a non-empty list"),
    ([{"name": "a", "queues": ["x,y"]}], "elastic", "queue 'x,y' must be letters, digits"),
    ([{"name": "a", "queues": ["default"]}], "elastic", "queue 'default' is the main workers' queue"),
    ([{"name": "a", "queues": ["q", "q"]}], "elastic", "queue 'q' is listed twice"),
    ([{"name": "a", "queues": ["q"]}, {"name": "b", "queues": ["q"]}], "elastic",
     "airflow_worker_pools[1] (b): queue 'q' is also a queue of airflow_worker_pools[0] (a)"),
    ([{"name": "a", "queues": ["q"], "queue": "r"}], "elastic", "unknown keys queue; a pool takes only name"),
    ([{"name": "a", "queues": ["q"], "concurrency": 0}], "elastic", "concurrency must be a whole number"),
    ([{"name": "a", "queues": ["q"], "min_replicas": 5, "max_replicas": 2}], "elastic",
     "min_replicas must be at least 0 and at most max_replicas"),
    ([{"name": "a", "queues": ["q"], "min_replicas": 0}], "hpa", "(an HPA cannot scale to 0)"),
    ([{"name": "a", "queues": ["q"], "target": 0}], "elastic", "target must be the wanted load in percent"),
    ([{"name": "a", "queues": ["q"], "target": 50.5}], "hpa", "target must be the HPA's average CPU utilization"),
    ([{"name": "a", "queues": ["q"], "resources": {"limits": {"memory": "1Gi"}}}], "hpa",
     "resources.requests.cpu must be set in mode hpa"),
    ([{"name": "a", "queues": ["q"], "resources": {"requests": {"cpu": "-1"}}}], "elastic",
     "airflow_worker_pools[0] (a): resources.requests.cpu must be a non-negative Kubernetes quantity"),
    ([{"name": "a", "queues": ["q"], "replicas": -1}], "none", "replicas must be a whole number, 0 or more"),
    ([{"name": "a", "queues": ["q"], "termination_grace_period_seconds": "soon"}], "elastic",
     "termination_grace_period_seconds must be a whole number of seconds"),
    ([{"name": "a", "queues": ["q"], "scheduling": {"nodeName": "n1"}}], "elastic",
     "airflow_worker_pools[0] (a): scheduling takes only the pod spec fields"),
])
def test_bad_pools_are_refused_naming_the_pool(pools, mode, expect):
    errors = _errors(pools, mode)
    assert any(expect in e for e in errors), errors


def test_an_inherited_value_that_does_not_fit_is_named_too():
    errors = _errors([{"name": "a", "queues": ["q"], "max_replicas": 2}], defaults={"min_replicas": 3})
    assert errors == ["airflow_worker_pools[0] (a): min_replicas must be at least 0 and at most max_replicas, which "
                      "must be at least 1 (got 3 and 2)."]
