"""Unit tests of the ElasticWorker controller's pure decisions (no servers)."""
import os
import random
import sys

import pytest

# The collection root is the repository root; module_utils import each other
# through the ansible_collections package, so expose the repo under that name.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import reconcile as r  # noqa: E402


def ew(replicas=None, low=1, high=5, policy=None, name="w", uid="u-1"):
    spec = {"minReplicas": low, "maxReplicas": high, "selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w", "tier": "x"}},
                         "spec": {"containers": [{"name": "worker", "image": "airflow"}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    if policy:
        spec["scaleInPolicy"] = policy
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 3}, "spec": spec}


def pod(name, phase="Running", ready=True, created="2024-01-01T00:00:00Z", labels=None,
        uid="u-1", deleting=False):
    meta = {"name": name, "creationTimestamp": created, "labels": labels or {"app": "w"},
            "ownerReferences": [{"uid": uid, "controller": True}]}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:05:00Z"
    return {"metadata": meta, "status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


IDLE = {"active": 0, "reserved": 0, "alive": True}
BUSY = {"active": 1, "reserved": 0, "alive": True}


def plan(e, pods, workers=None, drains=None):
    return r.plan_elastic_worker(e, pods, workers if workers is not None else {}, drains or {},
                                 rng=random.Random(7))


# ---------------------------------------------------------------- bounds


@pytest.mark.parametrize("replicas,expected", [(None, 2), (1, 2), (3, 3), (9, 4)])
def test_desired_is_replicas_within_bounds(replicas, expected):
    assert r.desired_replicas(ew(replicas, low=2, high=4)) == expected


def test_creates_min_replicas_from_nothing():
    p = plan(ew(None, low=2), [])
    assert len(p.create) == 2 and len(set(p.create)) == 2
    for name in p.create:
        assert name.startswith("w-") and len(name) == len("w-") + 5
    assert p.status["replicas"] == 0 and p.status["desiredReplicas"] == 2


def test_new_names_avoid_existing_ones():
    rng = random.Random(1)
    first = r.new_pod_name("w", set(), random.Random(1))
    assert r.new_pod_name("w", {first}, rng) != first


def test_replaces_failed_and_ignores_terminating_pods():
    pods = [pod("w-a"), pod("w-b", phase="Failed"), pod("w-c", deleting=True)]
    p = plan(ew(3), pods, {"w-a": IDLE})
    assert ("w-b", "pod failed") in p.delete
    assert len(p.create) == 2
    assert p.status["replicas"] == 1


def test_pods_of_other_owners_are_not_ours():
    e = ew(2)
    mine, other = pod("w-a"), pod("w-z", uid="u-2")
    assert r.owned_pods(e, [mine, other]) == [mine]


def test_steady_state_changes_nothing_and_is_ready():
    pods = [pod("w-a"), pod("w-b")]
    p = plan(ew(2), pods, {"w-a": IDLE, "w-b": BUSY})
    assert not p.changed
    assert p.status["busy"] == 1 and p.status["idle"] == 1
    ready = [c for c in p.status["conditions"] if c["type"] == "Ready"][0]
    assert ready["status"] == "True"


# ---------------------------------------------------------------- scale-in


def test_idle_only_drains_only_idle_workers_newest_first():
    pods = [pod("w-old", created="2024-01-01T00:00:00Z"), pod("w-mid", created="2024-01-02T00:00:00Z"),
            pod("w-new", created="2024-01-03T00:00:00Z"), pod("w-busy", created="2024-01-04T00:00:00Z")]
    workers = {"w-old": IDLE, "w-mid": IDLE, "w-new": IDLE, "w-busy": BUSY}
    p = plan(ew(2), pods, workers)
    assert p.drain == ["w-new", "w-mid"]
    assert not p.delete and not p.create


def test_idle_only_never_touches_busy_workers():
    pods = [pod("w-a"), pod("w-b"), pod("w-c")]
    p = plan(ew(1), pods, {"w-a": BUSY, "w-b": BUSY, "w-c": IDLE})
    assert p.drain == ["w-c"]
    assert "only 1 eligible" in p.messages[0]
    blocked = [c for c in p.status["conditions"] if c["type"] == "ScaleInBlocked"][0]
    assert blocked["status"] == "True"


def test_idle_only_waits_when_celery_cannot_be_asked():
    p = r.plan_elastic_worker(ew(1), [pod("w-a"), pod("w-b")], None, {})
    assert not p.changed and "could not be asked" in p.messages[0]


def test_unknown_worker_is_not_idle():
    p = plan(ew(1), [pod("w-a"), pod("w-b")], {"w-a": IDLE})
    assert p.drain == ["w-a"]


def test_unstarted_pending_pods_go_first_without_drain():
    pods = [pod("w-a"), pod("w-p", phase="Pending", ready=False)]
    p = plan(ew(1), pods, {"w-a": IDLE})
    assert p.delete == [("w-p", "scale-in of a pod that never started")] and not p.drain


def test_drained_pods_are_deleted_and_not_counted():
    pods = [pod("w-a"), pod("w-b")]
    p = plan(ew(1), pods, {"w-a": IDLE, "w-b": IDLE}, {"w-b": r.DRAIN_DONE})
    assert p.delete == [("w-b", "drained")] and not p.drain and not p.create


def test_drain_in_progress_is_not_doubled():
    pods = [pod("w-a"), pod("w-b")]
    p = plan(ew(1), pods, {"w-a": IDLE, "w-b": IDLE}, {"w-b": r.DRAIN_ACTIVE})
    assert not p.changed
    assert p.status["draining"] == 1


def test_scale_out_rolls_back_drains_before_creating():
    pods = [pod("w-a"), pod("w-b")]
    p = plan(ew(3), pods, {"w-a": IDLE, "w-b": IDLE}, {"w-b": r.DRAIN_ACTIVE})
    assert p.cancel_drain == ["w-b"] and len(p.create) == 1


def test_immediate_deletes_without_drain_idle_first():
    pods = [pod("w-a", created="1"), pod("w-b", created="2")]
    p = plan(ew(1, policy={"type": "Immediate"}), pods, {"w-a": IDLE, "w-b": BUSY})
    assert [n for n, _ in p.delete] == ["w-a"] and not p.drain


def test_disabled_never_scales_in():
    p = plan(ew(1, policy={"type": "Disabled"}), [pod("w-a"), pod("w-b")], {"w-a": IDLE, "w-b": IDLE})
    assert not p.changed and "disabled" in p.messages[0]


def test_by_selector_drains_only_selected_pods():
    pods = [pod("w-a", labels={"app": "w", "spot": "yes"}), pod("w-b"), pod("w-c", labels={"app": "w", "spot": "yes"})]
    policy = {"type": "BySelector", "selector": {"matchLabels": {"spot": "yes"}}}
    p = plan(ew(1, policy=policy), pods, {"w-a": BUSY, "w-b": IDLE, "w-c": IDLE})
    assert p.drain == ["w-c", "w-a"]


# ---------------------------------------------------------------- pod manifest + selectors


def test_build_pod_owns_and_labels():
    e = ew(1)
    manifest = r.build_pod(e, "w-abcde")
    assert manifest["metadata"]["name"] == "w-abcde"
    assert manifest["metadata"]["labels"] == {"app": "w", "tier": "x", r.OWNER_LABEL: "w"}
    ref = manifest["metadata"]["ownerReferences"][0]
    assert ref["uid"] == "u-1" and ref["controller"] and ref["kind"] == "ElasticWorker"
    assert manifest["spec"]["containers"][0]["image"] == "airflow"
    assert manifest["spec"]["hostname"] == "w-abcde"


def test_selector_string_and_match():
    sel = {"matchLabels": {"b": "2", "a": "1"},
           "matchExpressions": [{"key": "c", "operator": "In", "values": ["y", "x"]},
                                {"key": "d", "operator": "DoesNotExist"}]}
    assert r.selector_string(sel) == "a=1,b=2,c in (x,y),!d"
    assert r.selector_matches(sel, {"a": "1", "b": "2", "c": "x"})
    assert not r.selector_matches(sel, {"a": "1", "b": "2", "c": "x", "d": ""})
    assert r.selector_matches({}, {"any": "thing"})


def test_status_selector_includes_owner_label():
    p = plan(ew(1), [pod("w-a")], {"w-a": IDLE})
    assert p.status["selector"] == "app=w,%s=w" % r.OWNER_LABEL


def test_conditions_keep_transition_time():
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}]
    new = r.merge_conditions(old, [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}], "t1")
    assert new[0]["lastTransitionTime"] == "t0" and new[1]["lastTransitionTime"] == "t1"
    assert not r.status_differs({"replicas": 1, "conditions": old}, {"replicas": 1, "conditions": new[:1]})
    assert r.status_differs({"replicas": 1}, {"replicas": 2})


