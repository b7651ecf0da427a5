"""Unit tests of the ElasticWorker controller's Reconciler bookkeeping (plugins/module_utils/elastic/controller.py)."""
import json
import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import controller as C  # noqa: E402
from elastic import reconcile as R  # noqa: E402
from elastic.celery_control import WorkerLoad  # noqa: E402
from elastic.k8s_store import ANNOTATION as DRAIN_ANNOTATION  # noqa: E402


def pod(name):
    return {"metadata": {"name": name, "namespace": "ns", "uid": "u-" + name}, "status": {"phase": "Running"}}


def caches(pods):
    return {"pods": C.MemoryCache(pods), "elasticworkers": C.MemoryCache([]),
            "elasticworkerautoscalers": C.MemoryCache([])}


def test_a_pass_forgets_the_pods_that_are_gone():
    rec = C.Reconciler(kube=None, caches=caches([pod("w-a"), pod("w-b")]))
    for uid in ("u-w-a", "u-w-b"):
        rec._concurrency[uid] = 4
        rec._drains[uid] = object()
    rec.reconcile_all()
    assert set(rec._concurrency) == set(rec._drains) == {"u-w-a", "u-w-b"}  # still there: kept

    rec._finished_since = {R.worker_name("w-a"): {"t1": 0.0}, R.worker_name("w-b"): {"t2": 0.0}}
    rec.caches["pods"] = C.MemoryCache([pod("w-b")])  # w-a was deleted
    rec.reconcile_all()
    assert set(rec._concurrency) == set(rec._drains) == {"u-w-b"}
    assert list(rec._finished_since) == [R.worker_name("w-b")]

    rec.caches["pods"] = C.MemoryCache([])
    rec.reconcile_all()
    assert rec._concurrency == {} and rec._drains == {}


def test_a_pass_forgets_the_elastic_workers_and_autoscalers_that_are_gone():
    rec = C.Reconciler(kube=None, caches=caches([]))
    rec._expect_create["u-ew"] = {"w-x": 1e18}
    rec._next_poll["u-ewa"] = 1e18
    rec.reconcile_all()
    assert rec._expect_create == {} and rec._next_poll == {}


class FakeKube:
    """patch_pod_annotations as kube.Kube does it: merge the annotations, return the pod."""

    def __init__(self, pods, missing=()):
        self.pods = dict((p["metadata"]["name"], p) for p in pods)
        self.missing = set(missing)

    def patch_pod_annotations(self, namespace, name, annotations, resource_version=None):
        if name in self.missing:
            raise C.K.ApiException(status=404)
        pod = self.pods[name]
        merged = dict(pod["metadata"].get("annotations") or {})
        merged.update(annotations)
        merged = dict((k, v) for k, v in merged.items() if v is not None)
        return dict(pod, metadata=dict(pod["metadata"], annotations=merged))


def test_cached_pod_store_writes_through_to_the_cache():
    cache = C.MemoryCache([pod("w-a"), pod("w-b")])
    store = C.CachedPodStore(FakeKube([pod("w-a"), pod("w-b")], missing=["w-b"]), cache, "ns")
    store.put("w-a", {"phase": "draining", "b": 1})
    assert cache.get("ns", "w-a")["metadata"]["annotations"] == {DRAIN_ANNOTATION: '{"b":1,"phase":"draining"}'}
    assert store.get("w-a") == {"phase": "draining", "b": 1} and C.drain_phase(cache.get("ns", "w-a")) == "draining"
    store.delete("w-a")
    assert store.get("w-a") is None and cache.get("ns", "w-a")["metadata"]["annotations"] == {}
    # gone from the API server (404) or from the cache: WorkerGone on put, nothing on delete
    for name in ("w-b", "w-c"):
        try:
            store.put(name, {"phase": "draining"})
            raise AssertionError("no WorkerGone for %s" % name)
        except C.WorkerGone:
            pass
        store.delete(name)
    assert store.exists("w-a") and not store.exists("w-c")


# --- drain records: optimistic concurrency, keyed to the pod uid; one bad pod beside healthy ones -----------


