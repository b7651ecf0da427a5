# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""The ElasticWorker controller: reconcile passes and the long-lived loop.

``Reconciler`` turns the pure decisions of ``reconcile`` into API calls and
Celery commands; the Ansible modules run one pass of it, the in-cluster
controller runs it forever:

    python -m elastic.controller --namespace airflow            # in the cluster
    python -m elastic.controller --kubeconfig ~/.kube/config    # from a laptop

(``elastic`` is the directory of these files; the elastic_worker role mounts
them from a ConfigMap into the Airflow image, which has Python, the
kubernetes client and Celery.)

The loop keeps a local cache of pods, ElasticWorkers and
ElasticWorkerAutoscalers (one LIST + one WATCH each, no per-pod GETs), acts
only while it holds the Lease, and serves ``/healthz`` and ``/readyz``.
Every pod it removes from a scale-in goes through the drain state machine of
``drain`` (state on the pod's annotation, so another replica resumes it).
"""

from __future__ import absolute_import, division, print_function

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import namedtuple

# Relative: imported as a package (Ansible, python -m elastic.controller).
from . import kube as K
from . import reconcile as R
from .celery_control import CeleryControl, CeleryControlError
from .drain import DRAINED, FAILED, Drain, DrainError, WorkerGone
from .k8s_store import AnnotationStore, pod_record

LOG = logging.getLogger("elastic_worker")

DRAIN_POLL_SECONDS = 0.5  # a drain in progress is looked at again this soon
# A task listed as active this long after the result backend recorded it finished is stale, not racing.
STALE_FINISHED_SECONDS = 60

# What one pass of an ElasticWorker decides on: its pods, the pods created but
# not in the cache yet, the Celery control (None without a broker) and why
# not, the workers' states ({pod: state}, None when Celery cannot be asked)
# and the drain records ({pod: DRAIN_ACTIVE | DRAIN_DONE}).
Observation = namedtuple("Observation", "pods expected control broker_error states drains")


# ------------------------------------------------------------------ drain state on cached pods


class CachedPodStore(AnnotationStore):
    """The drain record on the pod annotation, read from the informer cache.

    Writes go to the API server (merge patch of the one annotation, with the
    cached pod's resourceVersion as precondition) and the returned pod is
    written through to the cache, so the next read sees it without a GET. On
    a 409 the pod is read again (GET, written through) and ``Conflict`` makes
    the drain step again. ``uids`` ({pod name: uid}) keys the store to those
    pods: another pod of the same name counts as gone.
    """

    def __init__(self, kube, pods_cache, namespace, uids=None):
        self.kube = kube
        self.cache = pods_cache
        self.namespace = namespace
        self.uids = dict(uids or {})

    def _pod(self, worker):
        pod = self.cache.get(self.namespace, worker)
        if pod is None or R.pod_terminating(pod):
            return None
        uid = self.uids.get(worker)
        if uid and pod["metadata"].get("uid") != uid:
            return None  # replaced by another pod of that name
        return pod

    def get(self, worker):
        pod = self._pod(worker)
        if pod is None:
            return None
        return pod_record(pod)

    # AnnotationStore's hooks, with its parameter names (pod: the pod's name).
    def _version(self, pod):
        cached = self._pod(pod)
        return cached["metadata"].get("resourceVersion") if cached else None

    def _reread(self, pod):
        fresh = self.kube.read_pod(self.namespace, pod)
        if fresh is not None:
            self.cache.update(fresh)

    def _send(self, pod, annotations, resource_version):
        return self.kube.patch_pod_annotations(self.namespace, pod, annotations, resource_version=resource_version)

    def _patch(self, pod, value):
        if self._pod(pod) is None:
            raise WorkerGone(pod)
        self.cache.update(super()._patch(pod, value))

    def exists(self, worker):
        return self._pod(worker) is not None


class MemoryCache:
    """A cache with the Informer's read interface over a fixed list (one-shot passes)."""

    def __init__(self, objects):
        self._items = dict((K.Informer.key(o), o) for o in objects)

    def items(self):
        return list(self._items.values())

    def get(self, namespace, name):
        return self._items.get("%s/%s" % (namespace or "", name))

    def update(self, obj):
        self._items[K.Informer.key(obj)] = obj


def drain_phase(pod):
    """reconcile's view of a pod's drain record (None, DRAIN_ACTIVE or DRAIN_DONE)."""
    try:
        record = pod_record(pod)
    except DrainError:
        return R.DRAIN_ACTIVE  # unreadable: never delete on a guess
    if record is None:
        return R.DRAIN_NONE
    return R.DRAIN_DONE if record["phase"] == DRAINED else R.DRAIN_ACTIVE


class FencedControl:
    """A CeleryControl whose broadcasts that change a worker ask ``fence()`` first (``NotLeader`` if no)."""

    def __init__(self, control, fence):
        self._control = control
        self._fence = fence

    @property
    def inner(self):
        """The CeleryControl itself (for reads, which need no fence)."""
        return self._control

    def _check(self):
        if not self._fence():
            raise K.NotLeader("not the leader any more: broadcast refused")

    def cancel_consumer(self, *args, **kwargs):
        self._check()
        return self._control.cancel_consumer(*args, **kwargs)

    def add_consumer(self, *args, **kwargs):
        self._check()
        return self._control.add_consumer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._control, name)


class Throttle:
    """Per-object retry delays, as kopf's throttler: stepped on each failure, reset on success."""

    DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 120.0)

    def __init__(self, delays=DELAYS):
        self.delays = tuple(delays)
        self._state = {}  # key -> (failures, monotonic time of the next try, last error)

    def blocked(self, key, now):
        """Seconds this object must still wait (0: try now)."""
        state = self._state.get(key)
        return max(0.0, state[1] - now) if state else 0.0

    def failed(self, key, now, error):
        failures = self._state.get(key, (0,))[0] + 1
        delay = self.delays[min(failures, len(self.delays)) - 1]
        self._state[key] = (failures, now + delay, error)
        return delay

    def succeeded(self, key):
        self._state.pop(key, None)

    def error(self, key):
        state = self._state.get(key)
        return state[2] if state else None

    def keys(self):
        return list(self._state)

    def forget(self, keep):
        for key in [k for k in self._state if k not in keep]:
            del self._state[key]