# ---------------------------------------------------------------- autoscaler


SPEC = {"minReplicas": 1, "maxReplicas": 10, "targetValue": 80, "scaleInBackOffSeconds": 30}


def test_load_from_celery_states():
    workers = {"a": {"active": 2, "reserved": 0, "concurrency": 4},
               "b": {"active": 0, "reserved": 1, "concurrency": 4},
               "c": {"alive": False}}
    assert r.celery_load(workers, queued=5) == pytest.approx(100.0)
    assert r.celery_load({}, 0) == 0.0
    assert r.celery_load({}, 3) is None


@pytest.mark.parametrize("current,load,expected", [(2, 160, 4), (2, 100, 3), (4, 1000, 10), (1, 81, 2)])
def test_scale_out_formula_within_max(current, load, expected):
    desired, fields, _ = r.autoscale(SPEC, {}, current, load, now=0)
    assert desired == expected and fields["lowLoadSince"] is None


def test_scale_in_only_after_backoff():
    desired, fields, _ = r.autoscale(SPEC, {}, 4, 10, now=100)
    assert desired == 4 and fields["lowLoadSince"] == 100
    desired, fields, _ = r.autoscale(SPEC, fields, 4, 10, now=129)
    assert desired == 4
    desired, fields, reason = r.autoscale(SPEC, fields, 4, 10, now=130)
    assert desired == 1 and "30s" in reason  # ceil(4 * 10 / 80) = 1
    assert fields["lowLoadSince"] == 130  # the next step waits a whole back-off again


