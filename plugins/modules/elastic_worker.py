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
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
author: elastic_airflow developers (@elastic_airflow)
"""

EXAMPLES = r"""
- name: Reconcile the Airflow workers once, showing the decision only
  elastic_airflow.cluster.elastic_worker:
    name: airflow-worker
    namespace: airflow
  check_mode: true
  register: decision

- name: Scale in now (drains idle workers first; busy ones are kept)
  elastic_airflow.cluster.elastic_worker:
    name: airflow-worker
    namespace: airflow
    autoscale: true
"""

RETURN = r"""
autoscaler:
  description: The autoscaler's decision; absent without an ElasticWorkerAutoscaler.
  returned: when autoscale and an ElasticWorkerAutoscaler of that name exists
  type: dict
  contains:
    load:
      description: Measured load in percent of the target (null when it could not be measured).
      type: float
      sample: 150.0
    current:
      description: Replicas before the decision.
      type: int
      sample: 2
    desired:
      description: Replicas the autoscaler asks for.
      type: int
      sample: 3
    reason:
      description: Why, in words (also the autoscaler's status.lastDecision).
      type: str
      sample: "load 150.0% > target 100.0%: 2 -> 3"
plan:
  description: What this pass decided.
  returned: always
  type: dict
  contains:
    create:
      description: Worker pods to create.
      type: list
      elements: str
      sample: [airflow-worker-7f3k2]
    delete:
      description: Pods to delete now (drained, failed or outdated while idle), with the reason.
      type: list
      elements: dict
      sample: [{"pod": "airflow-worker-x9q2d", "reason": "drained"}]
    drain:
      description: Pods whose drain starts (idle workers chosen for scale-in).
      type: list
      elements: str
      sample: [airflow-worker-x9q2d]
    step_drain:
      description: Pods whose drain in progress is advanced (a drain that finishes is deleted by the next pass).
      type: list
      elements: str
      sample: [airflow-worker-k2m8s]
    cancel_drain:
      description: Pods whose drain is rolled back (load came back).
      type: list
      elements: str
      sample: []
    status:
      description: The ElasticWorker status the pass writes.
      type: dict
      sample: {"replicas": 3, "desiredReplicas": 3, "readyReplicas": 3, "busy": 2, "idle": 1, "draining": 0}
    messages:
      description: Why scale-in waits (condition ScaleInBlocked).
      type: list
      elements: str
      sample: ["scale-in waits: the Celery workers could not be asked"]
    rollout:
      description: How a rolling template change stands (condition UpToDate).
      type: list
      elements: str
      sample: []
actions:
  description: What was done (empty in check mode).
  returned: always
  type: list
  elements: str
  sample: ["created airflow-worker-7f3k2"]
drains:
  description: Drain phase per pod being drained.
  returned: always
  type: dict
  sample: {"airflow-worker-x9q2d": "draining"}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic_worker_module import (
    ElasticWorkerNotFound,
    argument_spec,
    reconcile_once,
    require_libraries,
)


def main():
    module = AnsibleModule(argument_spec=argument_spec(autoscale=dict(type="bool", default=True)),
                           supports_check_mode=True)
    require_libraries(module)
    try:
        result = reconcile_once(module.params, dry_run=module.check_mode)
    except ElasticWorkerNotFound as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # report API/broker errors as a failure, not a traceback
        module.fail_json(msg="reconcile of %s failed: %s" % (module.params["name"], exc),
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
