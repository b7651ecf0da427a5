#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: elastic_worker_info
short_description: Status of an ElasticWorker, busy/idle per worker, pending drains
description:
  - Reads the ElasticWorker, its pods and (with a broker) each Celery worker's active and
    reserved tasks; changes nothing.
version_added: "0.1.0"
extends_documentation_fragment: [elastic_airflow.cluster.elastic_worker]
author: elastic_airflow developers
"""

EXAMPLES = r"""
- name: Which workers are busy?
  elastic_airflow.cluster.elastic_worker_info:
    name: airflow-worker
    namespace: airflow
  register: workers
"""

RETURN = r"""
status:
  description: The ElasticWorker's status as the controller wrote it.
  returned: always
  type: dict
spec:
  description: replicas, minReplicas, maxReplicas, scaleInPolicy.
  returned: always
  type: dict
workers:
  description: One entry per pod, with phase, ready, state (busy, idle, unknown), active, reserved and drain phase.
  returned: always
  type: list
  elements: dict
pending_drains:
  description: Pods with a drain record, and its phase (C(unreadable) when the record cannot be parsed).
  returned: always
  type: dict
autoscaler:
  description: The status of the ElasticWorkerAutoscaler of the same name, if any.
  returned: always
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.drain import DrainError
from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.k8s_store import pod_record
from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic_worker_module import (
    C,
    R,
    argument_spec,
    read_elastic_worker,
    require_libraries,
)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    require_libraries(module)
    p = module.params
    try:
        kube, caches, ew = read_elastic_worker(module)
        rec = C.Reconciler(kube, caches, dry_run=True, celery_timeout=p["celery_timeout"])
        pods = rec.pods_of(ew)
        control = rec.control_for(p["namespace"], (ew["spec"].get("drain") or {}).get("brokerSecretRef"))
        states = rec.worker_states(control, pods)
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
            st = (states or {}).get(name) or {}
            workers.append({"pod": name, "hostname": R.worker_name(name), "phase": R.pod_phase(pod),
                            "ready": R.pod_ready(pod), "terminating": R.pod_terminating(pod),
                            "state": R.classify_worker(st) if states is not None else "unknown",
                            "active": st.get("active"), "reserved": st.get("reserved"), "drain": phase})
        ewa = caches["elasticworkerautoscalers"].get(p["namespace"], p["name"])
        spec = dict((k, ew["spec"].get(k)) for k in ("replicas", "minReplicas", "maxReplicas", "scaleInPolicy"))
        module.exit_json(changed=False, status=ew.get("status") or {}, spec=spec, workers=workers,
                         pending_drains=drains, autoscaler=(ewa or {}).get("status") or {})
    except Exception as exc:
        module.fail_json(msg="cannot read ElasticWorker %s: %s" % (p["name"], exc), exception=traceback.format_exc())


if __name__ == "__main__":
    main()
