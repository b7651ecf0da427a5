# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""The decisions of the ElasticWorker controller, as pure functions.

Nothing here does I/O: every function takes plain dicts (Kubernetes objects as
the API returns them, Celery worker states as the control client reports
them) plus the current time, and returns plain data (a ``Plan``, a status).
The Kubernetes adapter, the Ansible modules and the in-cluster controller all
call these functions, so one set of unit tests covers every entry point.

Vocabulary
    serving   a live pod that is neither being drained nor drained
    idle      a serving pod whose Celery worker answers and holds no active
              and no reserved task
    draining  a pod whose Celery worker no longer consumes (the drain state
              machine owns it until it is drained or rolled back)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import math
import random

GROUP = "elastic-airflow.io"
VERSION = "v1"
API_VERSION = GROUP + "/" + VERSION
EW_KIND = "ElasticWorker"
EW_PLURAL = "elasticworkers"
EWA_PLURAL = "elasticworkerautoscalers"

# Put on every worker pod: which ElasticWorker owns it (the controller's one
# list+watch selects on this label, for all ElasticWorkers at once).
OWNER_LABEL = GROUP + "/elastic-worker"

# Put on every worker pod: the hash of the ElasticWorker's pod template it was
# created from. A pod whose hash differs from the current template's is
# outdated and gets replaced, one at a time (see ``plan_elastic_worker``).
TEMPLATE_HASH_ANNOTATION = GROUP + "/template-hash"

DEFAULT_SCALE_IN_THRESHOLD = 0.7
DEFAULT_SCALE_IN_BACKOFF = 30
DEFAULT_POLL_INTERVAL = 5
DEFAULT_DRAIN_TIMEOUT = 600
# The key of spec.drain.resultBackendSecretRef when it names none (the collection's database Secrets').
RESULT_BACKEND_SECRET_KEY = "result-backend-url"

# Like the names Kubernetes generates: no vowels, no look-alike characters.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

# Drain phases as the controller sees them (mapped from the drain state store).
DRAIN_NONE = None
DRAIN_ACTIVE = "draining"  # consumers cancelled, waiting for tasks to finish
DRAIN_DONE = "drained"  # no task left: the pod may be deleted


# --------------------------------------------------------------------------
# small helpers


def clamp(value, low, high):
    return max(low, min(high, value))


def bounds(spec):
    """(min, max) of an ElasticWorker or ElasticWorkerAutoscaler spec."""
    low = int(spec.get("minReplicas", 1))
    high = int(spec.get("maxReplicas", max(low, 1)))
    return low, max(low, high)


def desired_replicas(ew):
    """spec.replicas (minReplicas when unset) forced into [min, max]."""
    spec = ew.get("spec") or {}
    low, high = bounds(spec)
    replicas = spec.get("replicas")
    if replicas is None:
        replicas = low
    return clamp(int(replicas), low, high)


def new_pod_name(ew_name, taken, rng=None):
    """``<ew-name>-<5 random characters>``, not in ``taken``."""
    rng = rng or random
    # Pod names are DNS-1123 subdomains (253) but the pod's hostname is a label
    # (63): keep the whole name a label so ``celery@<pod name>`` == hostname.
    base = ew_name[: 63 - 6]
    while True:
        name = base + "-" + "".join(rng.choice(_SUFFIX_ALPHABET) for _i in range(5))
        if name not in taken:
            return name


def label_selector_to_string(selector):
    """A LabelSelector dict as the string form (what the scale subresource reports)."""
    parts = []
    for key in sorted((selector or {}).get("matchLabels") or {}):
        parts.append("%s=%s" % (key, selector["matchLabels"][key]))
    for expr in (selector or {}).get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], sorted(expr.get("values") or [])
        if op == "In":
            parts.append("%s in (%s)" % (key, ",".join(values)))
        elif op == "NotIn":
            parts.append("%s notin (%s)" % (key, ",".join(values)))
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append("!" + key)
    return ",".join(parts)


