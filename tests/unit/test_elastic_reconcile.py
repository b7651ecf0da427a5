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


CURRENT = r.template_hash(ew()["spec"]["template"])  # every ew() has the same template


def pod(name, phase="Running", ready=True, created="2024-01-01T00:00:00Z", labels=None,
        uid="u-1", deleting=False, template=CURRENT):
    meta = {"name": name, "creationTimestamp": created, "labels": labels or {"app": "w"},
            "ownerReferences": [{"uid": uid, "controller": True}]}
    if template:
        meta["annotations"] = {r.TEMPLATE_HASH_ANNOTATION: template}
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


def test_drain_in_progress_is_not_doubled_and_is_stepped():
    pods = [pod("w-a"), pod("w-b")]
    p = plan(ew(1), pods, {"w-a": IDLE, "w-b": IDLE}, {"w-b": r.DRAIN_ACTIVE})
    assert not p.changed
    assert p.status["draining"] == 1
    assert p.step_drain == ["w-b"] and not p.drain


def test_a_drain_rolled_back_is_not_also_stepped():
    pods = [pod("w-a"), pod("w-b")]
    p = plan(ew(3), pods, {"w-a": IDLE, "w-b": IDLE}, {"w-b": r.DRAIN_ACTIVE})
    assert p.cancel_drain == ["w-b"] and p.step_drain == []


def test_scale_out_rolls_back_drains_before_creating():
    pods = [pod("w-a"), pod("w-b")]
    p = plan(ew(3), pods, {"w-a": IDLE, "w-b": IDLE}, {"w-b": r.DRAIN_ACTIVE})
    assert p.cancel_drain == ["w-b"] and len(p.create) == 1


def test_immediate_deletes_without_drain_idle_first():
    pods = [pod("w-a", created="1"), pod("w-b", created="2")]
    p = plan(ew(1, policy={"type": "Immediate"}), pods, {"w-a": IDLE, "w-b": BUSY})
    assert [n for n, _unused in p.delete] == ["w-a"] and not p.drain


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


def test_label_selector_to_string_and_match():
    sel = {"matchLabels": {"b": "2", "a": "1"},
           "matchExpressions": [{"key": "c", "operator": "In", "values": ["y", "x"]},
                                {"key": "d", "operator": "DoesNotExist"}]}
    assert r.label_selector_to_string(sel) == "a=1,b=2,c in (x,y),!d"
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


def test_a_draining_worker_has_no_slot_and_an_unknown_size_is_the_default():
    workers = {"a": {"active": 1, "reserved": 0, "concurrency": 0}, "b": {"active": 1, "concurrency": None}}
    assert r.celery_load(workers, queued=0, concurrency_default=2) == pytest.approx(100.0)  # 2 held / b's 2 slots
    assert r.celery_load({"a": {"active": 1, "concurrency": 0}}, queued=1) is None


def test_workers_still_starting_count_as_empty_slots_of_their_peers_size():
    live = {"a": {"active": 2, "reserved": 0, "concurrency": 2}}
    # 2 running + 6 queued over a's 2 slots and two starting workers of 2: 8 / 6
    assert r.celery_load(live, queued=6, starting=2) == pytest.approx(800 / 6)
    assert r.celery_load({}, queued=3, concurrency_default=2, starting=1) == pytest.approx(150.0)


def _burst_peak(tasks, concurrency=2, startup=30, poll=5, spec=None):
    """Poll the autoscaler every ``poll`` s over a burst of ``tasks`` long tasks,
    one worker answering at the start and each new worker answering ``startup``
    s after it was asked for: the largest replica count it asks for."""
    spec = spec or SPEC
    ready_at = [0.0]  # one per wanted replica
    status, peak = {}, 1
    for step in range(40):
        now = step * poll
        answering = sum(1 for t in ready_at if t <= now)
        running = min(tasks, answering * concurrency)
        # the running tasks fill the answering workers in order; the last ones may hold none
        workers = dict(("w%d" % i, {"active": max(0, min(concurrency, running - i * concurrency)),
                                    "concurrency": concurrency})
                       for i in range(answering))
        load = r.celery_load(workers, queued=tasks - running, concurrency_default=concurrency,
                             starting=len(ready_at) - answering)
        desired, status, _unused = r.autoscale(spec, status, len(ready_at), load, now)
        ready_at += [now + startup] * max(0, desired - len(ready_at))
        peak = max(peak, desired)
    return peak


