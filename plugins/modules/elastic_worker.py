#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: elastic_worker
short_description: One reconcile pass of an ElasticWorker (and its ElasticWorkerAutoscaler)
description:
  - Runs the same logic as the in-cluster ElasticWorker controller, once, from the Ansible
    controller. It measures the load (autoscaler), creates missing worker pods, advances drains,
    drains idle workers on scale-in and deletes drained ones.
  - In check mode nothing changes; the result shows the decision (pods that would be created,
    drained, deleted, and the autoscaler's desired replicas).
  - Do not run it while the in-cluster controller holds the Lease unless you mean to act twice.
version_added: "0.1.0"
options:
  autoscale: {description: Also run the ElasticWorkerAutoscaler that targets it (same name)., type: bool, default: true}
extends_documentation_fragment: [elastic_airflow.cluster.elastic_worker]
author: elastic_airflow developers
"""

EXAMPLES = r"""
- name: Reconcile the Airflow workers once, showing the decision only
  elastic_airflow.cluster.elastic_worker:
    name: airflow-worker
    namespace: airflow
  check_mode: true
  register: decision
"""

RETURN = r"""
autoscaler:
  description: The autoscaler's decision (load in percent, current and desired replicas, reason); absent without one.
  returned: when autoscale and an ElasticWorkerAutoscaler of that name exists
  type: dict
plan:
  description: Pods to create, drain, roll back and delete, the new status, and why scale-in waits.
  returned: always
  type: dict
actions:
  description: What was done (empty in check mode).
  returned: always
  type: list
  elements: str
drains:
  description: Drain phase per pod being drained.
  returned: always
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic_worker_module import (
    C,
    argument_spec,
    read_elastic_worker,
    require_libraries,
)


def one_pass(module, dry_run):
    p = module.params
    kube, caches, ew = read_elastic_worker(module)
    rec = C.Reconciler(kube, caches, dry_run=dry_run, celery_timeout=p["celery_timeout"])
    try:
        result = {}
        ewa = caches["elasticworkerautoscalers"].get(p["namespace"], p["name"])
        if p["autoscale"] and ewa is not None:
            result["autoscaler"] = rec.reconcile_autoscaler(ewa, force=True)
            ew = caches["elasticworkers"].get(p["namespace"], p["name"])
            if dry_run and result["autoscaler"].get("desired") is not None:
                ew = dict(ew, spec=dict(ew["spec"], replicas=result["autoscaler"]["desired"]))
        report = rec.reconcile_elastic_worker(ew)
    finally:
        rec.close()
    if report.get("failures"):  # the controller backs these off; a one-shot pass reports them
        raise RuntimeError("; ".join("%s: %s" % item for item in sorted(report["failures"].items())))
    result.update(plan=report["plan"], actions=report["actions"], drains=report["drains"])
    autoscaler = result.get("autoscaler")
    scaled = bool(autoscaler) and autoscaler.get("desired") != autoscaler.get("current")
    result["changed"] = bool(report["changed"] or scaled)
    return result


def main():
    module = AnsibleModule(argument_spec=argument_spec(autoscale=dict(type="bool", default=True)),
                           supports_check_mode=True)
    require_libraries(module)
    try:
        module.exit_json(**one_pass(module, module.check_mode))
    except Exception as exc:  # report API/broker errors as a failure, not a traceback
        module.fail_json(msg="reconcile of %s failed: %s" % (module.params["name"], exc),
                         exception=traceback.format_exc())


if __name__ == "__main__":
    main()
