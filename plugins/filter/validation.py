# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Filters of the roles' validate tasks; the rules are in module_utils/elastic/validation.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.validation import (
    redact_url,
    resource_errors,
    storage_class_errors,
)
from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.worker_pools import worker_pool_errors


def _resource_errors(resources_by_name):
    if not isinstance(resources_by_name, dict):
        raise AnsibleFilterError("resource_errors expects a mapping of variable names to resources, got %r"
                                 % (resources_by_name,))
    return resource_errors(resources_by_name)


def _worker_pool_errors(pools, defaults, cluster_name, mode, main_queue="default"):
    if not isinstance(defaults, dict):
        raise AnsibleFilterError("worker_pool_errors expects the main workers' settings as a mapping, got %r"
                                 % (defaults,))
    return worker_pool_errors(pools, defaults, cluster_name, mode, main_queue)


class FilterModule(object):

    def filters(self):
        return {"resource_errors": _resource_errors, "redact_url": redact_url,
                "storage_class_errors": storage_class_errors, "worker_pool_errors": _worker_pool_errors}