def selector_matches(selector, labels):
    """Does a LabelSelector dict select these labels? An empty selector selects all."""
    labels = labels or {}
    for key, value in ((selector or {}).get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in (selector or {}).get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def owner_reference(ew):
    meta = ew["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": EW_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(pod, ew):
    uid = ew["metadata"].get("uid")
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") == uid:
            return True
    return False


def owned_pods(ew, pods):
    """The pods this ElasticWorker controls (by controller ownerReference)."""
    return [p for p in pods if is_owned_by(p, ew)]


def pod_ready(pod):
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def pod_phase(pod):
    return (pod.get("status") or {}).get("phase") or "Pending"


def pod_terminating(pod):
    return bool(pod["metadata"].get("deletionTimestamp"))


def pod_created(pod):
    return pod["metadata"].get("creationTimestamp") or ""


def template_hash(template):
    """A short, stable hash of a pod template (canonical JSON: sorted keys, no spaces)."""
    text = json.dumps(template or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def pod_template_hash(pod):
    """The template hash stamped on a pod, or None (not stamped: treated as outdated)."""
    return (pod["metadata"].get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION)


def pod_outdated(pod, current_hash):
    return pod_template_hash(pod) != current_hash


def worker_name(pod_name):
    """The Celery node name of the worker in a pod (the pod template sets it)."""
    return "celery@" + pod_name


# --------------------------------------------------------------------------
# the pod a new worker gets


def build_pod(ew, name):
    """The Pod manifest for a new worker of ElasticWorker ``ew``."""
    meta = ew["metadata"]
    spec = ew["spec"]
    template = spec.get("template") or {}
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels.update((spec.get("selector") or {}).get("matchLabels") or {})
    labels[OWNER_LABEL] = meta["name"]
    annotations = dict(tmeta.get("annotations") or {})
    annotations[TEMPLATE_HASH_ANNOTATION] = template_hash(template)
    pod_spec = dict(template.get("spec") or {})
    # The pod's hostname is its name: the worker runs --celery-hostname
    # "$(hostname)", so its Celery node is celery@<pod name>, and with the
    # template's subdomain <pod>.<c>-worker resolves (log serving).
    pod_spec["hostname"] = name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(ew)],
        },
        "spec": pod_spec,
    }


# --------------------------------------------------------------------------
# one ElasticWorker: which pods to create, drain, delete


class Plan:
    """What one reconcile pass of one ElasticWorker decides."""

    def __init__(self):
        self.create = []  # pod names to create
        self.delete = []  # (pod name, reason) to delete now (no drain needed)
        self.drain = []  # pod names whose drain starts
        self.step_drain = []  # pod names whose drain in progress is advanced
        self.cancel_drain = []  # pod names whose drain is rolled back
        self.status = {}
        self.messages = []  # why scale-in waits (condition ScaleInBlocked)
        self.rollout = []  # how the rolling update stands (condition UpToDate)

    @property
    def changed(self):
        return bool(self.create or self.delete or self.drain or self.cancel_drain)

    def as_dict(self):
        return {
            "create": list(self.create),
            "delete": [{"pod": n, "reason": r} for n, r in self.delete],
            "drain": list(self.drain),
            "step_drain": list(self.step_drain),
            "cancel_drain": list(self.cancel_drain),
            "status": self.status,
            "messages": list(self.messages),
            "rollout": list(self.rollout),
        }


def classify_worker(state):
    """'idle', 'busy' or 'unknown' from one worker's Celery state (or None)."""
    if not state or not state.get("alive", True):
        return "unknown"
    if int(state.get("active", 0)) or int(state.get("reserved", 0)):
        return "busy"
    return "idle"


def _candidate_order(pod):
    # Newest first: the oldest workers have warm caches and most logs to keep.
    return (pod_created(pod), pod["metadata"]["name"])