class ApiKube:
    """The Kube calls a pass makes, over pods held like the API server: resourceVersions, 409, 5xx."""

    def __init__(self, pods):
        self.pods = dict((p["metadata"]["name"], json.loads(json.dumps(p))) for p in pods)
        self.rv = 100
        self.fail_patch = {}  # pod name -> status to answer every patch with
        self.events, self.statuses, self.created, self.deleted, self.patches = [], [], [], [], []

    def _bump(self, pod):
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)

    def patch_pod_annotations(self, namespace, name, annotations, resource_version=None):
        self.patches.append((name, resource_version))
        if name in self.fail_patch:
            raise C.K.ApiException(status=self.fail_patch[name])
        pod = self.pods.get(name)
        if pod is None:
            raise C.K.ApiException(status=404)
        if resource_version and resource_version != pod["metadata"]["resourceVersion"]:
            raise C.K.ApiException(status=409)
        merged = dict(pod["metadata"].get("annotations") or {})
        merged.update(annotations)
        pod["metadata"]["annotations"] = dict((k, v) for k, v in merged.items() if v is not None)
        self._bump(pod)
        return json.loads(json.dumps(pod))

    def read_pod(self, namespace, name):
        pod = self.pods.get(name)
        return json.loads(json.dumps(pod)) if pod else None

    def event(self, obj, reason, message, type_="Normal"):
        self.events.append((reason, message, type_))

    def patch_status(self, plural, namespace, name, status):
        self.statuses.append(status)

        class Answer:
            data = json.dumps({"metadata": {"name": name, "namespace": namespace, "uid": "ew-1"}, "status": status})
        return Answer()

    def create_pod(self, manifest):
        self.created.append(manifest["metadata"]["name"])

    def delete_pod(self, namespace, name, uid=None, grace_seconds=None):
        self.deleted.append(name)
        return True


class FakeCelery:
    """Celery workers that answer: all idle, consuming 'default'."""

    def __init__(self):
        self.cancelled, self.added = [], []

    def workload(self, hosts):
        return dict((h, WorkerLoad()) for h in hosts)

    def concurrency(self, hosts):
        return dict((h, 4) for h in hosts)

    def queue_length(self, queues):
        return 8

    def ping(self, hosts):
        return dict((h, True) for h in hosts)

    def queues(self, host):
        from elastic.celery_control import QueueRef
        return [] if host in self.cancelled else [QueueRef("default", "default", "direct", "default")]

    def cancel_consumer(self, host, queues):
        self.cancelled.append(host)

    def add_consumer(self, host, queues):
        self.added.append(host)
        if host in self.cancelled:
            self.cancelled.remove(host)


def ew(replicas):
    return {"apiVersion": R.API_VERSION, "kind": R.EW_KIND,
            "metadata": {"name": "w", "namespace": "ns", "uid": "ew-1", "generation": 1},
            "spec": {"replicas": replicas, "minReplicas": 0, "maxReplicas": 10,
                     "template": {"spec": {"containers": [{"name": "worker", "image": "x"}]}},
                     "drain": {"brokerSecretRef": {"name": "broker"}, "timeoutSeconds": 600}}}


