"""Rolling update with real Celery workers on a real Redis.

A change of the ElasticWorker's pod template (here the annotation
checksum/airflow-env, as the airflow role changes it with the configuration)
makes every pod outdated. The controller replaces them one at a time: one
surge pod first (never more than replicas + 1 pods), then one outdated worker
drained; busy workers keep their tasks until they finish, nothing is lost.
"""
import collections
import importlib
import os
import threading
import time

import pytest
import redis

from conftest import GROUP, VERSION, elastic_worker, elastic_worker_when, exactly_live_pods, live_pods, wait_for

pytestmark = pytest.mark.usefixtures("crds")

HASH = "elastic-airflow.io/template-hash"


def records(r, key):
    return [tuple(x.decode().split()) for x in r.lrange(key, 0, -1)]


class PodCounter(threading.Thread):
    """Samples the number of live (not terminating) worker pods."""

    def __init__(self, core, namespace):
        threading.Thread.__init__(self, daemon=True)
        self.core, self.namespace = core, namespace
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append(len(live_pods(self.core, self.namespace)))
            except Exception:
                pass
            time.sleep(0.1)


def test_template_change_replaces_pods_one_at_a_time_without_losing_tasks(core, custom, namespace, controllers,
                                                                          fleet, broker_secret, redis_url):
    queue = fleet.queue
    os.environ["EW_TEST_BROKER"], os.environ["EW_TEST_QUEUE"] = redis_url, queue
    import celery_app
    importlib.reload(celery_app)
    r = redis.Redis.from_url(redis_url)

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", elastic_worker(
        "w", namespace, low=1, high=3, replicas=3, broker_secret=broker_secret, queues=[queue]))
    controllers("ctl-a")
    from elastic.celery_control import CeleryControl
    ctl = CeleryControl(redis_url, timeout=1.0)
    old = wait_for(lambda: exactly_live_pods(core, namespace, 3), 60, what="3 pods")
    old_names = sorted(p.metadata.name for p in old)
    old_hash = old[0].metadata.annotations[HASH]
    wait_for(lambda: all(ctl.ping(["celery@" + n for n in old_names]).values()), 60, what="3 workers up")
    # steady state: up to date, nothing moves
    ew = wait_for(elastic_worker_when(custom, namespace, "w", lambda s: s.get("updatedReplicas") == 3), 30,
                  what="status.updatedReplicas 3")
    assert ew["status"]["templateHash"] == old_hash

    # two workers get a long task each
    tokens = ["long-%d" % i for i in range(2)]
    for t in tokens:
        celery_app.work.apply_async((t, 15), queue=queue)
    wait_for(lambda: len(records(r, queue + ":started")) == 2, 30, what="long tasks started")
    busy_hosts = set(h for _unused, h, _unused in records(r, queue + ":started"))

    counter = PodCounter(core, namespace)
    counter.start()
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", "w", {
        "spec": {"template": {"metadata": {"annotations": {"checksum/airflow-env": "v2"}}}}})
    started = time.time()

    def rolled():
        pods = live_pods(core, namespace)
        hashes = set(p.metadata.annotations.get(HASH) for p in pods)
        return pods if len(pods) == 3 and old_hash not in hashes and not (set(old_names) & set(
            p.metadata.name for p in pods)) else None
    new = wait_for(rolled, 150, interval=0.5, what="every pod replaced")
    seconds = time.time() - started
    counter.stop.set()
    counter.join(5)

    new_hash = new[0].metadata.annotations[HASH]
    assert new_hash != old_hash and all(p.metadata.annotations[HASH] == new_hash for p in new)
    assert all(p.metadata.annotations.get("checksum/airflow-env") == "v2" for p in new)
    # never more than replicas + 1 pods (one surge pod), never fewer than replicas
    assert max(counter.samples) <= 4, counter.samples
    assert min(counter.samples) >= 3, counter.samples
    # one at a time: the old pods went at three different moments, each after its tasks ended
    gone = fleet.seen_deleted(old_names)
    assert len(gone) == 3
    done = records(r, queue + ":done")
    wait_for(lambda: len(records(r, queue + ":done")) == 2, 30, what="long tasks done")
    done = records(r, queue + ":done")
    counts = collections.Counter(t for t, _unused, _unused in done)
    assert counts == collections.Counter(tokens), "lost or repeated tasks: %s" % counts
    for token, host, when in done:
        pod = host.split("@", 1)[1]
        assert pod in gone and float(when) <= gone[pod], "%s deleted while running %s" % (pod, token)
    # the busy workers went last (idle ones first)
    order = sorted(gone, key=gone.get)
    assert "celery@" + order[0] not in busy_hosts
    ew = wait_for(elastic_worker_when(custom, namespace, "w", lambda s: any(
        c["type"] == "UpToDate" and c["status"] == "True" for c in s.get("conditions", []))
        and s.get("updatedReplicas") == 3), 30, what="UpToDate")
    assert ew["status"]["templateHash"] == new_hash
    print("\nrolling update of 3 workers (2 busy with 15 s tasks): %.1f s, pods between %d and %d"
          % (seconds, min(counter.samples), max(counter.samples)))
    ctl.close()