@pytest.mark.parametrize("tasks", [3, 5, 8, 13])
def test_a_burst_asks_for_the_workers_it_needs_not_more_while_they_start(tasks):
    # ceil(tasks / (2 slots x 80 %)), capped at max 10: what a fleet that starts at once would get
    assert _burst_peak(tasks) == min(10, -(-tasks * 100 // (2 * 80)))


@pytest.mark.parametrize("current,load,expected", [(2, 160, 4), (2, 100, 3), (4, 1000, 10), (1, 81, 2)])
def test_scale_out_formula_within_max(current, load, expected):
    desired, fields, _unused = r.autoscale(SPEC, {}, current, load, now=0)
    assert desired == expected and fields["lowLoadSince"] is None


def test_scale_in_only_after_backoff():
    desired, fields, _unused = r.autoscale(SPEC, {}, 4, 10, now=100)
    assert desired == 4 and fields["lowLoadSince"] == 100
    desired, fields, _unused = r.autoscale(SPEC, fields, 4, 10, now=129)
    assert desired == 4
    desired, fields, reason = r.autoscale(SPEC, fields, 4, 10, now=130)
    assert desired == 1 and "30s" in reason  # ceil(4 * 10 / 80) = 1
    assert fields["lowLoadSince"] == 130  # the next step waits a whole back-off again


def test_load_rise_resets_backoff():
    _unused, fields, _unused = r.autoscale(SPEC, {}, 4, 10, now=0)
    _unused, fields, _unused = r.autoscale(SPEC, fields, 4, 20, now=25)  # rose, still low
    assert fields["lowLoadSince"] == 25
    desired, fields, _unused = r.autoscale(SPEC, fields, 4, 20, now=40)
    assert desired == 4
    desired, _unused, _unused = r.autoscale(SPEC, fields, 4, 20, now=55)
    assert desired == 1


def test_load_in_band_clears_backoff_and_keeps_replicas():
    _unused, fields, _unused = r.autoscale(SPEC, {}, 4, 10, now=0)
    desired, fields, _unused = r.autoscale(SPEC, fields, 4, 70, now=10)  # 70 >= 0.7 * 80
    assert desired == 4 and fields["lowLoadSince"] is None


def test_threshold_is_configurable_and_min_holds():
    spec = dict(SPEC, scaleInThreshold=0.5, minReplicas=2)
    desired, fields, _unused = r.autoscale(spec, {}, 4, 45, now=0)  # 45 >= 40: in band
    assert fields["lowLoadSince"] is None
    _unused, fields, _unused = r.autoscale(spec, {}, 4, 0, now=0)
    desired, _unused, _unused = r.autoscale(spec, fields, 4, 0, now=31)
    assert desired == 2


def test_unmeasurable_load_keeps_replicas_and_inf_goes_to_max():
    assert r.autoscale(SPEC, {}, 3, None, now=0)[0] == 3
    assert r.autoscale(SPEC, {}, 0, float("inf"), now=0)[0] == 10


def test_target_bounds_intersect():
    desired, _unused, _unused = r.autoscale(SPEC, {}, 2, 800, now=0, target_bounds=(2, 6))
    assert desired == 6
    assert r.autoscale(SPEC, {}, 1, 0, now=0, target_bounds=(2, 6))[0] == 2


# ---------------------------------------------------------------- rolling update


OLD = "0ld0ld0ld0"


def cond(p, type_):
    return [c for c in p.status["conditions"] if c["type"] == type_][0]


def test_template_hash_is_stable_and_follows_the_template():
    e = ew(1)
    t = e["spec"]["template"]
    assert r.template_hash(t) == r.template_hash(dict(reversed(list(t.items()))))
    changed = {"metadata": dict(t["metadata"], annotations={"checksum/airflow-env": "abc"}), "spec": t["spec"]}
    assert r.template_hash(changed) != r.template_hash(t)
    manifest = r.build_pod(e, "w-abcde")
    assert manifest["metadata"]["annotations"][r.TEMPLATE_HASH_ANNOTATION] == r.template_hash(t) == CURRENT
    # the stamp is the controller's, not part of the template it hashes
    assert r.TEMPLATE_HASH_ANNOTATION not in (t["metadata"].get("annotations") or {})


def test_outdated_pods_get_one_surge_pod_first():
    pods = [pod("w-a", template=OLD), pod("w-b", template=OLD)]
    p = plan(ew(2), pods, {"w-a": IDLE, "w-b": IDLE})
    assert len(p.create) == 1 and not p.drain and not p.delete
    assert "surge pod" in p.rollout[0]
    up = cond(p, "UpToDate")
    assert up["status"] == "False" and up["reason"] == "RollingUpdate"
    assert p.status["updatedReplicas"] == 0 and p.status["templateHash"] == CURRENT
    assert cond(p, "ScaleInBlocked")["status"] == "False"


def test_unstamped_pods_are_outdated():
    p = plan(ew(1), [pod("w-a", template=None)], {"w-a": IDLE})
    assert len(p.create) == 1


def test_rollout_waits_until_the_surge_pod_is_ready():
    pods = [pod("w-a", template=OLD), pod("w-b", template=OLD), pod("w-new", phase="Pending", ready=False)]
    p = plan(ew(2), pods, {"w-a": IDLE, "w-b": IDLE})
    assert not p.changed and "w-new to be Ready" in p.rollout[0]


def test_rollout_drains_one_outdated_worker_idle_first():
    pods = [pod("w-a", template=OLD, created="1"), pod("w-b", template=OLD, created="2"), pod("w-new", created="3")]
    p = plan(ew(2), pods, {"w-a": BUSY, "w-b": IDLE, "w-new": IDLE})
    assert p.drain == ["w-b"] and not p.delete and not p.create


def test_rollout_drains_busy_workers_and_never_deletes_them():
    pods = [pod("w-a", template=OLD, created="1"), pod("w-b", template=OLD, created="2"), pod("w-new", created="3")]
    for policy in (None, {"type": "Immediate"}, {"type": "Disabled"}):
        p = plan(ew(2, policy=policy), pods, {"w-a": BUSY, "w-b": BUSY, "w-new": IDLE})
        assert p.drain == ["w-a"] and not p.delete and not p.create  # the oldest, through a drain


def test_rollout_is_one_at_a_time():
    # w-a is being drained: no second surge pod, no second drain
    pods = [pod("w-a", template=OLD), pod("w-b", template=OLD), pod("w-new")]
    p = plan(ew(2), pods, {"w-a": BUSY, "w-b": IDLE, "w-new": IDLE}, {"w-a": r.DRAIN_ACTIVE})
    assert not p.changed and "waits for the drain of w-a" in p.rollout[0]


def test_rollout_replaces_drained_pod_and_continues():
    pods = [pod("w-a", template=OLD), pod("w-b", template=OLD), pod("w-new")]
    p = plan(ew(2), pods, {"w-b": IDLE, "w-new": IDLE}, {"w-a": r.DRAIN_DONE})
    assert p.delete == [("w-a", "drained")]
    assert len(p.create) == 1 and not p.drain  # next surge pod for w-b


def test_rollout_waits_when_celery_cannot_be_asked_or_workers_do_not_answer():
    pods = [pod("w-a", template=OLD), pod("w-b", template=OLD)]
    p = r.plan_elastic_worker(ew(2), pods, None, {})
    assert not p.changed and "could not be asked" in p.rollout[0]
    pods.append(pod("w-new"))
    p = plan(ew(2), pods, {"w-new": IDLE})
    assert not p.changed and "do not answer" in p.rollout[0]


def test_outdated_pods_that_never_started_are_replaced_at_once():
    pods = [pod("w-a"), pod("w-p", phase="Pending", ready=False, template=OLD)]
    p = plan(ew(2), pods, {"w-a": IDLE})
    assert p.delete == [("w-p", "outdated pod that never started")] and len(p.create) == 1 and not p.drain


def test_scale_in_prefers_outdated_idle_workers():
    pods = [pod("w-a", template=OLD, created="1"), pod("w-b", created="2"), pod("w-c", created="3"),
            pod("w-d", template=OLD, created="4")]
    p = plan(ew(1), pods, {n: IDLE for n in ("w-a", "w-b", "w-c", "w-d")})
    assert p.drain == ["w-d", "w-a", "w-c"]


def test_up_to_date_when_every_pod_has_the_current_template():
    p = plan(ew(2), [pod("w-a"), pod("w-b")], {"w-a": IDLE, "w-b": IDLE})
    up = cond(p, "UpToDate")
    assert up["status"] == "True" and p.status["updatedReplicas"] == 2


def _simulate(desired, n_old, busy_for, policy=None, max_passes=200):
    """Run plan_elastic_worker pass after pass on a little simulated world.

    A new pod is Pending for one pass, then Running and Ready. A drain takes
    effect the pass after it starts, and is done once the worker has no task
    and a pass stepped it (``plan.step_drain``).
    busy_for: {pod name: passes it stays busy}. Returns the history.
    """
    rng = random.Random(3)
    e = ew(desired, high=max(desired, 1), policy=policy)
    world = {}  # name -> dict(pod=..., age=passes, busy=passes left, drain=None|active|done)
    for i in range(n_old):
        name = "w-old%d" % i
        world[name] = {"pod": pod(name, template=OLD, created="0-%d" % i), "busy": busy_for.get(name, 0),
                       "drain": None}
    clock = [0]
    history = []
    for _i in range(max_passes):
        clock[0] += 1
        workers = {n: (BUSY if w["busy"] > 0 else IDLE) for n, w in world.items()
                   if w["pod"]["status"]["phase"] == "Running"}
        drains = {n: w["drain"] for n, w in world.items() if w["drain"]}
        p = r.plan_elastic_worker(e, [w["pod"] for w in world.values()], workers, drains, rng=rng)
        busy_now = {n for n, s in workers.items() if s is BUSY}
        for name, _reason in p.delete:
            assert name not in busy_now, "deleted busy worker %s" % name
            del world[name]
        for name in p.drain:
            assert world[name]["drain"] is None
            world[name]["drain"] = r.DRAIN_ACTIVE
        for name in p.step_drain:  # only a drain the plan steps can finish
            assert world[name]["drain"] == r.DRAIN_ACTIVE and name not in p.drain + p.cancel_drain
            world[name]["stepped"] = True
        for name in p.create:
            manifest = r.build_pod(e, name)
            world[name] = {"pod": {"metadata": dict(manifest["metadata"], creationTimestamp="%06d" % clock[0]),
                                   "status": {"phase": "Pending", "conditions": []}}, "busy": 0, "drain": None}
        # time passes: pods start, tasks finish, drains complete
        for name, w in world.items():
            if name in p.create:
                continue
            w["pod"]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            w["busy"] = max(0, w["busy"] - 1)
            if w["drain"] == r.DRAIN_ACTIVE and w.pop("stepped", False) and w["busy"] == 0:
                w["drain"] = r.DRAIN_DONE
        serving_ready = [n for n, w in world.items() if not w["drain"]
                         and w["pod"]["status"]["phase"] == "Running"]
        history.append({"pods": len(world), "serving_ready": len(serving_ready), "plan": p,
                        "outdated": sum(1 for w in world.values() if r.pod_outdated(w["pod"], CURRENT))})
        if history[-1]["outdated"] == 0 and not p.changed and len(world) == desired:
            return history
    raise AssertionError("the rolling update did not finish: %s" % history[-1])


@pytest.mark.parametrize("policy", [None, {"type": "Immediate"}, {"type": "Disabled"}])
def test_rolling_update_end_to_end_keeps_capacity_and_never_kills_busy_workers(policy):
    history = _simulate(3, 3, {"w-old0": 5, "w-old2": 12}, policy=policy)
    assert max(h["pods"] for h in history) <= 3 + 1  # at most one surge pod at a time
    # never fewer consuming, Running workers than desired (maxUnavailable 0)
    assert min(h["serving_ready"] for h in history) >= 3
    assert all(len(h["plan"].drain) <= 1 and len(h["plan"].create) <= 1 for h in history)
    assert history[-1]["outdated"] == 0 and history[-1]["pods"] == 3
