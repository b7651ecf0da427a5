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
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: It only reads, in and out of check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: N/A
    details: It changes nothing.
author: elastic_airflow developers (@elastic_airflow)
"""

EXAMPLES = r"""
- name: Which workers are busy?
  elastic_airflow.cluster.elastic_worker_info:
    name: airflow-worker
    namespace: airflow
  register: workers

- name: Show the idle ones
  ansible.builtin.debug:
    msg: "{{ workers.workers | selectattr('state', 'equalto', 'idle') | map(attribute='pod') | list }}"
"""

RETURN = r"""
status:
  description: The ElasticWorker's status as the controller wrote it.
  returned: always
  type: dict
  sample: {"replicas": 2, "desiredReplicas": 2, "readyReplicas": 2, "busy": 1, "idle": 1, "draining": 0}
spec:
  description: Its replicas, minReplicas, maxReplicas and scaleInPolicy.
  returned: always
  type: dict
  contains:
    replicas: {description: Desired workers., type: int, sample: 2}
    minReplicas: {description: Lower bound., type: int, sample: 1}
    maxReplicas: {description: Upper bound., type: int, sample: 10}
    scaleInPolicy:
      description: How scale-in picks workers (its C(type), C(IdleOnly) by default).
      type: dict
      sample: {"type": "IdleOnly"}
workers:
  description: One entry per worker pod, by name.
  returned: always
  type: list
  elements: dict
  contains:
    pod: {description: Pod name., type: str, sample: airflow-worker-7f3k2}
    hostname: {description: Its Celery hostname., type: str, sample: celery@airflow-worker-7f3k2}
    phase: {description: Pod phase., type: str, sample: Running}
    ready: {description: Whether the pod is Ready., type: bool, sample: true}
    terminating: {description: Whether the pod is being deleted., type: bool, sample: false}
    state:
      description: C(busy) (holds a task), C(idle), or C(unknown) (no Celery answer, or no broker).
      type: str
      sample: idle
    active: {description: Tasks it runs now (null when unknown)., type: int, sample: 0}
    reserved: {description: Tasks it prefetched (null when unknown)., type: int, sample: 0}
    drain: {description: "Its drain phase; null when no drain is recorded.", type: str, sample: null}
pending_drains:
  description: Pods with a drain record, and its phase (C(unreadable) when the record cannot be parsed).
  returned: always
  type: dict
  sample: {"airflow-worker-x9q2d": "draining"}
autoscaler:
  description: The status of the ElasticWorkerAutoscaler of the same name; empty without one.
  returned: always
  type: dict
  sample: {"currentReplicas": 2, "currentLoad": 50.0, "desiredReplicas": 2, "lastDecision": "load 50.0% within band"}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic_worker_module import (
    ElasticWorkerNotFound,
    argument_spec,
    describe,
    require_libraries,
)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    require_libraries(module)
    try:
        result = describe(module.params)
    except ElasticWorkerNotFound as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # report API/broker errors as a failure, not a traceback
        module.fail_json(msg="cannot read ElasticWorker %s: %s" % (module.params["name"], exc),
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
