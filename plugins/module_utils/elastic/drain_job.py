# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""One run of the ``celery_worker_drain`` module, without Ansible.

The module is a thin shell, as kubernetes.core's are: it declares the options
and turns what ``run`` returns, or the ``DrainJobFailed`` it raises, into
``exit_json`` / ``fail_json``. Everything else is here, in the order a run
does it:

1. ``validate`` the parameters (before anything is read or changed);
2. ``find_targets``: the pods (by name and label selector, keyed to their uid)
   and the Celery hostnames to drain;
3. ``open_store``: where drain records live (pod annotations, a state file,
   or memory);
4. ``check`` (check mode: what would happen), or ``drain`` / ``restore``, then
   ``delete_drained_pods``;
5. ``outcome``: the module's result, or a failure naming every failed worker.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections import namedtuple

from .celery_control import CeleryControl, CeleryControlError
from .drain import Drain, DrainError, FileStore, MemoryStore, WorkerGone, run_all
from .k8s_store import PodAnnotationStore

# key: the store key and result name (pod name, or Celery hostname without a pod);
# pod: the pod name or None; uid: the pod's uid when it exists (None: gone);
# exists: False for a pod that is gone (nothing to drain).
Target = namedtuple("Target", "key hostname pod uid exists")


class DrainJobFailed(Exception):
    """The run failed: ``msg`` for the user, ``result`` (changed, workers, drained) for the module's output."""

    def __init__(self, msg, **result):
        super(DrainJobFailed, self).__init__(msg)
        self.msg = msg
        self.result = result


def validate(params):
    """Raise DrainJobFailed naming the first bad option and what is allowed."""
    if not params.get("broker_url"):
        raise DrainJobFailed("broker_url is required (or the environment variable ELASTIC_AIRFLOW_BROKER_URL)")
    for name in ("timeout", "poll_interval", "control_timeout"):
        if params[name] is None or params[name] <= 0:
            raise DrainJobFailed("%s must be a number of seconds > 0, got %r" % (name, params[name]))
    if not (params["workers"] or params["label_selectors"] or params["celery_hostnames"]):
        raise DrainJobFailed("nothing to drain: give workers (pod names), label_selectors or celery_hostnames")
    if (params["workers"] or params["label_selectors"]) and not params["namespace"]:
        raise DrainJobFailed("namespace is required with workers or label_selectors")
    if "{pod}" not in params["hostname_template"]:
        raise DrainJobFailed("hostname_template must contain {pod}, got %r" % params["hostname_template"])
    for name in ("workers", "label_selectors", "celery_hostnames"):
        if any(not (v or "").strip() for v in params[name]):
            raise DrainJobFailed("%s must not contain empty names" % name)


def uses_pods(params):
    return bool(params["workers"] or params["label_selectors"])


def _resolve_pods(core_v1, namespace, workers, label_selectors):
    """[(pod name, uid or None if gone)] from names + selectors, in order, without duplicates."""
    found = {}
    for name in workers:
        try:
            pod = core_v1.read_namespaced_pod(name, namespace)
            found.setdefault(name, None if pod.metadata.deletion_timestamp else pod.metadata.uid)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise DrainJobFailed("cannot read pod %s/%s: %s" % (namespace, name, exc)) from exc
            found.setdefault(name, None)
    for selector in label_selectors:
        try:
            pods = core_v1.list_namespaced_pod(namespace, label_selector=selector).items
        except Exception as exc:
            raise DrainJobFailed(
                "cannot list pods in %s with label_selectors %r: %s" % (namespace, selector, exc)) from exc
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            if not pod.metadata.deletion_timestamp:
                found.setdefault(pod.metadata.name, pod.metadata.uid)
    return list(found.items())


def find_targets(params, core_v1):
    """The Targets: pods first (in the order given), then Celery hostnames not already named by a pod."""
    targets = []
    if uses_pods(params):
        for name, uid in _resolve_pods(core_v1, params["namespace"], params["workers"], params["label_selectors"]):
            hostname = params["hostname_template"].replace("{pod}", name)
            targets.append(Target(name, hostname, name, uid, uid is not None))
    keys = set(t.key for t in targets)
    for hostname in params["celery_hostnames"]:
        if hostname not in keys:
            keys.add(hostname)
            targets.append(Target(hostname, hostname, None, None, True))
    return targets


