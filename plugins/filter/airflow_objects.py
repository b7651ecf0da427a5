# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Filters of the airflow role's declared pools, variables and connections; the rules are in
module_utils/elastic/airflow_objects.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.airflow_objects import (
    import_spec,
    objects_errors,
)


def _airflow_objects_errors(pools, variables, connections, secrets=None, namespace=None):
    if secrets is not None and not isinstance(secrets, dict):
        raise AnsibleFilterError("airflow_objects_errors expects secrets as a mapping of Secret names to their keys, "
                                 "got %r" % (type(secrets),))
    return objects_errors(pools, variables, connections, secrets, namespace)


def _airflow_objects_import(pools, variables, connections):
    errors = objects_errors(pools, variables, connections)
    if errors:
        raise AnsibleFilterError("airflow_objects_import expects valid declarations: %s" % " ".join(errors))
    return import_spec(pools, variables, connections)


class FilterModule(object):

    def filters(self):
        return {"airflow_objects_errors": _airflow_objects_errors, "airflow_objects_import": _airflow_objects_import}
