# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""The filter pgbouncer_upstream; the rules are in module_utils/elastic/pgbouncer.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.pgbouncer import pgbouncer_upstream


def _pgbouncer_upstream(url, result_backend_url=""):
    return pgbouncer_upstream(str(url or ""), str(result_backend_url or ""))


class FilterModule(object):

    def filters(self):
        return {"pgbouncer_upstream": _pgbouncer_upstream}