def open_store(params, core_v1, targets):
    """Where drain records are kept: the state file, else the pods' annotations, else memory."""
    if params["state_file"]:
        return FileStore(params["state_file"])
    if core_v1 is not None:
        # keyed to the uids read now: a pod replaced by another of that name is gone
        return PodAnnotationStore(core_v1, params["namespace"],
                                  uids=dict((t.pod, t.uid) for t in targets if t.pod and t.uid))
    return MemoryStore()


def _blank(target, state, reason=None, msg=None):
    """A result entry for a worker no drain ran on."""
    return {"worker": target.key, "pod": target.pod, "hostname": target.hostname, "state": state,
            "reason": reason, "msg": msg, "queues": [], "tasks_finished": 0, "task_ids": [], "seconds": None,
            "resumed": False, "load": None}


def _from_status(status, pod, state=None):
    """A result entry from a Drain's status (``state`` overrides its phase, e.g. ``deleted``)."""
    d = status.to_dict()
    return {"worker": status.worker, "pod": pod, "hostname": status.hostname, "state": state or status.phase,
            "reason": d["reason"], "msg": d["error"], "queues": d["queues"], "tasks_finished": d["tasks_finished"],
            "task_ids": d["tasks"], "seconds": d["seconds"], "resumed": d["resumed"], "load": d["load"]}


def _check_one(params, control, store, target):
    """(would change, entry) for one target in check mode; reads only."""
    entry = _blank(target, None)
    record = None
    exists = target.exists
    try:
        record = store.get(target.key) if exists else None
    except WorkerGone:
        exists = False
    except DrainError as exc:
        entry.update(state="failed", msg=str(exc))
        return False, entry
    if not exists:
        entry["state"] = "gone"
        return False, entry
    if params["state"] == "restored":
        entry["state"] = "would_restore" if record else "idle"
        entry["queues"] = [q["name"] for q in (record or {}).get("queues", [])]
        return bool(record), entry
    try:
        if not control.ping([target.hostname]).get(target.hostname):
            entry.update(state="failed", msg="unknown worker: celery hostname %r did not answer ping" % target.hostname)
            return False, entry
        load = control.workload([target.hostname]).get(target.hostname)
        entry["load"] = load.counts() if load else None
        entry["queues"] = [q.name for q in control.queues(target.hostname)]
    except CeleryControlError as exc:
        entry.update(state="failed", msg=str(exc))
        return False, entry
    if record and record.get("phase") == "drained":
        entry["state"] = "drained"
        entry["queues"] = [q["name"] for q in record.get("queues", [])]
        return bool(params["delete_pod"]), entry
    entry.update(state="would_drain", resumed=bool(record))
    return True, entry


def check(params, control, store, targets):
    """Check mode: (changed, entries) saying what a run would do, changing nothing."""
    changed = False
    entries = []
    for target in targets:
        would_change, entry = _check_one(params, control, store, target)
        changed = changed or would_change
        entries.append(entry)
    return changed, entries


def restore(drains):
    """Roll back every drain (consumers back); changed when one had something to roll back."""
    changed = False
    for d in drains.values():
        try:
            status = d.abort("aborted")
        except CeleryControlError as exc:
            status = d.status
            status.phase, status.error = "failed", "could not restore consumers: %s (record kept)" % exc
        changed = changed or status.reason != "nothing to roll back"
    return changed


def drain(store, drains):
    """Run every drain concurrently; changed unless each was already drained before this run (or failed/gone)."""
    already_drained = {}
    for key in drains:
        try:
            already_drained[key] = (store.get(key) or {}).get("phase") == "drained"
        except Exception:  # gone or unreadable: the drain itself reports it
            already_drained[key] = False
    run_all(list(drains.values()))
    return any(d.status.phase not in ("gone", "failed") and not (d.status.phase == "drained" and already_drained[k])
               for k, d in drains.items())


