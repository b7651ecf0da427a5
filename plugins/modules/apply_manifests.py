#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
# The code is the action plugin plugins/action/apply_manifests.py: it runs on
# the controller. This file documents it.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: apply_manifests
short_description: Server-side apply many manifests in one task and wait until they are ready
description:
  - Renders manifest templates (like M(ansible.builtin.template), with the task's variables),
    server-side applies every object in order, deletes the objects listed in O(absent), waits
    for all applied objects at once, then deletes what O(prune) selects and this task did not
    apply.
  - Runs on the controller, in Ansible's own process, with kubernetes.core's API client. A
    layer of a dozen objects costs one task and no interpreter start, which is what makes a
    converge close to C(kubectl apply --server-side) plus C(kubectl wait).
  - Waits for Deployments, StatefulSets and DaemonSets to finish their rollout (the rules of
    kubernetes.core's waiter), Jobs to be Complete (a Failed Job fails the task at once),
    CustomResourceDefinitions to be Established and APIServices to be Available. Other kinds
    are applied and not waited for.
  - In check mode every apply is a server-side dry run. An object in a namespace that does not
    exist yet, or of a kind whose CRD is not served yet, cannot be dry-run; it is reported as
    C(would create) instead of failing.
  - With nothing to apply, delete, prune or wait for, only checks that the API server answers
    (C(GET /version), which every authenticated user may read) and returns its version, so a
    playbook's first task can fail early on a wrong kubeconfig or context.
  - Never returns object contents. Diffs show a Secret's keys, never its values, and an API
    error about a Secret is reduced to its HTTP status, so the task needs no C(no_log).
version_added: "0.1.0"
author: elastic_airflow developers (@elastic_airflow)
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
options:
  templates:
    description:
      - Template files to render and apply, in order; each may hold several YAML documents.
      - Found like M(ansible.builtin.template) finds them (the role's C(templates/)), or a path.
    type: list
    elements: str
    default: []
  definitions:
    description: Objects to apply after the templates' ones.
    type: list
    elements: dict
    default: []
  namespace:
    description:
      - Namespace of the namespaced objects that do not name one.
      - Defaults to C(elastic_airflow_namespace) when the play defines it.
    type: str
  absent:
    description:
      - Objects to delete if they exist (background propagation), each with C(api_version),
        C(kind), C(name) and optional C(namespace). Deleting an absent object changes nothing.
    type: list
    elements: dict
    default: []
  prune:
    description:
      - After the wait, delete the objects of each C(api_version)/C(kind) that match
        C(label_selectors) (a list of C(key=value) strings) and that this task did not apply,
        for example the Jobs of earlier configurations. Optional C(namespace).
    type: list
    elements: dict
    default: []
  wait:
    description: Wait until every applied object with a readiness rule is ready.
    type: bool
    default: true
  wait_for:
    description:
      - Existing objects to wait for as well (even with O(wait=false)), each with C(api_version),
        C(kind), and C(name) or C(label_selectors); optional C(namespace). Same readiness rules.
      - Lets a playbook apply several layers without waiting, then wait for all their
        rollouts at once.
    type: list
    elements: dict
    default: []
  wait_timeout:
    description:
      - Seconds to wait for all objects together.
      - Defaults to C(elastic_airflow_wait_timeout) when the play defines it, else 600.
    type: int
  wait_sleep:
    description:
      - Longest pause between two reads of the objects not ready yet. Reads start 0.1 s apart
        and slow down to this.
    type: float
    default: 0.5
  field_manager:
    description:
      - Server-side apply field manager.
      - Defaults to C(elastic_airflow_field_manager) when the play defines it, else C(elastic-airflow).
    type: str
  force_conflicts:
    description: Take over fields another manager owns (kubectl apply --server-side --force-conflicts).
    type: bool
    default: true
  render_dir:
    description:
      - Also write each rendered template to this directory on the controller (mode 0600, in
        apply order), for review or to apply it with other tools. Secrets are written too.
      - Defaults to C(elastic_airflow_render_dir) when the play defines it.
    type: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Every apply is a server-side dry run; see the description for what cannot be dry-run.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: A Secret's diff shows its keys, never its values.
notes:
  - Needs the C(kubernetes) Python package on the controller, and the kubernetes.core collection.
  - O(kubeconfig) and O(context) default to C(elastic_airflow_kubeconfig) and
    C(elastic_airflow_context) when the play defines them (non-empty); the other connection
    options and the C(K8S_AUTH_*) environment variables work as in kubernetes.core.
"""

EXAMPLES = r"""
- name: Apply the database layer and wait until the StatefulSet is ready
  elastic_airflow.cluster.apply_manifests:
    templates: [service.yaml.j2, statefulset.yaml.j2, secret.yaml.j2]
    namespace: airflow

- name: Run a migration Job, wait for it, delete the Jobs of earlier runs
  elastic_airflow.cluster.apply_manifests:
    templates: [migrate-job.yaml.j2]
    namespace: airflow
    prune:
      - api_version: batch/v1
        kind: Job
        label_selectors: [app.kubernetes.io/component=migrate]

- name: Apply the components and remove Flower, which is turned off
  elastic_airflow.cluster.apply_manifests:
    templates: [scheduler.yaml.j2]
    namespace: airflow
    absent:
      - {api_version: apps/v1, kind: Deployment, name: airflow-flower}

- name: Check that the Kubernetes API answers, before anything else
  elastic_airflow.cluster.apply_manifests: {}
"""

RETURN = r"""
objects:
  description:
    - One entry per object applied or deleted, in order, with C(api_version), C(kind),
      C(namespace), C(name) and C(action) (C(created), C(configured), C(unchanged),
      C(deleted); in check mode C(would create), C(would change), C(would delete)).
  returned: always
  type: list
  elements: dict
  sample:
    - {api_version: apps/v1, kind: StatefulSet, namespace: airflow, name: airflow-database, action: unchanged}
server_version:
  description: The API server's version (C(gitVersion)), when there was nothing else to do.
  returned: when O(templates), O(definitions), O(absent), O(prune) and O(wait_for) are all empty
  type: str
  sample: v1.33.13
"""