def plan_elastic_worker(ew, pods, workers, drains, now=None, rng=None):
    """Decide one reconcile pass of ElasticWorker ``ew``.

    pods     the pods this ElasticWorker owns (see ``owned_pods``)
    workers  {pod name: Celery state} with keys ``active``, ``reserved`` (counts)
             and ``alive``; None when the broker could not be asked (then
             nothing that needs to know idleness happens)
    drains   {pod name: DRAIN_ACTIVE | DRAIN_DONE} from the drain state store
    rng      random source for new pod names (tests pass a seeded one)
    """
    plan = Plan()
    spec = ew.get("spec") or {}
    name = ew["metadata"]["name"]
    desired = desired_replicas(ew)
    policy_spec = spec.get("scaleInPolicy") or {}
    policy = policy_spec.get("type", "IdleOnly")
    drains = drains or {}
    celery_known = workers is not None
    workers = workers or {}

    live, taken = [], set()
    for pod in pods:
        pname = pod["metadata"]["name"]
        taken.add(pname)
        if pod_terminating(pod):
            continue
        if pod_phase(pod) in ("Failed", "Succeeded"):
            plan.delete.append((pname, "pod %s" % pod_phase(pod).lower()))
            continue
        live.append(pod)

    draining = [p for p in live if drains.get(p["metadata"]["name"]) == DRAIN_ACTIVE]
    drained = [p for p in live if drains.get(p["metadata"]["name"]) == DRAIN_DONE]
    serving = [p for p in live if not drains.get(p["metadata"]["name"])]
    for pod in drained:
        plan.delete.append((pod["metadata"]["name"], "drained"))

    states = {}
    for pod in live:
        pname = pod["metadata"]["name"]
        states[pname] = classify_worker(workers.get(pname)) if celery_known else "unknown"

    current_hash = template_hash(spec.get("template") or {})
    outdated = [p for p in serving if pod_outdated(p, current_hash)]
    updated = [p for p in serving if not pod_outdated(p, current_hash)]

    if len(serving) < desired:
        missing = desired - len(serving)
        # A worker being drained is still there: give it back its consumers
        # rather than start a new pod.
        for pod in sorted(draining, key=_candidate_order, reverse=True)[:missing]:
            plan.cancel_drain.append(pod["metadata"]["name"])
        missing -= len(plan.cancel_drain)
        for _i in range(missing):
            pname = new_pod_name(name, taken, rng)
            taken.add(pname)
            plan.create.append(pname)
    elif outdated and desired >= 1 and (
            len(serving) == desired or (len(serving) == desired + 1 and updated)):
        _plan_rollout(plan, name, taken, rng, serving, outdated, updated, draining, states, desired, celery_known)
    elif len(serving) > desired:
        _plan_scale_in(plan, policy, policy_spec, serving, states, len(serving) - desired, celery_known,
                       current_hash)

    # every drain in progress that is not rolled back advances (the act step drives it)
    plan.step_drain = [p["metadata"]["name"] for p in draining if p["metadata"]["name"] not in plan.cancel_drain]
    if outdated and not plan.rollout:
        plan.rollout.append("%d outdated pod(s) wait for the scale-in in progress" % len(outdated))
    plan.status = status_of(ew, pods, live, states, drains, desired, plan, policy, current_hash)
    return plan


def _rollout_order(pod, states):
    # idle workers first (nothing to wait for), then the oldest
    return (states[pod["metadata"]["name"]] != "idle", pod_created(pod), pod["metadata"]["name"])