def delete_drained_pods(core_v1, namespace, targets, drains):
    """Delete the pod of each drained worker, preconditioned on the uid read at the start.

    Returns {key: entry} for the pods deleted or found gone; a failed delete
    turns the drain's status into ``failed``.
    """
    from kubernetes import client

    entries = {}
    for target in targets:
        d = drains.get(target.key)
        if d is None or d.status.phase != "drained" or not target.pod:
            continue
        try:
            core_v1.delete_namespaced_pod(target.pod, namespace, body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid=target.uid)))
            entries[target.key] = _from_status(d.status, target.pod, "deleted")
        except Exception as exc:
            if getattr(exc, "status", None) in (404, 409):  # gone, or another pod of that name now
                entries[target.key] = _from_status(d.status, target.pod, "gone")
            else:
                d.status.phase = "failed"
                d.status.error = "drained, but deleting pod %s failed: %s" % (target.pod, exc)
    return entries


def outcome(params, changed, entries):
    """The module's result; raises DrainJobFailed naming the workers that failed or timed out."""
    drained = [e["worker"] for e in entries if e["state"] in ("drained", "deleted")]
    failed = [e for e in entries if e["state"] == "failed"]
    timed_out = [e for e in entries if e["state"] == "restored" and e["reason"] == "timeout"]
    result = dict(changed=changed, workers=entries, drained=drained)
    if failed or timed_out:
        parts = []
        if timed_out:
            parts.append("%d worker(s) not idle within timeout=%ss, kept and consuming again: %s"
                         % (len(timed_out), params["timeout"], ", ".join(e["worker"] for e in timed_out)))
        parts.extend("%s: %s" % (e["worker"], e["msg"]) for e in failed)
        raise DrainJobFailed("; ".join(parts), **result)
    return result


def run(params, check_mode, core_v1=None, control=None):
    """One run of the module with its ``params``; returns its result or raises DrainJobFailed.

    ``core_v1`` is a kubernetes CoreV1Api, needed when ``workers`` or
    ``label_selectors`` name pods. ``control`` defaults to a CeleryControl on
    ``broker_url`` (the unit tests pass a scripted one).
    """
    validate(params)
    targets = find_targets(params, core_v1)
    store = open_store(params, core_v1 if uses_pods(params) else None, targets)
    any_exists = any(t.exists for t in targets)
    try:
        if control is None:
            control = CeleryControl(params["broker_url"], timeout=params["control_timeout"],
                                    result_backend=params.get("result_backend"))
        if any_exists:
            control.connect()  # fail early, before anything changes
    except (CeleryControlError, ValueError) as exc:
        raise DrainJobFailed("broker_url: %s" % exc, changed=False, workers=[], drained=[]) from exc
    if any_exists:
        try:
            control.check_result_backend()  # a backend that cannot be read would only make drains time out
        except CeleryControlError as exc:
            raise DrainJobFailed("result_backend: %s" % exc, changed=False, workers=[], drained=[]) from exc
    try:
        if check_mode:
            changed, entries = check(params, control, store, targets)
            return dict(changed=changed, workers=entries, drained=[e["worker"] for e in entries
                                                                   if e["state"] == "drained"])
        entries = {}
        drains = {}
        for target in targets:
            if target.exists:
                drains[target.key] = Drain(control, store, target.key, hostname=target.hostname,
                                           timeout=params["timeout"], poll_interval=params["poll_interval"])
                continue
            if params["state_file"]:
                store.delete(target.key)  # drop a stale record of a worker that is gone
            entries[target.key] = _blank(target, "gone", reason="pod does not exist")
        if params["state"] == "restored":
            changed = restore(drains)
        else:
            changed = drain(store, drains)
            if params["delete_pod"]:
                deleted = delete_drained_pods(core_v1, params["namespace"], targets, drains)
                entries.update(deleted)
                changed = changed or any(e["state"] == "deleted" for e in deleted.values())
        for target in targets:
            if target.key not in entries:
                entries[target.key] = _from_status(drains[target.key].status, target.pod)
    except DrainError as exc:
        raise DrainJobFailed("%s; fix or remove the drain record, then run again" % exc) from exc
    finally:
        control.close()
    return outcome(params, changed, [entries[t.key] for t in targets])
