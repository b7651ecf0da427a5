"""playbooks/drain.yml end to end: the local Kubernetes control plane (KWOK pods of a real
StatefulSet) plus real Celery workers on Redis whose hostnames are those pods' names.

Runs a private control plane of its own (tests/cluster/cluster.sh with its own
state directory and ports) and stops it again at the end.
"""

import base64
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import REPO, ansible_env, run_module

CACHE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", pathlib.Path.home() / ".cache" / "elastic-airflow"))
CLUSTER_SH = REPO / "tests" / "cluster" / "cluster.sh"
# A private control plane (own state and ports, one KWOK node, no real node:
# one real node runs per machine, and the shared cluster's may be up), so
# this test neither depends on nor disturbs the shared one.
STATE = CACHE / "run" / "drain-cluster"
KUBECONFIG = STATE / "kubeconfig"
CLUSTER_ENV = dict(os.environ, ELASTIC_AIRFLOW_CLUSTER_STATE=str(STATE),
                   ELASTIC_AIRFLOW_CLUSTER_PORT_BASE=os.environ.get("ELASTIC_AIRFLOW_DRAIN_CLUSTER_PORT_BASE", "27643"),
                   ELASTIC_AIRFLOW_CLUSTER_NODES="1", ELASTIC_AIRFLOW_CLUSTER_PVS="0",
                   ELASTIC_AIRFLOW_CLUSTER_REAL_NODE="0")
# The KWOK node is tainted: only what tolerates it lands there.
ON_KWOK_NODE = {"tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake",
                                 "effect": "NoSchedule"}]}