def _plan_rollout(plan, name, taken, rng, serving, outdated, updated, draining, states, desired, celery_known):
    """One step of a rolling update: at most one surge pod, at most one drain.

    Pods whose template hash is not the current template's are replaced one
    at a time, never below ``desired`` serving workers: first one new pod is
    created (at most desired + 1 <= maxReplicas + 1 pods), once it is Ready
    one outdated worker is drained through the drain state machine (a busy
    one keeps its tasks until they finish; on a drain timeout its consumers
    come back and it stays), and the drained pod is deleted by a later pass.
    """
    # An outdated pod whose container never started holds no worker: replace it at once.
    unstarted = [p for p in outdated if pod_phase(p) == "Pending" and states[p["metadata"]["name"]] == "unknown"]
    if unstarted:
        for pod in unstarted:
            plan.delete.append((pod["metadata"]["name"], "outdated pod that never started"))
        for _i in range(desired - (len(serving) - len(unstarted))):
            pname = new_pod_name(name, taken, rng)
            taken.add(pname)
            plan.create.append(pname)
        plan.rollout.append("replacing %d outdated pod(s) that never started" % len(unstarted))
        return
    if draining:
        plan.rollout.append("rolling update waits for the drain of %s"
                            % ", ".join(sorted(p["metadata"]["name"] for p in draining)))
        return
    if not celery_known:
        plan.rollout.append("rolling update waits: the Celery workers could not be asked")
        return
    if len(serving) == desired:
        pname = new_pod_name(name, taken, rng)
        taken.add(pname)
        plan.create.append(pname)
        plan.rollout.append("%d outdated pod(s): surge pod %s first" % (len(outdated), pname))
        return
    starting = sorted(p["metadata"]["name"] for p in updated if not pod_ready(p))
    if starting:
        plan.rollout.append("rolling update waits for %s to be Ready" % ", ".join(starting))
        return
    candidates = sorted((p for p in outdated if states[p["metadata"]["name"]] in ("idle", "busy")),
                        key=lambda p: _rollout_order(p, states))
    if not candidates:
        plan.rollout.append("rolling update waits: outdated worker(s) %s do not answer"
                            % ", ".join(sorted(p["metadata"]["name"] for p in outdated)))
        return
    chosen = candidates[0]["metadata"]["name"]
    plan.drain.append(chosen)
    plan.rollout.append("%d outdated pod(s): draining %s (%s)" % (len(outdated), chosen, states[chosen]))


def _plan_scale_in(plan, policy, policy_spec, serving, states, excess, celery_known, current_hash=None):
    # Pods whose container never started hold no Celery worker: they may go
    # at once under every policy but Disabled.
    unstarted = [
        p for p in serving
        if pod_phase(p) == "Pending" and states[p["metadata"]["name"]] == "unknown"
    ]
    if policy == "Disabled":
        plan.messages.append("scale-in disabled: %d pod(s) above the desired count stay" % excess)
        return
    for pod in sorted(unstarted, key=_candidate_order, reverse=True)[:excess]:
        plan.delete.append((pod["metadata"]["name"], "scale-in of a pod that never started"))
        excess -= 1
    gone = set(n for n, _unused in plan.delete)
    rest = [p for p in serving if p["metadata"]["name"] not in gone]
    if excess <= 0:
        return

    def outdated_first(pods):  # stable: keeps the newest-first order within each group
        pods.sort(key=lambda p: not pod_outdated(p, current_hash) if current_hash else False)

    if policy == "Immediate":
        order = {"idle": 0, "unknown": 1, "busy": 2}
        rest.sort(key=_candidate_order, reverse=True)
        outdated_first(rest)
        rest.sort(key=lambda p: order[states[p["metadata"]["name"]]])
        for pod in rest[:excess]:
            plan.delete.append((pod["metadata"]["name"], "scale-in (Immediate policy, no drain)"))
        return
    if policy == "BySelector":
        selector = policy_spec.get("selector") or {}
        candidates = [p for p in rest if selector_matches(selector, p["metadata"].get("labels"))]
        # idle ones first; busy ones are drained too (the drain waits for their tasks)
        candidates.sort(key=_candidate_order, reverse=True)
        outdated_first(candidates)
        candidates.sort(key=lambda p: states[p["metadata"]["name"]] != "idle")
    else:  # IdleOnly
        if not celery_known:
            plan.messages.append("scale-in waits: the Celery workers could not be asked")
            return
        candidates = [p for p in rest if states[p["metadata"]["name"]] == "idle"]
        candidates.sort(key=_candidate_order, reverse=True)
        outdated_first(candidates)
    chosen = candidates[:excess]
    plan.drain.extend(p["metadata"]["name"] for p in chosen)
    if len(chosen) < excess:
        plan.messages.append(
            "scale-in waits: %d pod(s) above the desired count, only %d eligible (%s policy)"
            % (excess, len(chosen), policy)
        )