# ------------------------------------------------------------------ the reconciler


class Reconciler:
    """Reconcile ElasticWorkers and ElasticWorkerAutoscalers from a cache.

    ``caches``: {"pods": ..., "elasticworkers": ..., "elasticworkerautoscalers": ...}
    each with ``items()``/``get(ns, name)``/``update(obj)``. ``dry_run``: decide,
    change nothing (check mode).
    """

    def __init__(self, kube, caches, dry_run=False, celery_timeout=1.0, clock=time.time, rng=None, fence=None,
                 monotonic=time.monotonic, throttle=None):
        self.kube = kube
        self.caches = caches
        self.dry_run = dry_run
        self.celery_timeout = celery_timeout
        self.clock = clock
        self.monotonic = monotonic
        self.rng = rng
        self.fence = fence  # None, or a callable: may this process still write (leader deadline)?
        self._controls = {}  # (namespace, broker secret, result backend secret) -> CeleryControl
        self._backend_retry = {}  # the same key -> when to read a result backend Secret that failed again
        self._drains = {}  # pod uid -> Drain (keeps its in-memory settle count)
        self._concurrency = {}  # pod uid -> worker pool size
        self._finished_since = {}  # worker -> {task id listed active but finished: first seen, None once warned}
        self._expect_create = {}  # ew uid -> {pod name: deadline}
        self._next_poll = {}  # ewa uid -> monotonic time of the next measurement
        # During reconcile_all: what the workers answered this pass, so that an
        # autoscaler and its ElasticWorker ask Celery (and the result backend) once.
        self._pass_loads = None  # {(CeleryControl, hosts): loads}
        self.throttle = throttle or Throttle()  # per object (pod or ElasticWorker uid) retry delays

    def forget_in_flight(self):
        """After losing the Lease: drop drains and expected pods; the next leader reads them from the pods."""
        self._drains.clear()
        self._expect_create.clear()

    # -------------------------------------------------------------- helpers

    def pods_of(self, ew):
        """The pods of an ElasticWorker in the cache (public: elastic_worker_info reads them too)."""
        pods = [p for p in self.caches["pods"].items()
                if p["metadata"].get("namespace") == ew["metadata"]["namespace"]
                and (p["metadata"].get("labels") or {}).get(R.OWNER_LABEL) == ew["metadata"]["name"]]
        return R.owned_pods(ew, pods)

    def control_for(self, namespace, secret_ref, result_backend_ref=None):
        """A CeleryControl for the broker named by a secret ref, or None.

        ``result_backend_ref``: the Secret of the workers' result backend URL
        (key ``result-backend-url``); tasks it records as finished are not
        counted as running (CeleryControl, celery/celery#8541).
        """
        if not secret_ref or not secret_ref.get("name"):
            return None
        backend = None
        if result_backend_ref and result_backend_ref.get("name"):
            backend = (result_backend_ref["name"], result_backend_ref.get("key", R.RESULT_BACKEND_SECRET_KEY))
        key = (namespace, secret_ref["name"], secret_ref.get("key", "url"), backend)
        retry_backend = backend and key in self._controls and self._controls[key].results is None \
            and self.monotonic() >= self._backend_retry.get(key, 0)
        if key not in self._controls or retry_backend:
            url = self.kube.read_secret_key(namespace, secret_ref["name"], secret_ref.get("key", "url"))
            backend_url = None
            if backend:
                try:
                    backend_url = self.kube.read_secret_key(namespace, *backend)
                except Exception as exc:  # the broker alone still works: inspect active, without the witness
                    self._backend_retry[key] = self.monotonic() + 60
                    LOG.warning("%s: cannot read the result backend Secret %s (retried in 60 s); trusting "
                                "celery inspect active alone: %s", namespace, backend[0], exc)
            if key in self._controls:
                self._controls[key].close()
            self._controls[key] = CeleryControl(url, timeout=self.celery_timeout, result_backend=backend_url)
        if self.fence is not None:
            return FencedControl(self._controls[key], self.fence)
        return self._controls[key]

    def control_of(self, ew, broker_ref=None):
        """control_for() with the ElasticWorker's broker (or ``broker_ref``) and its result backend."""
        drain = (ew.get("spec") or {}).get("drain") or {}
        return self.control_for(ew["metadata"]["namespace"], broker_ref or drain.get("brokerSecretRef"),
                                drain.get("resultBackendSecretRef"))

    def close(self):
        for ctl in self._controls.values():
            try:
                ctl.close()
            except Exception:  # pragma: no cover
                pass
        self._controls.clear()

    def worker_states(self, control, pods):
        """{pod name: state} for the Running pods' workers; None when the broker is unreachable."""
        if control is None:
            return None
        running = [p for p in pods if R.pod_phase(p) == "Running" and not R.pod_terminating(p)]
        if not running:
            return {}
        hosts = dict((R.worker_name(p["metadata"]["name"]), p) for p in running)
        try:
            loads = self._workload(control, hosts)
        except CeleryControlError as exc:
            LOG.warning("cannot ask the Celery workers: %s", exc)
            return None
        states = {}
        for host, load in loads.items():
            pod = hosts[host]
            self._note_finished(host, load.finished)
            counts = load.counts()
            states[pod["metadata"]["name"]] = {
                "alive": True, "active": counts["active"],
                "reserved": counts["reserved"] + counts["scheduled"],
                "concurrency": self._concurrency.get(pod["metadata"]["uid"]),
            }
        return states

    def _workload(self, control, hosts):
        """control.workload(hosts), asked once per reconcile_all pass for the same control and hosts."""
        if isinstance(control, FencedControl):
            control = control.inner
        if self._pass_loads is None:
            return control.workload(list(hosts))
        key = (control, frozenset(hosts))  # a CeleryControl hashes by identity
        if key not in self._pass_loads:
            self._pass_loads[key] = control.workload(list(hosts))
        return self._pass_loads[key]

    def _note_finished(self, host, finished):
        """Log the tasks a worker lists as active that the result backend records as finished.

        Once per task at INFO when first found (a task that just ended can be
        seen so for a moment: its result is stored before the worker's main
        process hears of it); once more at WARNING when it is still listed
        STALE_FINISHED_SECONDS later: the Celery bug.
        """
        now = self.monotonic()
        seen = self._finished_since.setdefault(host, {})
        for task_id in list(seen):
            if task_id not in finished:
                del seen[task_id]
        for task_id in finished:
            if task_id not in seen:
                seen[task_id] = now
                LOG.info("%s lists task %s as active; the result backend records it finished: not counted",
                         host, task_id)
            since = seen[task_id]
            if since is not None and now - since >= STALE_FINISHED_SECONDS:
                seen[task_id] = None  # warned
                LOG.warning("%s still lists task %s as active %.0f s after it was found finished in the result "
                            "backend (Celery lost it at a broker reconnect, celery/celery#8541): not counted",
                            host, task_id, now - since)
        if not seen:
            del self._finished_since[host]

    def _fill_concurrency(self, control, pods, states):
        missing = [p for p in pods if p["metadata"]["name"] in (states or {})
                   and p["metadata"]["uid"] not in self._concurrency]
        if not missing or control is None:
            return
        hosts = dict((R.worker_name(p["metadata"]["name"]), p) for p in missing)
        try:
            sizes = control.concurrency(list(hosts))
        except CeleryControlError:
            return
        for host, size in sizes.items():
            pod = hosts[host]
            self._concurrency[pod["metadata"]["uid"]] = size
            states[pod["metadata"]["name"]]["concurrency"] = size

    def _drain_for(self, ew, pod, control):
        uid = pod["metadata"]["uid"]
        drain = self._drains.get(uid)
        if drain is None:
            spec = (ew["spec"].get("drain") or {})
            store = CachedPodStore(self.kube, self.caches["pods"], ew["metadata"]["namespace"],
                                   uids={pod["metadata"]["name"]: uid})
            drain = Drain(control, store, pod["metadata"]["name"],
                          hostname=R.worker_name(pod["metadata"]["name"]),
                          timeout=float(spec.get("timeoutSeconds", R.DEFAULT_DRAIN_TIMEOUT)),
                          poll_interval=1.0, settle_polls=2, clock=self.clock)
            self._drains[uid] = drain
        return drain

    def _expected(self, ew, pods):
        """Pods we created that the cache has not shown yet (so they are not created twice)."""
        uid = ew["metadata"]["uid"]
        seen = set(p["metadata"]["name"] for p in pods)
        now = time.monotonic()
        pending = dict((n, d) for n, d in self._expect_create.get(uid, {}).items() if n not in seen and d > now)
        self._expect_create[uid] = pending
        stamp = {R.TEMPLATE_HASH_ANNOTATION: R.template_hash((ew.get("spec") or {}).get("template") or {})}
        return [{"metadata": {"name": n, "uid": "expected-" + n, "creationTimestamp": "9999",
                              "annotations": stamp, "ownerReferences": [{"uid": uid, "controller": True}]},
                 "status": {"phase": "Pending"}} for n in pending]

    def _isolated(self, ew, key, what, report, fn):
        """Run one object's action; a failure (not NotLeader) is recorded, backed off and reported.

        Returns (True, result) or (False, None). While ``key`` backs off the
        action is skipped (False, None).
        """
        now = self.monotonic()
        wait = self.throttle.blocked(key, now)
        if wait > 0:
            report["failures"][what] = self.throttle.error(key)
            report["requeue_after"] = min(report["requeue_after"], wait)
            return False, None
        try:
            result = fn()
        except K.NotLeader:
            raise
        except Exception as exc:
            message = "%s: %s" % (type(exc).__name__, exc)
            delay = self.throttle.failed(key, now, message)
            report["failures"][what] = message
            report["requeue_after"] = min(report["requeue_after"], delay)
            LOG.warning("%s/%s: %s failed (retry in %.0fs): %s", ew["metadata"]["namespace"],
                        ew["metadata"]["name"], what, delay, message)
            self._event(ew, "ReconcileError", "%s failed (retry in %.0fs): %s" % (what, delay, message), "Warning")
            return False, None
        self.throttle.succeeded(key)
        return True, result

    # -------------------------------------------------------------- one ElasticWorker

    def reconcile_elastic_worker(self, ew):
        """One pass over one ElasticWorker, in three steps: observe, decide, act. Returns a report dict.

        - observe: one snapshot (the pods, the Celery workers' states, the
          drain records on the pods);
        - decide: ``reconcile.plan_elastic_worker``, pure, on that snapshot:
          pods to create and delete, drains to start, step or roll back;
        - act: the writes, each fenced by the leader deadline (``Kube.fence``,
          ``FencedControl``).

        A failure of one object (a pod whose drain record cannot be read or
        patched, a pod that cannot be deleted or created) does not stop the
        pass: that object backs off (``Throttle``), the rest goes on, and the
        status says ``Degraded``. ``report["requeue_after"]``: seconds until
        this ElasticWorker wants another pass (inf: none needed).
        """
        seen = self.observe(ew)
        plan = R.plan_elastic_worker(ew, seen.pods + seen.expected, seen.states, seen.drains, rng=self.rng)
        report = {"name": ew["metadata"]["name"], "namespace": ew["metadata"]["namespace"],
                  "actions": ["broker unknown: %s" % seen.broker_error] if seen.broker_error else [],
                  "drains": dict((n, "drained" if p == R.DRAIN_DONE else "draining") for n, p in seen.drains.items()),
                  "failures": {}, "requeue_after": float("inf"), "plan": plan.as_dict(), "changed": plan.changed}
        if not self.dry_run:
            self.act(ew, plan, seen, report)
        return report

    def observe(self, ew):
        """The snapshot a pass decides on (``Observation``); reads the cache and asks Celery, writes nothing."""
        pods = self.pods_of(ew)
        control, broker_error = None, None
        try:
            control = self.control_of(ew)
        except Exception as exc:  # secret missing, bad URL
            broker_error = str(exc)
        states = self.worker_states(control, pods)
        if states:
            self._fill_concurrency(control, pods, states)
        # an unreadable record counts as a drain in progress: never delete on a guess
        drains = {}
        for pod in pods:
            phase = drain_phase(pod)  # parses the record: once per pod and pass
            if phase and not R.pod_terminating(pod):
                drains[pod["metadata"]["name"]] = phase
        return Observation(pods, self._expected(ew, pods), control, broker_error, states, drains)

    def act(self, ew, plan, seen, report):
        """Carry out ``plan``: roll back, step and start drains, delete, create, then write the status."""
        ns = ew["metadata"]["namespace"]
        control = seen.control
        cached = dict((name, self.caches["pods"].get(ns, name))
                      for name in plan.cancel_drain + plan.step_drain + plan.drain + [n for n, _unused in plan.delete])
        for pname in plan.cancel_drain:
            pod = cached[pname]
            if pod is None or control is None:
                continue

            def cancel(pod=pod):
                try:
                    return self._drain_for(ew, pod, control).abort("scale-out")
                except CeleryControlError as exc:
                    report["actions"].append("rollback of %s failed (retried): %s" % (pod["metadata"]["name"], exc))
            ok, status = self._isolated(ew, pod["metadata"]["uid"], "rollback of %s" % pname, report, cancel)
            if not ok:  # backs off: no quick requeue for it
                report["drains"][pname] = "error"
            elif status is not None:
                self._drains.pop(pod["metadata"]["uid"], None)
                report["actions"].append("rolled back the drain of %s" % pname)
        # drains in progress first (another replica may have begun them), then the new ones
        for pname in plan.step_drain + plan.drain:
            pod = cached[pname]
            if pod is not None and control is not None:
                self._step_drain(ew, pod, control, report, started=pname in plan.drain)
        for pname, reason in plan.delete:
            pod = cached[pname]
            if pod is None:
                continue
            ok, deleted = self._isolated(
                ew, pod["metadata"]["uid"], "delete of %s" % pname, report,
                lambda pod=pod: self.kube.delete_pod(ns, pod["metadata"]["name"], uid=pod["metadata"]["uid"]))
            if ok and deleted:
                report["actions"].append("deleted %s (%s)" % (pname, reason))
                self._event(ew, "DeletedPod", "deleted %s: %s" % (pname, reason))
            if ok:
                self._drains.pop(pod["metadata"]["uid"], None)
        if plan.create:
            self._create_pods(ew, plan.create, report)
        status = dict(plan.status)
        old = ew.get("status") or {}
        conditions = list(status["conditions"]) + [R.degraded_condition(report["failures"])]
        status["conditions"] = R.merge_conditions(old.get("conditions"), conditions, K.now_rfc3339())
        if R.status_differs(old, status):
            self._patch_status(R.EW_PLURAL, "elasticworkers", ns, ew["metadata"]["name"], status)

    def _step_drain(self, ew, pod, control, report, started):
        """One step of a pod's drain; a drained pod is deleted by the next pass (its record says drained)."""
        pname, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        ok, status = self._isolated(ew, uid, "drain of %s" % pname, report,
                                    lambda: self._drain_for(ew, pod, control).step())
        if not ok:  # unreadable record, 5xx on its patch: still draining, never deleted on a guess
            report["drains"][pname] = "error"
            return
        report["drains"][pname] = status.phase
        if started:
            report["actions"].append("drain %s: %s" % (pname, status.phase))
        # The next pass: sooner while an idle worker is being confirmed idle (Drain.next_poll_in); soon
        # for a drained pod (deleted then) and a failed rollback (retried then).
        if not status.done:
            report["requeue_after"] = min(report["requeue_after"],
                                          self._drains[uid].next_poll_in(DRAIN_POLL_SECONDS))
        elif status.phase in (DRAINED, FAILED):
            report["requeue_after"] = min(report["requeue_after"], DRAIN_POLL_SECONDS)
        if status.done and status.phase != DRAINED:  # restored (timeout), gone, failed
            self._drains.pop(uid, None)
            if status.reason == "timeout":
                self._event(ew, "DrainTimedOut", "drain of %s timed out; its consumers were restored" % pname,
                            "Warning")

    def _create_pods(self, ew, names, report):
        expect = self._expect_create.setdefault(ew["metadata"]["uid"], {})
        created = []
        for pname in names:
            ok, _unused = self._isolated(ew, "%s/create" % ew["metadata"]["uid"], "create of %s" % pname, report,
                                         lambda pname=pname: self.kube.create_pod(R.build_pod(ew, pname)))
            if not ok:
                break  # the next pods would most likely fail the same way
            expect[pname] = time.monotonic() + 30
            created.append(pname)
            report["actions"].append("created %s" % pname)
        if created:
            self._event(ew, "CreatedPods", "created %s" % ", ".join(created))

    def _patch_status(self, plural, cache, ns, name, status):
        """Write a status and the returned object through to the cache; an object gone meanwhile is no error."""
        try:
            obj = json.loads(self.kube.patch_status(plural, ns, name, status).data)
            self.caches[cache].update(obj)
        except K.ApiException as exc:
            if exc.status != 404:
                raise

    def _event(self, obj, reason, message, type_="Normal"):
        if not self.dry_run:
            LOG.info("%s/%s %s: %s", obj["metadata"]["namespace"], obj["metadata"]["name"], reason, message)
            self.kube.event(obj, reason, message, type_)

    # -------------------------------------------------------------- one autoscaler

    def measure(self, ewa, ew, pods):
        """Load in percent of the ElasticWorker's workers (None: unknown)."""
        ns = ewa["metadata"]["namespace"]
        metric = ewa["spec"].get("metric") or {}
        kind = metric.get("type", "celery")
        if kind == "prometheus":
            prom = metric["prometheus"]
            url = prom["url"].rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": prom["query"]})
            # The controller's image has no Ansible, so no ansible.module_utils.urls here.
            with urllib.request.build_opener().open(url, timeout=5) as response:
                result = json.loads(response.read())["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0
        if kind == "customMetrics":
            cm = metric.get("customMetrics") or {}
            path = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/%s/metrics/%s" % (
                ns, cm.get("metricName", "total_cluster_load"))
            from kubernetes.utils import parse_quantity
            response = self.kube.api_client.call_api(path, "GET", _preload_content=False, auth_settings=["BearerToken"])
            items = json.loads(response[0].data).get("items") or []
            return float(parse_quantity(items[0]["value"])) if items else None
        celery = metric.get("celery") or {}
        control = self.control_of(ew, celery.get("brokerSecretRef"))
        if control is None:
            return None
        live = [p for p in pods if not R.pod_terminating(p)]
        states = self.worker_states(control, live)
        if states is None:
            return None
        self._fill_concurrency(control, live, states)
        # a draining worker takes no new task: its slots do not count
        for p in live:
            if drain_phase(p) and p["metadata"]["name"] in states:
                states[p["metadata"]["name"]]["concurrency"] = 0
                states[p["metadata"]["name"]].setdefault("alive", True)
        queues = celery.get("queues") or (ew["spec"].get("drain") or {}).get("queues") or ["default"]
        queued = queue_length(control, queues)
        if queued is None:
            return None
        # Workers wanted but not answering yet count as empty ones of the size seen so far.
        answering = sum(1 for p in live
                        if not drain_phase(p) and (states.get(p["metadata"]["name"]) or {}).get("alive"))
        size = max([self._concurrency.get(p["metadata"]["uid"]) or 0 for p in live] + [1])
        load = R.celery_load(states, queued, concurrency_default=size,
                             starting=max(0, R.desired_replicas(ew) - answering))
        return float("inf") if load is None else load

    def reconcile_autoscaler(self, ewa, force=False):
        ns, name = ewa["metadata"]["namespace"], ewa["metadata"]["name"]
        spec = ewa.get("spec") or {}
        uid = ewa["metadata"]["uid"]
        now_m = time.monotonic()
        if not force and self._next_poll.get(uid, 0) > now_m:
            return None
        self._next_poll[uid] = now_m + int(spec.get("pollIntervalSeconds", R.DEFAULT_POLL_INTERVAL))
        target = spec["scaleTargetRef"]["name"]
        ew = self.caches["elasticworkers"].get(ns, target)
        report = {"name": name, "namespace": ns, "target": target}
        if ew is None:
            report["error"] = "ElasticWorker %s not found" % target
            return report
        pods = self.pods_of(ew)
        try:
            load = self.measure(ewa, ew, pods)
        except Exception as exc:
            LOG.warning("%s/%s: cannot measure the load: %s", ns, name, exc)
            load = None
        current = R.desired_replicas(ew)
        desired, fields, reason = R.autoscale(spec, ewa.get("status") or {}, current, load, self.clock(),
                                              target_bounds=R.bounds(ew["spec"]))
        report.update(load=load, current=current, desired=desired, reason=reason)
        if self.dry_run:
            return report
        status = dict(fields)
        status["lastDecision"] = reason
        status["observedGeneration"] = ewa["metadata"].get("generation", 0)
        if desired != (ew["spec"].get("replicas")):
            obj = json.loads(self.kube.scale(ns, target, desired).data)
            self._event(ewa, "Scaled", "%s: %s" % (target, reason))
            status["lastScaleTime"] = K.now_rfc3339()
            # the scale response is the Scale object; reflect spec.replicas in the cache
            ew = json.loads(json.dumps(ew))
            ew["spec"]["replicas"] = obj["spec"]["replicas"]
            self.caches["elasticworkers"].update(ew)
        ok = load is not None
        status["conditions"] = R.merge_conditions(
            (ewa.get("status") or {}).get("conditions"),
            [{"type": "ScalingActive", "status": "True" if ok else "False",
              "reason": "ValidMetric" if ok else "MetricUnavailable", "message": reason}],
            K.now_rfc3339())
        self._patch_status(R.EWA_PLURAL, "elasticworkerautoscalers", ns, name, status)
        return report

    # -------------------------------------------------------------- everything

    def forget_gone(self):
        """Drop what is kept per object (drains, pool sizes and finished tasks still
        listed per pod, expected pods per ElasticWorker, poll times per
        autoscaler) once it left the cache."""
        for cache, kept_maps in (("pods", (self._drains, self._concurrency)),
                                 ("elasticworkers", (self._expect_create,)),
                                 ("elasticworkerautoscalers", (self._next_poll,))):
            if not any(kept_maps):
                continue
            live = set(o["metadata"].get("uid") for o in self.caches[cache].items())
            for kept in kept_maps:
                for uid in [u for u in kept if u not in live]:
                    del kept[uid]
        if self._finished_since:  # keyed by Celery worker name: the pods' names
            live = set(R.worker_name(p["metadata"]["name"]) for p in self.caches["pods"].items())
            for host in [h for h in self._finished_since if h not in live]:
                del self._finished_since[host]
        if self.throttle.keys():
            live = set()
            for cache in ("pods", "elasticworkers", "elasticworkerautoscalers"):
                live.update(o["metadata"].get("uid") for o in self.caches[cache].items())
            self.throttle.forget(set(k for k in self.throttle.keys() if k.split("/")[0] in live))

    def reconcile_all(self, force_autoscalers=False):
        """One pass over everything; each object on its own (a failure backs that object off).

        ``NotLeader`` (a write refused by the fence) ends the pass at once.
        The workers are asked once per pass: an autoscaler's measurement and its
        ElasticWorker's observation share the answer (a drain asks afresh).
        """
        self.forget_gone()
        self._pass_loads = {}
        try:
            return self._reconcile_each(force_autoscalers)
        finally:
            self._pass_loads = None

    def _reconcile_each(self, force_autoscalers):
        reports = []
        now = self.monotonic()
        for kind, objects, fn in (
                ("autoscaler", self.caches["elasticworkerautoscalers"].items(),
                 lambda o: self.reconcile_autoscaler(o, force=force_autoscalers)),
                ("ElasticWorker", self.caches["elasticworkers"].items(), self.reconcile_elastic_worker)):
            for obj in objects:
                if obj["metadata"].get("deletionTimestamp"):
                    continue
                uid = obj["metadata"].get("uid")
                wait = self.throttle.blocked(uid, now)
                if wait > 0:
                    reports.append({"name": obj["metadata"]["name"], "requeue_after": wait,
                                    "error": self.throttle.error(uid)})
                    continue
                try:
                    r = fn(obj)
                except K.NotLeader:
                    raise
                except Exception as exc:
                    delay = self.throttle.failed(uid, now, "%s: %s" % (type(exc).__name__, exc))
                    LOG.exception("%s %s failed (retry in %.0fs)", kind, obj["metadata"]["name"], delay)
                    reports.append({"name": obj["metadata"]["name"], "requeue_after": delay, "error": str(exc)})
                    continue
                self.throttle.succeeded(uid)
                if r:
                    reports.append(r)
        return reports

    @staticmethod
    def requeue_after(reports, default):
        """Seconds until the next pass is due: the smallest requeue_after of the reports, at most ``default``."""
        return min([default] + [r["requeue_after"] for r in reports if r.get("requeue_after") is not None])


