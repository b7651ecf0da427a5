# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""The elastic_worker* modules' work: their options, one reconcile pass, and the description of one ElasticWorker.

Ansible-specific, so it lives outside ``module_utils/elastic`` (pure Python);
the options are documented once in ``doc_fragments/elastic_worker.py``.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic import controller as C
    from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic import kube as K
    from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic import reconcile as R
    from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.drain import DrainError
    from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.k8s_store import pod_record
    IMPORT_ERROR = None
except ImportError:
    C = K = R = DrainError = pod_record = None
    IMPORT_ERROR = traceback.format_exc()

KINDS = ("pods", "elasticworkers", "elasticworkerautoscalers")


def argument_spec(**extra):
    """The common options (see the doc fragment elastic_airflow.cluster.elastic_worker) plus ``extra``."""
    spec = dict(
        name=dict(type="str", required=True),
        namespace=dict(type="str", required=True),
        kubeconfig=dict(type="path"),
        context=dict(type="str"),
        celery_timeout=dict(type="float", default=1.0),
    )
    spec.update(extra)
    return spec


def require_libraries(module):
    """Fail the module when the kubernetes client or Celery cannot be imported."""
    if IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("kubernetes and celery"), exception=IMPORT_ERROR)


class ElasticWorkerNotFound(Exception):
    pass


def read_elastic_worker(params):
    """(kube, caches, ElasticWorker) for params' name/namespace, from one LIST of each kind.

    The caches are ``MemoryCache``s of pods, ElasticWorkers and
    ElasticWorkerAutoscalers, as a ``controller.Reconciler`` takes them.
    Raises ElasticWorkerNotFound.
    """
    kube = K.Kube(K.load_client(params["kubeconfig"], params["context"]), params["namespace"])
    caches = dict((kind, C.MemoryCache(kube.list_once(kind))) for kind in KINDS)
    ew = caches["elasticworkers"].get(params["namespace"], params["name"])
    if ew is None:
        raise ElasticWorkerNotFound("ElasticWorker %s/%s not found" % (params["namespace"], params["name"]))
    return kube, caches, ew


def reconcile_once(params, dry_run):
    """The elastic_worker module: one controller pass (autoscaler first, if asked); its result dict.

    ``dry_run`` (check mode) decides without writing. A pass the controller
    would back off object by object (``report["failures"]``) is a failure here.
    """
    kube, caches, ew = read_elastic_worker(params)
    rec = C.Reconciler(kube, caches, dry_run=dry_run, celery_timeout=params["celery_timeout"])
    try:
        result = {}
        ewa = caches["elasticworkerautoscalers"].get(params["namespace"], params["name"])
        if params["autoscale"] and ewa is not None:
            result["autoscaler"] = rec.reconcile_autoscaler(ewa, force=True)
            ew = caches["elasticworkers"].get(params["namespace"], params["name"])
            if dry_run and result["autoscaler"].get("desired") is not None:
                # nothing was scaled: decide as if it had been
                ew = dict(ew, spec=dict(ew["spec"], replicas=result["autoscaler"]["desired"]))
        report = rec.reconcile_elastic_worker(ew)
    finally:
        rec.close()
    if report.get("failures"):
        raise RuntimeError("; ".join("%s: %s" % item for item in sorted(report["failures"].items())))
    result.update(plan=report["plan"], actions=report["actions"], drains=report["drains"])
    autoscaler = result.get("autoscaler")
    scaled = bool(autoscaler) and autoscaler.get("desired") != autoscaler.get("current")
    result["changed"] = bool(report["changed"] or scaled)
    return result


def describe(params):
    """The elastic_worker_info module's result: spec, status, each worker's state and drain, the autoscaler."""
    kube, caches, ew = read_elastic_worker(params)
    rec = C.Reconciler(kube, caches, dry_run=True, celery_timeout=params["celery_timeout"])
    try:
        pods = rec.pods_of(ew)
        control = rec.control_of(ew)
        states = rec.worker_states(control, pods)
    finally:
        rec.close()
    workers, drains = [], {}
    for pod in sorted(pods, key=lambda x: x["metadata"]["name"]):
        name = pod["metadata"]["name"]
        try:
            phase = (pod_record(pod) or {}).get("phase")
        except DrainError:
            phase = "unreadable"
        if phase:
            drains[name] = phase
        state = (states or {}).get(name) or {}
        workers.append({"pod": name, "hostname": R.worker_name(name), "phase": R.pod_phase(pod),
                        "ready": R.pod_ready(pod), "terminating": R.pod_terminating(pod),
                        "state": R.classify_worker(state) if states is not None else "unknown",
                        "active": state.get("active"), "reserved": state.get("reserved"), "drain": phase})
    ewa = caches["elasticworkerautoscalers"].get(params["namespace"], params["name"])
    spec = dict((k, ew["spec"].get(k)) for k in ("replicas", "minReplicas", "maxReplicas", "scaleInPolicy"))
    return dict(changed=False, status=ew.get("status") or {}, spec=spec, workers=workers, pending_drains=drains,
                autoscaler=(ewa or {}).get("status") or {})