@pytest.fixture(scope="module", autouse=True)
def private_cluster():
    status = subprocess.run([str(CLUSTER_SH), "status"], env=CLUSTER_ENV, capture_output=True, check=False)
    was_up = status.returncode == 0
    if not was_up:
        proc = subprocess.run([str(CLUSTER_SH), "up"], env=CLUSTER_ENV, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield KUBECONFIG
    if not was_up:
        subprocess.run([str(CLUSTER_SH), "down"], env=CLUSTER_ENV, capture_output=True, check=False)


@pytest.fixture
def kube():
    from kubernetes import client, config

    config.load_kube_config(config_file=str(KUBECONFIG))
    return client.CoreV1Api(), client.AppsV1Api()


@pytest.fixture
def deployed(kube, redis_url):
    """A namespace with <name>-worker (3 replicas, Running on KWOK) and the <name>-broker Secret."""
    core, apps = kube
    tag = uuid.uuid4().hex[:6]
    ns, name = "drain-e2e-" + tag, "e2e" + tag
    core.create_namespace({"metadata": {"name": ns}})
    try:
        yield _deploy(core, apps, ns, name, redis_url)
    finally:
        core.delete_namespace(ns)


def _deploy(core, apps, ns, name, redis_url):
    labels = {"app.kubernetes.io/name": "airflow", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/component": "worker"}
    url = redis_url.rsplit("/", 1)[0] + "/5"  # own db: own fan-out channels too
    core.create_namespaced_secret(ns, {"metadata": {"name": name + "-broker"},
                                       "data": {"url": base64.b64encode(url.encode()).decode()}})
    apps.create_namespaced_stateful_set(ns, {
        "metadata": {"name": name + "-worker", "labels": labels},
        "spec": {"replicas": 3, "serviceName": name + "-worker", "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     **ON_KWOK_NODE, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "worker", "image": "apache/airflow:3.0.2"}]}}}})
    deadline = time.time() + 180  # the cluster is shared: other tests may fill its nodes for a while
    while True:
        pods = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/instance=" + name).items
        if len(pods) == 3 and all(p.status.phase == "Running" for p in pods):
            break
        assert time.time() < deadline, "worker pods never Running: %r" % [
            (p.metadata.name, p.status.phase, [c.message for c in (p.status.conditions or [])]) for p in pods]
        time.sleep(0.5)
    return ns, name, url


def run_drain(ns, name, collections_path, *args, **extra):
    vars_ = {"elastic_airflow_namespace": ns, "elastic_airflow_cluster_name": name,
             "elastic_airflow_kubeconfig": str(KUBECONFIG),
             "elastic_airflow_drain_poll_interval": 0.5, "elastic_airflow_no_log": False}
    vars_.update(extra)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(vars_, fh)
    env = dict(ansible_env(collections_path), ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    proc = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i",
                           str(REPO / "inventories" / "local"), str(REPO / "playbooks" / "drain.yml"),
                           "-e", "@" + fh.name, *args], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    os.unlink(fh.name)
    return proc.returncode, proc.stdout + proc.stderr


def replicas(kube, ns, name):
    return kube[1].read_namespaced_stateful_set(name + "-worker", ns).spec.replicas


@pytest.mark.timeout(400)
def test_drain_playbook_scales_down_exactly_the_drained_workers(kube, deployed, workers_factory, collections_path):
    ns, name, url = deployed
    w = workers_factory(url)
    # the Celery workers "in" the pods: celery@<pod name>
    w.hostname = lambda i: "celery@%s-worker-%d" % (name, i)
    hosts = w.start(3)
    ctl = w.control

    # bad input first: nothing may change
    for extra, needle in [
        ({"elastic_airflow_drain_count": 0}, "elastic_airflow_drain_count must be an integer > 0"),
        ({"elastic_airflow_drain_count": 4}, "must be between 1 and 3"),
        ({"elastic_airflow_drain_workers": [name + "-worker-0"]}, "must name the highest ordinals"),
        ({"elastic_airflow_drain_timeout": 0}, "must be seconds > 0"),
        ({"elastic_airflow_cluster_name": "nosuch"}, "not found"),
    ]:
        rc, out = run_drain(ns, name, collections_path, **extra)
        assert rc != 0 and needle in out, (extra, out[-3000:])
    assert replicas(kube, ns, name) == 3

    # an HPA on the StatefulSet would add the drained workers back: refused
    from kubernetes import client
    hpa_api = client.AutoscalingV2Api()
    hpa_api.create_namespaced_horizontal_pod_autoscaler(ns, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name + "-worker"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name + "-worker"},
                 "minReplicas": 1, "maxReplicas": 5}})
    rc, out = run_drain(ns, name, collections_path, elastic_airflow_drain_count=1)
    hpa_api.delete_namespaced_horizontal_pod_autoscaler(name + "-worker", ns)
    assert rc != 0 and "would add the drained workers back" in out, out[-3000:]
    assert replicas(kube, ns, name) == 3 and all(ctl.queues(h) for h in hosts)

    # check mode: reports, changes nothing
    rc, out = run_drain(ns, name, collections_path, "--check", elastic_airflow_drain_count=2)
    assert rc == 0, out[-3000:]
    assert "would_drain" in out
    assert replicas(kube, ns, name) == 3
    assert all(ctl.queues(h) for h in hosts)

    # busy: 2 tasks on every worker (acks_late, prefetch 1: each holds exactly its two)
    for i in range(6):
        w.send("job-%d" % i, 6)
    deadline = time.time() + 20
    while not all(len(v.active) == 2 for v in ctl.workload(hosts).values()) or len(ctl.workload(hosts)) < 3:
        assert time.time() < deadline, ctl.workload(hosts)
        time.sleep(0.2)
    for i in range(6, 12):
        w.send("job-%d" % i, 3)

    t0 = time.time()
    rc, out = run_drain(ns, name, collections_path, elastic_airflow_drain_count=2)
    assert rc == 0, out[-4000:]
    took = time.time() - t0
    # the two highest ordinals were drained, only after their running tasks ended
    events = w.events()
    for h in hosts[1:]:
        assert ctl.queues(h) == []
        mine = [e for e in events if e[2] == h]
        assert {e[5] for e in mine if e[0] == "start"} == {e[5] for e in mine if e[0] == "end"}
        assert len([e for e in mine if e[0] == "end"]) >= 2
    assert replicas(kube, ns, name) == 1
    deadline = time.time() + 30
    while True:
        pods = sorted(p.metadata.name for p in kube[0].list_namespaced_pod(ns).items)
        if pods == [name + "-worker-0"]:
            break
        assert time.time() < deadline, pods
        time.sleep(0.5)
    # "the pods are gone": their processes end (warm shutdown, nothing running)
    for h in hosts[1:]:
        w.stop(h)
    w.wait_ends(12, timeout=90)
    ends = collections.Counter(e[1] for e in w.events() if e[0] == "end")
    starts = collections.Counter(e[1] for e in w.events() if e[0] == "start")
    assert len(ends) == 12 and set(ends.values()) == {1} and set(starts.values()) == {1}
    print("\ndrain.yml removed 2 busy workers in %.1fs" % took)

    # the module on a pod that is already gone: a clean no-op
    rc, res = run_module(collections_path, {"broker_url": url, "namespace": ns, "kubeconfig": str(KUBECONFIG),
                                            "workers": [name + "-worker-2"], "delete_pod": True})
    assert rc == 0 and res["changed"] is False and res["workers"][0]["state"] == "gone", res

    # a drain that times out: worker-0 busy until released, timeout 2 s -> kept, consumes again,
    # replicas unchanged
    w.send_hold("long")
    deadline = time.time() + 15
    while not ctl.workload(hosts[:1])[hosts[0]].active:
        assert time.time() < deadline
        time.sleep(0.2)
    rc, out = run_drain(ns, name, collections_path, elastic_airflow_drain_count=1, elastic_airflow_drain_timeout=2)
    assert rc != 0 and "No worker was removed" in out and "not idle within timeout" in out, out[-4000:]
    assert replicas(kube, ns, name) == 1
    assert [q.name for q in ctl.queues(hosts[0])] == [w.queue]
    pod = kube[0].read_namespaced_pod(name + "-worker-0", ns)
    assert "elastic-airflow.io/drain" not in (pod.metadata.annotations or {})
    assert ctl.workload(hosts[:1])[hosts[0]].active  # still running its task
    w.release("long")
    w.wait_ends(13, timeout=30)

    # the module with delete_pod: the drained pod is deleted by uid (the StatefulSet makes a new one, unannotated)
    old_uid = kube[0].read_namespaced_pod(name + "-worker-0", ns).metadata.uid
    rc, res = run_module(collections_path, {"broker_url": url, "namespace": ns, "kubeconfig": str(KUBECONFIG),
                                            "label_selectors": ["app.kubernetes.io/instance=" + name],
                                            "delete_pod": True, "poll_interval": 0.5})
    assert rc == 0 and res["changed"] is True, res
    assert [(e["worker"], e["state"]) for e in res["workers"]] == [(name + "-worker-0", "deleted")]
    assert ctl.queues(hosts[0]) == []
    deadline = time.time() + 60
    while True:
        try:
            pod = kube[0].read_namespaced_pod(name + "-worker-0", ns)
            if pod.metadata.uid != old_uid and not pod.metadata.deletion_timestamp:
                break
        except Exception:  # between delete and re-create
            pass
        assert time.time() < deadline, "pod not replaced"
        time.sleep(0.5)
    assert "elastic-airflow.io/drain" not in (pod.metadata.annotations or {})
