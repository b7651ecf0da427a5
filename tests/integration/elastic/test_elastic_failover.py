"""Two controller replicas: only the Lease holder acts; killing it during a
drain hands the drain to the other replica, which finishes it; no task is lost."""
import collections
import importlib
import os
import time

import pytest
import redis
from kubernetes import client

from conftest import GROUP, VERSION, elastic_worker, live_pods, wait_for

pytestmark = pytest.mark.usefixtures("crds")

ACTIONS = ("CreatedPods", "DeletedPod", "Scaled", "drain ")


def holder(api, namespace):
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease("elastic-worker-controller", namespace)
    except client.rest.ApiException:
        return None
    return lease.spec.holder_identity


def records(r, key):
    return [tuple(x.decode().split()[:2]) for x in r.lrange(key, 0, -1)]


def test_only_the_leader_acts_and_a_killed_leader_drain_is_finished(api, core, custom, namespace, controllers,
                                                                    fleet, broker_secret, redis_url):
    queue = fleet.queue
    os.environ["EW_TEST_BROKER"], os.environ["EW_TEST_QUEUE"] = redis_url, queue
    import celery_app
    importlib.reload(celery_app)
    r = redis.Redis.from_url(redis_url)

    body = elastic_worker("w", namespace, low=1, high=3, replicas=3, broker_secret=broker_secret, queues=[queue])
    # BySelector with a selector nothing matches yet
    body["spec"]["scaleInPolicy"] = {"type": "BySelector", "selector": {"matchLabels": {"drain-me": "yes"}}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", body)
    a = controllers("ctl-a")
    wait_for(lambda: holder(api, namespace) == "ctl-a", 30, what="ctl-a leads")
    b = controllers("ctl-b")
    wait_for(lambda: len([p for p in live_pods(core, namespace) if p.status.phase == "Running"]) == 3, 60,
             what="3 pods")
    from elastic.celery_control import CeleryControl
    ctl = CeleryControl(redis_url, timeout=1.0)
    hosts = ["celery@" + p.metadata.name for p in live_pods(core, namespace)]
    wait_for(lambda: all(ctl.ping(hosts).values()), 60, what="3 workers up")
    time.sleep(3)
    # only the Lease holder acted
    assert holder(api, namespace) == "ctl-a"
    assert "CreatedPods" in a.text()
    assert not any(word in b.text() for word in ACTIONS), b.text()

    # one long task makes one worker busy; mark that pod for scale-in
    celery_app.work.apply_async(("long", 20), queue=queue)
    busy_host = wait_for(lambda: dict(records(r, queue + ":started")).get("long"), 30, what="long task started")
    busy_pod = busy_host.split("@", 1)[1]
    core.patch_namespaced_pod(busy_pod, namespace, {"metadata": {"labels": {"drain-me": "yes"}}})
    custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, "elasticworkers", "w",
                                                {"spec": {"replicas": 2}})

    def drain_record():
        pod = core.read_namespaced_pod(busy_pod, namespace)
        return (pod.metadata.annotations or {}).get("elastic-airflow.io/drain")

    def draining():
        record = drain_record()
        return record if record and '"draining"' in record else None
    wait_for(draining, 30, what="drain of the busy pod under way")
    # kill the leader mid-drain (no Lease release); the drained worker takes no new task
    a.kill()
    killed_at = time.time()
    more = ["more-%d" % i for i in range(6)]
    for t in more:
        celery_app.work.apply_async((t, 1), queue=queue)
    wait_for(lambda: holder(api, namespace) == "ctl-b", 30, what="ctl-b takes the Lease")
    takeover = time.time() - killed_at
    # ctl-b resumes the drain: the pod goes only after its task finished
    wait_for(lambda: busy_pod in fleet.deleted_at, 60, what="busy pod deleted after its drain")
    done = records(r, queue + ":done")
    finished = dict(done)
    assert finished.get("long") == busy_host, "the long task must finish on its worker before the pod goes"
    wait_for(lambda: len(records(r, queue + ":done")) == 1 + len(more), 60, what="all tasks done")
    counts = collections.Counter(t for t, _unused in records(r, queue + ":done"))
    assert all(n == 1 for n in counts.values()) and set(counts) == set(["long"] + more)
    assert not [t for t, h in records(r, queue + ":started") if h == busy_host and t != "long"], \
        "a draining worker took a new task"
    assert "DeletedPod" in b.text() and busy_pod in b.text()
    assert len(live_pods(core, namespace)) == 2
    print("leader takeover after kill: %.1f s" % takeover)
    ctl.close()
