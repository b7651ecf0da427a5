# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""What the elastic_worker* modules share: their options and reading one ElasticWorker.

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
    IMPORT_ERROR = None
except ImportError:
    C = K = R = None
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


def read_elastic_worker(module):
    """(kube, caches, ElasticWorker) for the module's name/namespace, from one LIST of each kind.

    The caches are ``MemoryCache``s of pods, ElasticWorkers and
    ElasticWorkerAutoscalers, as a ``controller.Reconciler`` takes them; fails
    the module when the ElasticWorker does not exist.
    """
    p = module.params
    kube = K.Kube(K.load_client(p["kubeconfig"], p["context"]), p["namespace"])
    caches = dict((kind, C.MemoryCache(kube.list_once(kind))) for kind in KINDS)
    ew = caches["elasticworkers"].get(p["namespace"], p["name"])
    if ew is None:
        module.fail_json(msg="ElasticWorker %s/%s not found" % (p["namespace"], p["name"]))
    return kube, caches, ew
