"""Scale-out and scale-in with real Celery workers on a real Redis.

One Celery worker process runs per pod the controller creates (hostname
celery@<pod name>); it starts when the pod appears and is stopped only when
the pod is deleted. The autoscaler adds workers as load rises and, after the
back-off, removes only idle (drained) workers; every task runs exactly once.
"""
import collections
import os
import sys

import pytest
import redis

from conftest import GROUP, VERSION, elastic_worker, exactly_live_pods, live_pods, wait_for

pytestmark = pytest.mark.usefixtures("crds")

BACKOFF = 6


def autoscaler(namespace, target, low=1, high=4, queue=None):
    return {"apiVersion": "%s/%s" % (GROUP, VERSION), "kind": "ElasticWorkerAutoscaler",
            "metadata": {"name": target, "namespace": namespace},
            "spec": {"scaleTargetRef": {"name": target}, "minReplicas": low, "maxReplicas": high,
                     "targetValue": 80, "scaleInBackOffSeconds": BACKOFF, "pollIntervalSeconds": 1,
                     "metric": {"type": "celery", "celery": {"queues": [queue]}}}}


def records(r, key):
    out = []
    for raw in r.lrange(key, 0, -1):
        token, host, when = raw.decode().split()
        out.append((token, host, float(when)))
    return out


def test_scale_out_and_in_through_idle_workers_only(core, custom, namespace, controllers, fleet, broker_secret,
                                                    redis_url, capsys):
    queue = fleet.queue
    sys.path.insert(0, os.path.dirname(__file__))
    os.environ["EW_TEST_BROKER"], os.environ["EW_TEST_QUEUE"] = redis_url, queue
    import importlib

    import celery_app
    importlib.reload(celery_app)
    r = redis.Redis.from_url(redis_url)

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", elastic_worker(
        "w", namespace, low=1, high=4, broker_secret=broker_secret, queues=[queue]))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkerautoscalers",
                                           autoscaler(namespace, "w", queue=queue))
    controllers("ctl-a")
    wait_for(lambda: len(live_pods(core, namespace)) == 1, 60, what="1 pod")
    # the first worker answers
    from elastic.celery_control import CeleryControl
    ctl = CeleryControl(redis_url, timeout=1.0)
    first = live_pods(core, namespace)[0].metadata.name
    wait_for(lambda: ctl.ping(["celery@" + first])["celery@" + first], 60, what="first worker up")

    # load rises: 24 tasks of 3 s on 2 slots -> the autoscaler goes to max (4)
    tokens = ["burst-%d" % i for i in range(24)]
    for t in tokens:
        celery_app.work.apply_async((t, 3), queue=queue)
    wait_for(lambda: len(live_pods(core, namespace)) == 4, 60, what="scale-out to 4")
    # two long tasks keep two workers busy while the load falls
    long_tokens = ["long-%d" % i for i in range(2)]
    wait_for(lambda: len(records(r, queue + ":done")) >= 16, 120, what="burst mostly done")
    for t in long_tokens:
        celery_app.work.apply_async((t, 25), queue=queue)
    wait_for(lambda: len(records(r, queue + ":done")) >= len(tokens), 120, what="burst done")
    burst_done = max(w for tok, _unused, w in records(r, queue + ":done") if tok.startswith("burst"))
    # load falls: after the back-off only idle workers go
    wait_for(lambda: fleet.deleted_at, BACKOFF + 40, what="first scale-in deletion")
    first_deleted = min(fleet.deleted_at.values())
    latency = first_deleted - burst_done
    wait_for(lambda: len(records(r, queue + ":done")) == len(tokens) + 2, 90, what="long tasks done")
    last = wait_for(lambda: exactly_live_pods(core, namespace, 1), BACKOFF * 3 + 60, what="scale-in to 1")
    # every other worker's deletion is checked below, so the fleet must have seen each
    with fleet.lock:
        spawned = set(fleet.started_at)
    fleet.seen_deleted(spawned - {last[0].metadata.name})

    done = records(r, queue + ":done")
    started = records(r, queue + ":started")
    counts = collections.Counter(tok for tok, _unused, _unused in done)
    assert set(counts) == set(tokens + long_tokens), "lost tasks: %s" % (set(tokens + long_tokens) - set(counts))
    assert all(n == 1 for n in counts.values()), "tasks run twice: %s" % [t for t, n in counts.items() if n > 1]
    assert len(started) == len(done)
    # no deleted worker still had (or later got) a task: every task on it ended before its pod went
    for pod, gone in fleet.deleted_at.items():
        host = "celery@" + pod
        late = [tok for tok, h, w in done if h == host and w > gone]
        assert not late, "%s deleted while running %s" % (pod, late)
    # idle workers went while the long tasks still ran; a worker that ran a long
    # task went only after that task ended (the two long tasks may start seconds
    # apart, so the first one's worker may legitimately go before the second ends)
    long_end_by_host = dict((h, float(w)) for tok, h, w in done if tok.startswith("long"))
    long_end = max(long_end_by_host.values())
    early = [p for p, t in fleet.deleted_at.items() if t < long_end]
    assert early, "no idle worker was removed while the long tasks ran"
    removed_busy = [p for p in early if fleet.deleted_at[p] < long_end_by_host.get("celery@" + p, 0)]
    assert not removed_busy, "busy worker(s) removed before their long task ended: %s" % removed_busy
    with capsys.disabled():
        print("\nscale-in latency: load fell at +0.0 s, first idle pod deleted at +%.1f s (back-off %d s)"
              % (latency, BACKOFF))
    assert latency <= BACKOFF + 10
    ctl.close()