def status_of(ew, pods, live, states, drains, desired, plan, policy, current_hash=None):
    spec = ew.get("spec") or {}
    low, high = bounds(spec)
    selector = dict(spec.get("selector") or {})
    labels = dict(selector.get("matchLabels") or {})
    labels[OWNER_LABEL] = ew["metadata"]["name"]
    selector["matchLabels"] = labels
    counted = [p for p in live if drains.get(p["metadata"]["name"]) != DRAIN_DONE]
    busy = sum(1 for p in counted if states.get(p["metadata"]["name"]) == "busy")
    idle = sum(
        1 for p in counted
        if states.get(p["metadata"]["name"]) == "idle" and not drains.get(p["metadata"]["name"])
    )
    n_draining = sum(1 for p in live if drains.get(p["metadata"]["name"]))
    ready = sum(1 for p in counted if pod_ready(p))
    replicas = len(counted)
    if current_hash is None:
        current_hash = template_hash(spec.get("template") or {})
    n_updated = sum(1 for p in counted if not pod_outdated(p, current_hash))
    up_to_date = n_updated == replicas
    stable = replicas == desired and not plan.changed and not n_draining
    limited = spec.get("replicas") is not None and int(spec["replicas"]) != desired
    conditions = [
        {
            "type": "Ready",
            "status": "True" if stable and ready == desired else "False",
            "reason": "AllReplicasReady" if stable and ready == desired else "Reconciling",
            "message": "%d/%d ready, %d draining" % (ready, desired, n_draining),
        },
        {
            "type": "ScalingLimited",
            "status": "True" if limited else "False",
            "reason": "OutOfBounds" if limited else "WithinBounds",
            "message": "replicas kept within [%d, %d]" % (low, high),
        },
        {
            "type": "UpToDate",
            "status": "True" if up_to_date else "False",
            "reason": "TemplateApplied" if up_to_date else "RollingUpdate",
            "message": "%d/%d pods from template %s%s" % (
                n_updated, replicas, current_hash, ("; " + "; ".join(plan.rollout)) if plan.rollout else ""),
        },
        {
            "type": "ScaleInBlocked",
            "status": "True" if plan.messages else "False",
            "reason": "Waiting" if plan.messages else (policy or "IdleOnly"),
            "message": "; ".join(plan.messages),
        },
    ]
    return {
        "observedGeneration": ew["metadata"].get("generation", 0),
        "replicas": replicas,
        "desiredReplicas": desired,
        "readyReplicas": ready,
        "updatedReplicas": n_updated,
        "templateHash": current_hash,
        "busy": busy,
        "idle": idle,
        "draining": n_draining,
        "selector": label_selector_to_string(selector),
        "conditions": conditions,
    }