def test_load_rise_resets_backoff():
    _, fields, _ = r.autoscale(SPEC, {}, 4, 10, now=0)
    _, fields, _ = r.autoscale(SPEC, fields, 4, 20, now=25)  # rose, still low
    assert fields["lowLoadSince"] == 25
    desired, fields, _ = r.autoscale(SPEC, fields, 4, 20, now=40)
    assert desired == 4
    desired, _, _ = r.autoscale(SPEC, fields, 4, 20, now=55)
    assert desired == 1


def test_load_in_band_clears_backoff_and_keeps_replicas():
    _, fields, _ = r.autoscale(SPEC, {}, 4, 10, now=0)
    desired, fields, _ = r.autoscale(SPEC, fields, 4, 70, now=10)  # 70 >= 0.7 * 80
    assert desired == 4 and fields["lowLoadSince"] is None


def test_threshold_is_configurable_and_min_holds():
    spec = dict(SPEC, scaleInThreshold=0.5, minReplicas=2)
    desired, fields, _ = r.autoscale(spec, {}, 4, 45, now=0)  # 45 >= 40: in band
    assert fields["lowLoadSince"] is None
    _, fields, _ = r.autoscale(spec, {}, 4, 0, now=0)
    desired, _, _ = r.autoscale(spec, fields, 4, 0, now=31)
    assert desired == 2


def test_unmeasurable_load_keeps_replicas_and_inf_goes_to_max():
    assert r.autoscale(SPEC, {}, 3, None, now=0)[0] == 3
    assert r.autoscale(SPEC, {}, 0, float("inf"), now=0)[0] == 10


def test_target_bounds_intersect():
    desired, _, _ = r.autoscale(SPEC, {}, 2, 800, now=0, target_bounds=(2, 6))
    assert desired == 6
    assert r.autoscale(SPEC, {}, 1, 0, now=0, target_bounds=(2, 6))[0] == 2
