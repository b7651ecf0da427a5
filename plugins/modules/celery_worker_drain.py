#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: celery_worker_drain
short_description: Drain Celery workers safely, then optionally delete their pods
version_added: "0.1.0"
author:
  - elastic_airflow developers (@elastic_airflow)
description:
  - Drains Celery workers (for example Airflow CeleryExecutor workers) so that they can be removed without
    losing a task. For each worker it cancels the worker's queue consumers (the worker stops taking new
    tasks), waits until the worker holds no active, reserved (prefetched) or scheduled (ETA) task, and
    reports it C(drained). Only then, if O(delete_pod=true), it deletes the worker's pod.
  - If a worker is not idle within O(timeout) seconds, it is NOT deleted and its consumers are restored, so
    it takes tasks again; the module then fails and reports that worker as C(restored) with reason C(timeout).
  - The state of a drain in progress is recorded before anything is changed, on the pod as the annotation
    C(elastic-airflow.io/drain) (workers given as pods), or in O(state_file) (workers given as Celery
    hostnames). If a run is interrupted (killed, lost connection), the next run with the same workers
    resumes the drain (keeping its original deadline) or, if that deadline has passed, rolls it back and
    restores the consumers. O(state=restored) rolls back drains explicitly.
  - All workers are drained concurrently.
  - Where to run it. The module talks to the workers through the broker only, so it needs a broker URL
    that is reachable from where the module runs. Inside the cluster (a Job or the controller pod), use the
    broker Service, for example C(redis://:PASSWORD@airflow-broker:6379/0). From an operator's machine,
    forward the broker first, for example C(kubectl -n airflow port-forward svc/airflow-broker 6379:6379)
    and use C(redis://:PASSWORD@127.0.0.1:6379/0) (RabbitMQ likewise with port 5672 and C(amqp://)). The
    Kubernetes API is reached through O(kubeconfig) / O(context), or the in-cluster service account.
  - Check mode reports what would be drained (the workers, their queues and current load) and changes
    nothing.
options:
  broker_url:
    description:
      - URL of the Celery broker the workers use, C(redis://), C(rediss://), C(amqp://) or C(amqps://).
      - Can also be given as the environment variable E(ELASTIC_AIRFLOW_BROKER_URL); one of the two is required.
    type: str
  result_backend:
    description:
      - URL of the workers' Celery result backend (Airflow's C([celery] result_backend), for example
        C(db+postgresql://...)); optional.
      - With it, a task a worker lists as active that the backend records as finished (C(SUCCESS), C(FAILURE),
        C(REVOKED)) does not keep the drain waiting. Celery 5.5 lists the tasks that ended while the worker
        reconnected to its broker as active for good (celery/celery#8541), so without it such a worker never
        drains and the drain times out.
      - Only a task listed as active for 30 s or more is looked up, and only a record written at or after the
        time the worker started it counts (an earlier run's record does not clear a re-run).
      - The module reads the backend once before it changes anything and fails if it cannot. A C(db+) URL needs
        SQLAlchemy and the database driver on the host that runs the module; the table is Celery's default,
        C(celery_taskmeta).
      - Can also be given as the environment variable E(ELASTIC_AIRFLOW_RESULT_BACKEND).
    type: str
  workers:
    description:
      - Names of worker pods in O(namespace) to drain.
      - A pod that does not exist (already gone) is reported with state C(gone) and is not an error.
    type: list
    elements: str
    default: []
  label_selectors:
    description:
      - Drain every pod in O(namespace) matching all these label selectors,
        for example V(app.kubernetes.io/component=worker).
    type: list
    elements: str
    default: []
  celery_hostnames:
    description:
      - Celery hostnames of workers to drain directly, without Kubernetes (for example V(celery@worker-0)).
      - A hostname that does not answer is an error (unknown worker); nothing is changed for it.
      - O(delete_pod) does not apply to them.
    type: list
    elements: str
    default: []
  namespace:
    description:
      - Namespace of the worker pods. Required with O(workers) or O(label_selectors).
    type: str
  hostname_template:
    description:
      - How a pod name maps to its Celery hostname; C({pod}) is replaced by the pod name.
      - Airflow's C(airflow celery worker) uses C(celery@<hostname>) and a pod's hostname is its name.
    type: str
    default: "celery@{pod}"
  state:
    description:
      - V(drained) drains the workers (resuming drains in progress).
      - V(restored) rolls back drains in progress or drained workers that were not deleted, restoring the
        recorded consumers and removing the record. Workers without a record are left alone.
    type: str
    choices: [drained, restored]
    default: drained
  delete_pod:
    description:
      - Delete the pod of each drained worker (with its uid as precondition, so a replacement pod of the
        same name is never deleted).
      - Leave it V(false) for StatefulSet workers (a deleted StatefulSet pod is recreated); lower the
        StatefulSet's replicas instead, see the C(elastic_airflow.cluster.drain) playbook.
    type: bool
    default: false
  timeout:
    description:
      - Seconds a worker may take to become idle, counted from the start of its drain. When exceeded, the
        worker is kept and its consumers are restored. Must be > 0.
    type: float
    default: 600
  poll_interval:
    description:
      - Seconds between two polls of the workers' load. Must be > 0.
      - Once a worker was seen idle, the poll that confirms it (a worker counts as idle on two polls in a row)
        comes 0.1 s later instead, so an idle worker is drained in a fraction of a second.
    type: float
    default: 2
  control_timeout:
    description:
      - Seconds to wait for a worker's reply to one control command (and to connect to the broker).
        Must be > 0.
    type: float
    default: 2
  state_file:
    description:
      - JSON file recording drains of O(celery_hostnames) in progress, so that an interrupted run can be
        resumed or rolled back by the next one. Without it such drains are only kept in memory.
      - When given, it is also used for pods instead of the pod annotation.
    type: path
  kubeconfig:
    description:
      - Path to a kubeconfig. Default, the in-cluster service account when running in a pod, else
        E(KUBECONFIG) or C(~/.kube/config).
    type: path
  context:
    description:
      - The kubeconfig context to use.
    type: str
requirements:
  - python >= 3.8
  - celery >= 5.3 (with the redis extra for Redis brokers)
  - kubernetes >= 24.2.0 (only for O(workers) and O(label_selectors))
notes:
  - A drain waits for reserved (prefetched) tasks too; with Airflow's defaults
    (C(worker_prefetch_multiplier=1), C(task_acks_late=true)) a worker holds at most its concurrency.
  - A worker holding ETA/countdown tasks (scheduled) is only idle once they ran; such a drain may time out.
  - Another autoscaler acting on the same workers at the same time (HPA/KEDA) can still remove a busy pod;
    use the collection's elastic mode or pause the autoscaler.
  - Supports check mode.
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Drain two worker pods and delete them (Deployment or bare pods)
  elastic_airflow.cluster.celery_worker_drain:
    broker_url: "{{ broker_url }}"
    namespace: airflow
    workers:
      - airflow-worker-7c9f-abcde
      - airflow-worker-7c9f-fghij
    delete_pod: true
    timeout: 900

- name: Drain the two highest StatefulSet ordinals, then scale the StatefulSet down by two
  elastic_airflow.cluster.celery_worker_drain:
    broker_url: "{{ broker_url }}"
    namespace: airflow
    workers: [airflow-worker-4, airflow-worker-3]
  register: drain

- name: From a laptop, through `kubectl -n airflow port-forward svc/airflow-broker 6379:6379`
  elastic_airflow.cluster.celery_worker_drain:
    broker_url: "redis://:{{ broker_password }}@127.0.0.1:6379/0"
    namespace: airflow
    label_selectors:
      - app.kubernetes.io/component=worker
      - app.kubernetes.io/instance=airflow
  check_mode: true

- name: Drain a Celery worker that is not on Kubernetes, resumable through a state file
  elastic_airflow.cluster.celery_worker_drain:
    broker_url: amqp://airflow:secret@rabbitmq:5672//
    celery_hostnames: [celery@vm-worker-1]
    state_file: /var/lib/elastic-airflow/drain.json
    timeout: 300

- name: Roll back drains that were interrupted or not followed by a delete
  elastic_airflow.cluster.celery_worker_drain:
    broker_url: "{{ broker_url }}"
    namespace: airflow
    workers: [airflow-worker-4]
    state: restored
"""

RETURN = r"""
workers:
  description: One entry per worker, in the order given (pods first, then Celery hostnames).
  returned: always
  type: list
  elements: dict
  contains:
    worker:
      description: The pod name, or the Celery hostname for O(celery_hostnames).
      type: str
      sample: airflow-worker-4
    pod:
      description: The pod name, null for O(celery_hostnames).
      type: str
      sample: airflow-worker-4
    hostname:
      description: The Celery hostname.
      type: str
      sample: celery@airflow-worker-4
    state:
      description:
        - C(drained) idle and not consuming (pod kept), C(deleted) drained and its pod deleted,
          C(restored) not drained (see RV(workers[].reason)) and consuming again,
          C(gone) the worker no longer exists (nothing done), C(failed) see RV(workers[].msg),
          C(would_drain) / C(would_restore) / C(idle) in check mode.
      type: str
      sample: drained
    reason:
      description: Why a worker was C(restored) (C(timeout), C(aborted), C(nothing to roll back)) or C(gone).
      type: str
      sample: timeout
    msg:
      description: The error of a C(failed) worker.
      type: str
    queues:
      description: The queues whose consumers were cancelled (and restored on rollback).
      type: list
      elements: str
      sample: [default]
    tasks_finished:
      description: How many tasks the worker held during the drain; all of them finished before it was reported drained.
      type: int
      sample: 2
    task_ids:
      description: The Celery task ids counted in RV(workers[].tasks_finished).
      type: list
      elements: str
    seconds:
      description: Seconds from the start of the drain to its end.
      type: float
      sample: 12.5
    resumed:
      description: Whether this run resumed a drain recorded by an earlier, interrupted run.
      type: bool
      sample: false
    load:
      description: Last observed task counts (check mode, or while draining).
      type: dict
      sample: {"active": 1, "reserved": 0, "scheduled": 0}
drained:
  description: Names of the workers that are drained (or deleted) now.
  returned: always
  type: list
  elements: str
  sample: [airflow-worker-4, airflow-worker-3]
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

try:
    from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic import drain_job
    from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.kube import load_client

    IMPORT_ERROR = None
except ImportError:  # pragma: no cover
    IMPORT_ERROR = traceback.format_exc()


def core_v1_api(module):
    """A CoreV1Api through the collection's one kube-config loader (``kube.load_client``)."""
    try:
        from kubernetes import client
    except ImportError:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=traceback.format_exc())
    kubeconfig, context = module.params["kubeconfig"], module.params["context"]
    try:
        return client.CoreV1Api(load_client(kubeconfig, context))
    except Exception as exc:
        module.fail_json(msg="cannot load the Kubernetes configuration (kubeconfig=%s, context=%s): %s"
                         % (kubeconfig, context, exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            broker_url=dict(type="str", no_log=True, fallback=(env_fallback, ["ELASTIC_AIRFLOW_BROKER_URL"])),
            result_backend=dict(type="str", no_log=True, fallback=(env_fallback, ["ELASTIC_AIRFLOW_RESULT_BACKEND"])),
            workers=dict(type="list", elements="str", default=[]),
            label_selectors=dict(type="list", elements="str", default=[]),
            celery_hostnames=dict(type="list", elements="str", default=[]),
            namespace=dict(type="str"),
            hostname_template=dict(type="str", default="celery@{pod}"),
            state=dict(type="str", choices=["drained", "restored"], default="drained"),
            delete_pod=dict(type="bool", default=False),
            timeout=dict(type="float", default=600),
            poll_interval=dict(type="float", default=2),
            control_timeout=dict(type="float", default=2),
            state_file=dict(type="path"),
            kubeconfig=dict(type="path"),
            context=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("celery"), exception=IMPORT_ERROR)
    try:
        drain_job.validate(module.params)  # before the Kubernetes configuration is even read
        core_v1 = core_v1_api(module) if drain_job.uses_pods(module.params) else None
        result = drain_job.run(module.params, module.check_mode, core_v1)
    except drain_job.DrainJobFailed as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