def merge_conditions(old, new, now):
    """Keep lastTransitionTime of conditions whose status did not change."""
    previous = dict((c.get("type"), c) for c in (old or []))
    out = []
    for cond in new:
        cond = dict(cond)
        before = previous.get(cond["type"])
        if before and before.get("status") == cond["status"] and before.get("lastTransitionTime"):
            cond["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            cond["lastTransitionTime"] = now
        out.append(cond)
    return out


def status_differs(old, new):
    """Would writing ``new`` change the status (ignoring transition times)?"""
    def strip(status):
        status = dict(status or {})
        status["conditions"] = [
            dict((k, v) for k, v in c.items() if k != "lastTransitionTime")
            for c in status.get("conditions") or []
        ]
        return status
    old_s, new_s = strip(old), strip(new)
    return any(old_s.get(k) != v for k, v in new_s.items())


# --------------------------------------------------------------------------
# the autoscaler


def celery_load(workers, queued=0, concurrency_default=1, starting=0):
    """Load in percent: tasks held or waiting / task slots of the workers.

    workers   {name: {"active": n, "reserved": n, "concurrency": n, "alive": bool}};
              concurrency None: not known yet (``concurrency_default``), 0: takes
              no task (a draining worker)
    queued    messages waiting in the broker queues
    starting  workers wanted that do not answer yet (created, pulling, importing
              Airflow): each counts as an empty worker of the live workers' largest
              concurrency, as the HPA counts a pod that is not ready yet at 0 % for
              a scale-out. Counted only by their answering peers, the load of the
              live slots is multiplied by every wanted replica, and each poll while
              new workers start asks for more of them, up to the maximum.
    Returns None when there is no slot at all but something waits, 0.0 when
    there is no slot and nothing waits.
    """
    slots = 0
    held = 0
    sizes = []
    for state in (workers or {}).values():
        if not state or not state.get("alive", True):
            continue
        size = state.get("concurrency")
        size = concurrency_default if size is None else int(size)
        slots += size
        sizes.append(size)
        held += int(state.get("active", 0)) + int(state.get("reserved", 0))
    slots += int(starting or 0) * max(sizes + [concurrency_default])
    held += int(queued or 0)
    if slots == 0:
        # No slot: anything waiting is infinite load; nothing waiting is none.
        return 0.0 if held == 0 else None
    return 100.0 * held / slots


def autoscale(spec, status, current, load, now, target_bounds=None):
    """One autoscaler decision.

    spec     ElasticWorkerAutoscaler spec (targetValue, minReplicas, maxReplicas,
             scaleInThreshold, scaleInBackOffSeconds)
    status   its status (lowLoadSince, lastLoad), may be empty
    current  the target's current replica count (spec.replicas)
    load     measured load in percent, or None when it cannot be measured;
             float('inf') means work is waiting with no worker at all
    now      seconds (any monotonic-enough clock; stored in the status)
    target_bounds  (min, max) of the ElasticWorker, intersected with ours

    Returns (desired, new_status_fields, reason).
    """
    status = status or {}
    low, high = bounds(spec)
    if target_bounds:
        low, high = max(low, target_bounds[0]), min(high, target_bounds[1])
        high = max(low, high)
    target = float(spec.get("targetValue", 100))
    threshold = float(spec.get("scaleInThreshold", DEFAULT_SCALE_IN_THRESHOLD))
    backoff = float(spec.get("scaleInBackOffSeconds", DEFAULT_SCALE_IN_BACKOFF))
    low_since = status.get("lowLoadSince")
    last_load = status.get("lastLoad")
    fields = {"currentReplicas": current, "currentLoad": load, "lastLoad": load}

    if load is None:
        desired = clamp(current, low, high)
        fields.update(lowLoadSince=None, desiredReplicas=desired)
        return desired, fields, "metric unavailable: keeping %d" % desired

    if load == float("inf"):
        raw = high
    else:
        raw = int(math.ceil(max(current, 1) * load / target - 1e-9))

    if raw > current:
        desired = clamp(raw, low, high)
        fields.update(lowLoadSince=None, desiredReplicas=desired)
        return desired, fields, "load %.1f%% > target %.1f%%: %d -> %d" % (load, target, current, desired)

    if load < threshold * target and current > low:
        if low_since is None or (last_load is not None and load > float(last_load) + 1e-9):
            low_since = now  # the back-off (re)starts
        waited = now - float(low_since)
        if waited >= backoff:
            desired = clamp(max(raw, 0), low, high)
            # A further step waits a whole back-off again.
            fields.update(lowLoadSince=now, desiredReplicas=desired)
            return desired, fields, "load %.1f%% < %.0f%% of target for %.0fs: %d -> %d" % (
                load, threshold * 100, waited, current, desired)
        desired = clamp(current, low, high)
        fields.update(lowLoadSince=low_since, desiredReplicas=desired)
        return desired, fields, "load low for %.0fs of %.0fs back-off" % (waited, backoff)

    desired = clamp(current, low, high)
    fields.update(lowLoadSince=None, desiredReplicas=desired)
    return desired, fields, "load %.1f%% within band" % load


def degraded_condition(failures):
    """The ``Degraded`` condition of an ElasticWorker from {what failed: error} of the last pass."""
    if not failures:
        return {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": ""}
    items = sorted(failures.items())
    message = "; ".join("%s: %s" % (what, error) for what, error in items[:5])
    if len(items) > 5:
        message += "; and %d more" % (len(items) - 5)
    return {"type": "Degraded", "status": "True", "reason": "ObjectErrors", "message": message[:1000]}