def owned(name, rv="1", uid=None, record=None):
    meta = {"name": name, "namespace": "ns", "uid": uid or "u-" + name, "resourceVersion": rv,
            "creationTimestamp": "2024-01-01T00:00:%02dZ" % (len(name) % 60),
            "labels": {R.OWNER_LABEL: "w"}, "ownerReferences": [{"uid": "ew-1", "controller": True}],
            "annotations": {R.TEMPLATE_HASH_ANNOTATION: R.template_hash(ew(1)["spec"]["template"])}}
    if record is not None:
        meta["annotations"][DRAIN_ANNOTATION] = record if isinstance(record, str) else json.dumps(record)
    return {"metadata": meta, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def reconciler(kube, pods, celery, now=None):
    rec = C.Reconciler(kube, {"pods": C.MemoryCache(pods), "elasticworkers": C.MemoryCache([ew(len(pods))]),
                              "elasticworkerautoscalers": C.MemoryCache([])},
                       clock=lambda: 1000.0, monotonic=(now or (lambda: 0.0)))
    rec.control_for = lambda ns, ref, result_backend_ref=None: celery
    return rec


def test_a_409_on_a_drain_record_reads_the_pod_again_and_steps_again():
    fresh = owned("w-a", rv="1")
    kube = ApiKube([fresh])
    kube._bump(kube.pods["w-a"])  # the kubelet updated the pod since the cache saw it: the cache is stale
    cache = C.MemoryCache([fresh])
    store = C.CachedPodStore(kube, cache, "ns", uids={"w-a": "u-w-a"})
    drain = C.Drain(FakeCelery(), store, "w-a", hostname="celery@w-a", timeout=60, settle_polls=1,
                    clock=lambda: 1000.0)
    status = drain.step()
    assert kube.patches[0] == ("w-a", "1")  # sent the cached resourceVersion: refused with 409
    assert kube.patches[1][1] == "101"  # read the pod again and stepped again with its version
    assert status.phase == "drained" and not status.error
    record = json.loads(kube.pods["w-a"]["metadata"]["annotations"][DRAIN_ANNOTATION])
    assert record["phase"] == "drained" and record["uid"] == "u-w-a"
    assert cache.get("ns", "w-a")["metadata"]["resourceVersion"] == kube.pods["w-a"]["metadata"]["resourceVersion"]


def test_a_pod_replaced_mid_drain_is_gone_not_restored():
    celery = FakeCelery()
    celery.workload = lambda hosts: dict((h, WorkerLoad(active=("t1",))) for h in hosts)  # busy
    kube = ApiKube([owned("w-a")])
    cache = C.MemoryCache([owned("w-a")])
    store = C.CachedPodStore(kube, cache, "ns", uids={"w-a": "u-w-a"})
    drain = C.Drain(celery, store, "w-a", hostname="celery@w-a", timeout=60, clock=lambda: 1000.0)
    assert drain.step().phase == "draining"
    # the pod is deleted and a new pod of the same name (another uid, no record) takes its place
    cache.update(owned("w-a", rv="500", uid="u-w-a-2"))
    status = drain.step()
    assert status.phase == "gone", status
    assert celery.added == []  # nothing restored on the new pod


def test_a_pod_with_a_corrupt_record_does_not_stop_the_pass():
    pods = [owned("w-a"), owned("w-b", record="{not json"), owned("w-c")]
    kube = ApiKube(pods)
    now = [0.0]
    rec = reconciler(kube, pods, FakeCelery(), now=lambda: now[0])
    rec.caches["elasticworkers"] = C.MemoryCache([ew(4)])  # scale out by one beside the bad pod
    report = rec.reconcile_elastic_worker(ew(4))
    assert len(kube.created) == 1  # the pass went on
    # scaling out, the pass first tries to give w-b its consumers back: that fails on the record
    assert list(report["failures"]) == ["rollback of w-b"] and report["requeue_after"] == 1.0
    degraded = [c for c in kube.statuses[-1]["conditions"] if c["type"] == "Degraded"]
    assert degraded[0]["status"] == "True" and "w-b" in degraded[0]["message"]
    assert any(r == "ReconcileError" and t == "Warning" and "w-b" in m for r, m, t in kube.events)
    assert "w-b" not in kube.deleted  # an unreadable record is never taken for 'drained'
    # backs off per object: not retried before its delay, then retried with the next (doubled) delay
    kube.events.clear()
    rec.reconcile_elastic_worker(ew(4))
    assert not kube.events
    now[0] = 1.5
    report = rec.reconcile_elastic_worker(ew(4))
    assert report["requeue_after"] == 2.0 and len(kube.events) == 1


def test_a_5xx_on_one_pods_record_patch_does_not_stop_the_others():
    draining = {"version": 1, "phase": "draining", "hostname": "celery@w-a", "queues": [], "started": 990.0,
                "deadline": 2000.0, "tasks": []}
    pods = [owned("w-a", record=draining), owned("w-b", record=dict(draining, hostname="celery@w-b"))]
    kube = ApiKube(pods)
    kube.fail_patch["w-a"] = 500
    rec = reconciler(kube, pods, FakeCelery())
    report = rec.reconcile_elastic_worker(ew(0))
    report = rec.reconcile_elastic_worker(ew(0))  # settle: idle on two polls
    assert report["drains"]["w-b"] == "drained" and "drain of w-a" in report["failures"]
    assert json.loads(kube.pods["w-b"]["metadata"]["annotations"][DRAIN_ANNOTATION])["phase"] == "drained"


def test_a_pass_comes_back_sooner_while_an_idle_workers_drain_settles():
    pods = [owned("w-a"), owned("w-b")]
    rec = reconciler(ApiKube(pods), pods, FakeCelery())
    report = rec.reconcile_elastic_worker(ew(1))  # scale in by one: the drain starts and sees it idle once
    assert list(report["drains"].values()) == ["draining"]
    assert report["requeue_after"] == pytest.approx(0.1)  # Drain.settle_interval, not DRAIN_POLL_SECONDS
    report = rec.reconcile_elastic_worker(ew(1))
    assert list(report["drains"].values()) == ["drained"]


def test_a_pass_comes_back_after_the_drain_poll_while_the_worker_is_busy():
    celery = FakeCelery()
    celery.workload = lambda hosts: dict((h, WorkerLoad(active=("t1",))) for h in hosts)
    draining = {"version": 1, "phase": "draining", "hostname": "celery@w-a", "queues": [], "started": 990.0,
                "deadline": 2000.0, "tasks": []}
    pods = [owned("w-a", record=draining), owned("w-b")]
    report = reconciler(ApiKube(pods), pods, celery).reconcile_elastic_worker(ew(1))
    assert report["drains"] == {"w-a": "draining"}
    assert report["requeue_after"] == C.DRAIN_POLL_SECONDS


def test_the_load_counts_the_wanted_workers_that_do_not_answer_yet():
    starting = owned("w-b")
    starting["status"] = {"phase": "Pending"}
    pods = [owned("w-a"), starting]
    rec = reconciler(FakeKube(pods), pods, FakeCelery())
    ewa = {"metadata": {"name": "w", "namespace": "ns"}, "spec": {"metric": {"type": "celery"}}}
    # 8 queued over w-a's 4 slots, w-b (Pending) and a third not created yet, of w-a's size: 8 / 12
    assert rec.measure(ewa, ew(3), pods) == pytest.approx(800 / 12)
    assert rec.measure(ewa, ew(1), pods) == pytest.approx(200.0)  # w-b is more than wanted: not counted


def test_control_for_reads_the_result_backend_secret_of_the_elastic_worker(caplog):
    """spec.drain.resultBackendSecretRef gives the CeleryControl its witness (key result-backend-url by default);
    a Secret that cannot be read leaves the broker working alone, and is read again a minute later."""
    secrets = {("ns", "broker", "url"): "redis://:pw@broker:6379/0",
               ("ns", "db", "result-backend-url"): "db+postgresql://airflow:pw@db/airflow",
               ("ns", "db", "other"): "redis://:pw@results:6379/1"}

    class Kube:
        def read_secret_key(self, ns, name, key):
            return secrets[(ns, name, key)]

    now = [0.0]
    rec = C.Reconciler(Kube(), {"pods": C.MemoryCache([]), "elasticworkers": C.MemoryCache([]),
                                "elasticworkerautoscalers": C.MemoryCache([])}, monotonic=lambda: now[0])
    assert rec.control_for("ns", {"name": "broker"}).results is None
    witnessed = rec.control_for("ns", {"name": "broker"}, {"name": "db"})
    assert witnessed.results.url == "db+postgresql://airflow:pw@db/airflow"
    assert rec.control_for("ns", {"name": "broker"}, {"name": "db", "key": "other"}).results.url == \
        "redis://:pw@results:6379/1"
    assert rec.control_for("ns", {"name": "broker"}, {"name": "db"}) is witnessed
    with caplog.at_level("WARNING", logger="elastic_worker"):
        alone = rec.control_for("ns", {"name": "broker"}, {"name": "missing"})
    assert alone.results is None and "cannot read the result backend Secret missing" in caplog.text
    secrets[("ns", "missing", "result-backend-url")] = "redis://:pw@results:6379/2"
    now[0] = 59.0
    assert rec.control_for("ns", {"name": "broker"}, {"name": "missing"}) is alone
    now[0] = 60.0
    assert rec.control_for("ns", {"name": "broker"}, {"name": "missing"}).results.url == "redis://:pw@results:6379/2"
    rec.close()


def test_a_pass_and_the_autoscaler_ask_celery_with_the_result_backend_of_the_elastic_worker():
    """observe() and measure() pass spec.drain.resultBackendSecretRef along with the broker's."""
    worker = ew(1)
    worker["spec"]["drain"] = {"brokerSecretRef": {"name": "b"}, "resultBackendSecretRef": {"name": "db"}}
    pods = [owned("w-a")]
    rec = reconciler(FakeKube(pods), pods, FakeCelery())
    asked = []
    rec.control_for = lambda ns, ref, result_backend_ref=None: asked.append((ref, result_backend_ref)) or FakeCelery()
    rec.observe(worker)
    autoscaler = {"metadata": {"namespace": "ns", "name": "w"},
                  "spec": {"metric": {"type": "celery", "celery": {"brokerSecretRef": {"name": "other"}}}}}
    assert rec.measure(autoscaler, worker, rec.pods_of(worker)) is not None
    assert asked == [({"name": "b"}, {"name": "db"}), ({"name": "other"}, {"name": "db"})]


def test_a_finished_task_still_listed_is_warned_about_once_after_a_minute(caplog):
    """Just-ended tasks race with the worker's bookkeeping (no warning); one listed a minute later is stale."""
    now = [0.0]
    rec = C.Reconciler(None, {"pods": C.MemoryCache([]), "elasticworkers": C.MemoryCache([]),
                              "elasticworkerautoscalers": C.MemoryCache([])}, monotonic=lambda: now[0])
    with caplog.at_level("INFO", logger="elastic_worker"):
        rec._note_finished("celery@w-0", ("racing", "stale"))
        now[0] = 30.0
        rec._note_finished("celery@w-0", ("stale",))  # "racing" is gone from the worker's list
        now[0] = 59.0
        rec._note_finished("celery@w-0", ("stale",))
        assert [r.levelname for r in caplog.records] == ["INFO", "INFO"]  # each found once, no warning yet
        now[0] = 60.0
        rec._note_finished("celery@w-0", ("stale",))
        now[0] = 300.0
        rec._note_finished("celery@w-0", ("stale",))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "still lists task stale as active 60 s after" in warnings[0]
    rec._note_finished("celery@w-0", ())
    assert rec._finished_since == {}


def test_a_pass_asks_the_workers_once_for_an_autoscaler_and_its_elastic_worker():
    """The autoscaler's measurement and the ElasticWorker's observation share one answer per pass;
    the next pass asks again (a drain always asks afresh: drain.py)."""
    pods = [owned("w-a")]
    kube = ApiKube(pods)
    rec = reconciler(kube, pods, None)
    asked = []

    class CountingCelery(FakeCelery):
        def workload(self, hosts):
            asked.append(sorted(hosts))
            return super().workload(hosts)

        def queue_length(self, queues):
            return 0

    celery = CountingCelery()
    rec.control_for = lambda ns, ref, result_backend_ref=None: C.FencedControl(celery, lambda: True)
    autoscaler = {"metadata": {"name": "w", "namespace": "ns", "uid": "ewa-1", "generation": 1},
                  "spec": {"scaleTargetRef": {"name": "w"}, "minReplicas": 1, "maxReplicas": 3,
                           "metric": {"type": "celery"}}}
    for n in (1, 2):
        # ApiKube answers a status patch without the spec: the cache gets the objects again
        rec.caches.update(elasticworkers=C.MemoryCache([ew(1)]), elasticworkerautoscalers=C.MemoryCache([autoscaler]))
        reports = rec.reconcile_all(force_autoscalers=True)
        assert [r.get("error") for r in reports] == [None, None]
        assert asked == [["celery@w-a"]] * n
    rec.observe(ew(1))  # outside a pass (elastic_worker_info): asked every time
    assert len(asked) == 3 and rec._pass_loads is None


def test_a_failed_ask_is_not_shared_within_a_pass():
    """A Celery error gives that caller None (as before) and the next caller of the pass asks again."""
    pods = [owned("w-a")]
    rec = reconciler(FakeKube(pods), pods, None)
    answers = [C.CeleryControlError("no reply"), None]

    class FlakyCelery(FakeCelery):
        def workload(self, hosts):
            answer = answers.pop(0)
            if answer is not None:
                raise answer
            return super().workload(hosts)

    celery = FlakyCelery()
    rec._pass_loads = {}  # as during reconcile_all
    assert rec.worker_states(celery, pods) is None
    assert rec.worker_states(celery, pods) == {"w-a": {"alive": True, "active": 0, "reserved": 0,
                                                       "concurrency": None}}
    assert answers == []
