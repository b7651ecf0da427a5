"""Unit tests of the ElasticWorker controller's Reconciler bookkeeping (plugins/module_utils/elastic/controller.py)."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import controller as C  # noqa: E402


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

    rec.caches["pods"] = C.MemoryCache([pod("w-b")])  # w-a was deleted
    rec.reconcile_all()
    assert set(rec._concurrency) == set(rec._drains) == {"u-w-b"}

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

    def patch_pod_annotations(self, namespace, name, annotations):
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
    assert cache.get("ns", "w-a")["metadata"]["annotations"] == {C.DRAIN_ANNOTATION: '{"b":1,"phase":"draining"}'}
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
