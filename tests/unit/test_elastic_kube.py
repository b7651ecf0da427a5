"""Unit tests of the controller's cache (plugins/module_utils/elastic/kube.py): slim pods, paged LIST."""
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import controller as C  # noqa: E402
from elastic import kube as K  # noqa: E402
from elastic import reconcile as R  # noqa: E402
from elastic.k8s_store import ANNOTATION as DRAIN_ANNOTATION  # noqa: E402


def full_pod(name, rv="10"):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": "u-" + name, "resourceVersion": rv,
                     "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"app": "w", R.OWNER_LABEL: "w"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 5000,
                                     DRAIN_ANNOTATION: '{"phase":"draining"}',
                                     R.TEMPLATE_HASH_ANNOTATION: "abc"},
                     "ownerReferences": [{"apiVersion": R.API_VERSION, "kind": "ElasticWorker", "name": "w",
                                          "uid": "ew-1", "controller": True, "blockOwnerDeletion": True}],
                     "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"containers": [{"name": "worker", "image": "apache/airflow",
                                 "env": [{"name": "A", "value": "b"}] * 50}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1",
                   "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "worker", "ready": True}]},
    }


def test_slim_pod_keeps_what_the_reconcile_reads():
    pod = full_pod("w-a")
    slim = K.slim_pod(pod)
    assert set(slim) == {"metadata", "status"}
    assert slim["metadata"]["annotations"] == {DRAIN_ANNOTATION: '{"phase":"draining"}',
                                               R.TEMPLATE_HASH_ANNOTATION: "abc"}
    assert slim["status"] == {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    assert "managedFields" not in slim["metadata"]
    assert len(json.dumps(slim)) < len(json.dumps(pod)) / 10
    # every reading the controller does gives the same answer on the slim pod
    ew = {"metadata": {"name": "w", "namespace": "ns", "uid": "ew-1"}}
    for fn in (R.pod_ready, R.pod_phase, R.pod_terminating, R.pod_created, R.pod_template_hash, C.drain_phase):
        assert fn(slim) == fn(pod), fn.__name__
    assert R.is_owned_by(slim, ew) and R.is_owned_by(pod, ew)
    assert slim["metadata"]["labels"] == pod["metadata"]["labels"]


class FakeResponse:
    def __init__(self, body):
        self.data = json.dumps(body).encode()
        self.released = False

    def release_conn(self):
        self.released = True


def test_informer_lists_in_pages_and_slims():
    pods = [full_pod("w-%d" % i, rv=str(i)) for i in range(5)]
    calls = []

    def list_call(**kw):
        calls.append(kw)
        start = int(kw.get("_continue") or 0)
        page = pods[start:start + kw["limit"]]
        more = start + kw["limit"] < len(pods)
        next_page = str(start + kw["limit"]) if more else ""
        return FakeResponse({"metadata": {"resourceVersion": "99", "continue": next_page}, "items": page})

    informer = K.Informer("pods", list_call, slim=K.slim_pod, page_size=2)
    assert informer._list() == "99"
    assert [c.get("_continue") for c in calls] == [None, "2", "4"] and all(c["limit"] == 2 for c in calls)
    assert len(informer.items()) == 5 and informer.synced.is_set()
    assert "spec" not in informer.get("ns", "w-3")
    # write-through of a full object (a PATCH response) is slimmed too
    informer.update(full_pod("w-3", rv="100"))
    assert "spec" not in informer.get("ns", "w-3") and informer.get("ns", "w-3")["metadata"]["resourceVersion"] == "100"