def queue_length(control, queues):
    """Messages waiting in the broker queues (None: the broker cannot be asked)."""
    try:
        return control.queue_length(queues)
    except CeleryControlError as exc:
        LOG.warning("cannot read the queue length: %s", exc)
        return None


# ------------------------------------------------------------------ the long-lived loop


class Health(threading.Thread):
    """GET /healthz (the loop is alive, the lease renewed while leading) and /readyz (caches synced,
    every watch progressing) on a tiny HTTP server."""

    def __init__(self, port, controller):
        threading.Thread.__init__(self, name="health", daemon=True)
        self.controller = controller
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self):
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass

    def run(self):
        while True:
            try:
                conn, _unused = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(2)
                request = conn.recv(1024).decode("latin-1")
                path = request.split(" ")[1] if " " in request else "/"
                ok, body = self.controller.health(path)
                payload = json.dumps(body).encode()
                conn.sendall(("HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                              "Connection: close\r\n\r\n" % ("200 OK" if ok else "503 Service Unavailable",
                                                             len(payload))).encode() + payload)
            except Exception:
                pass
            finally:
                conn.close()


class Controller:
    """The long-lived loop: informers, leader election, one pass per change or resync.

    Elects only after the caches have synced. While leading, every write (API
    and Celery broadcasts that change a worker) is fenced by the elector's
    leader deadline; when the Lease is lost, the pass stops at its next write
    and the in-flight drains are forgotten (the next leader resumes them from
    the pods' records). ``stop()`` (SIGTERM) makes ``run()`` return within a
    few seconds: the informers' watches are cut, not waited for.
    """

    def __init__(self, kube, namespace, lease_namespace, lease_name, identity, lease_duration=15,
                 renew_deadline=10, retry_period=2, resync_seconds=2.0, celery_timeout=1.0, informer_options=None):
        self.kube = kube
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.informers = kube.informers(self._changed, **(informer_options or {}))
        self.elector = K.LeaderElector(kube, lease_namespace, lease_name, identity, lease_duration=lease_duration,
                                       renew_deadline=renew_deadline, retry_period=retry_period)
        kube.fence = self.elector.is_leader_now
        self.reconciler = Reconciler(kube, self.informers, celery_timeout=celery_timeout,
                                     fence=self.elector.is_leader_now)
        self.resync = float(resync_seconds)
        self.heartbeat = time.monotonic()
        self.passes = 0
        self._lost_lease = threading.Event()
        self._elect_thread = None

    def _changed(self, kind, event, obj):
        self.wake.set()

    def health(self, path):
        age = time.monotonic() - self.heartbeat
        synced = all(i.synced.is_set() for i in self.informers.values())
        stalled = sorted(k for k, i in self.informers.items() if not i.progressing())
        lease_ok, lease_message = self.elector.check()
        body = {"leader": self.elector.is_leader, "identity": self.elector.identity, "synced": synced,
                "stalled_watches": stalled, "lease": lease_message,
                "loop_age_seconds": round(age, 1), "passes": self.passes}
        if path.startswith("/readyz"):
            return synced and not stalled, body
        return age < max(60.0, 10 * self.resync) and lease_ok, body

    def _elect(self):
        while not self.stopping.is_set():
            was = self.elector.is_leader
            try:
                self.elector.try_acquire_or_renew()
            except Exception as exc:
                LOG.warning("lease: %s", exc)
            now = self.elector.is_leader
            if now != was:
                LOG.info("%s leadership: %s", self.elector.identity, "acquired" if now else "lost")
                if not now:
                    self._lost_lease.set()
                self.wake.set()
            self.stopping.wait(self.elector.next_wait())

    def run(self):
        for informer in self.informers.values():
            informer.start()
        try:
            for informer in self.informers.values():
                while not informer.synced.wait(0.2):
                    if self.stopping.is_set():
                        return
            LOG.info("caches synced; %s is waiting for the lease", self.elector.identity)
            self._elect_thread = threading.Thread(target=self._elect, name="lease", daemon=True)
            self._elect_thread.start()
            wait = self.resync
            while not self.stopping.is_set():
                self.wake.wait(wait)
                self.wake.clear()
                self.heartbeat = time.monotonic()
                wait = self.resync
                if self._lost_lease.is_set() or not self.elector.is_leader:
                    if self._lost_lease.is_set():
                        self._lost_lease.clear()
                        self.reconciler.forget_in_flight()
                    continue
                try:
                    reports = self.reconciler.reconcile_all()
                except K.NotLeader as exc:
                    LOG.info("pass stopped: %s", exc)
                    self.reconciler.forget_in_flight()
                    continue
                self.passes += 1
                wait = max(0.05, Reconciler.requeue_after(reports, self.resync))
        finally:
            self.stopping.set()
            self.elector.release()
            for informer in self.informers.values():
                informer.stop(wait=0)
            self.reconciler.close()

    def stop(self, *_):
        self.stopping.set()
        self.wake.set()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m elastic.controller",
                                     description="ElasticWorker controller of elastic_airflow.cluster")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None)
    parser.add_argument("--context", default=None)
    parser.add_argument("--namespace", default=os.environ.get("WATCH_NAMESPACE") or None,
                        help="namespace to watch (default: the pod's own; '' for all)")
    parser.add_argument("--lease-namespace", default=None)
    parser.add_argument("--lease-name", default=os.environ.get("LEASE_NAME", "elastic-worker-controller"))
    parser.add_argument("--identity",
                        default=os.environ.get("POD_NAME") or "%s-%d" % (socket.gethostname(), os.getpid()))
    parser.add_argument("--lease-duration", type=float, default=float(os.environ.get("LEASE_DURATION", "15")))
    parser.add_argument("--renew-deadline", type=float, default=None,
                        help="seconds a leader keeps acting without a renewal (default: 2/3 of the lease duration)")
    parser.add_argument("--retry-period", type=float, default=None,
                        help="seconds between lease attempts (default: 2/15 of the lease duration)")
    parser.add_argument("--resync-seconds", type=float, default=2.0)
    parser.add_argument("--celery-timeout", type=float, default=1.0)
    parser.add_argument("--health-port", type=int, default=int(os.environ.get("HEALTH_PORT", "8080")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    namespace = args.namespace
    if namespace is None:
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
                namespace = fh.read().strip()
        except OSError:
            parser.error("--namespace is required outside the cluster")
    lease_ns = args.lease_namespace or namespace or "default"
    kube = K.Kube(K.load_client(args.kubeconfig, args.context), namespace or None)
    controller = Controller(kube, namespace, lease_ns, args.lease_name, args.identity,
                            lease_duration=args.lease_duration,
                            renew_deadline=args.renew_deadline or args.lease_duration * 2.0 / 3.0,
                            retry_period=args.retry_period or args.lease_duration * 2.0 / 15.0,
                            resync_seconds=args.resync_seconds, celery_timeout=args.celery_timeout)
    health = Health(args.health_port, controller)
    health.start()
    signal.signal(signal.SIGTERM, controller.stop)
    signal.signal(signal.SIGINT, controller.stop)
    LOG.info("elastic worker controller %s: namespace %s, lease %s/%s, health :%d",
             args.identity, namespace or "<all>", lease_ns, args.lease_name, health.port)
    controller.run()
    health.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())  # the controller's own process (python -m elastic.controller), not a module
