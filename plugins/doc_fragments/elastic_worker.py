# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The options every elastic_worker* module takes (module_utils/elastic_worker_module.py: ARGUMENT_SPEC).
    DOCUMENTATION = r"""
options:
  name: {description: Name of the ElasticWorker., type: str, required: true}
  namespace: {description: Its namespace., type: str, required: true}
  kubeconfig: {description: Path of a kubeconfig (default the client's defaults)., type: path}
  context: {description: Kubeconfig context., type: str}
  celery_timeout: {description: Seconds to wait for Celery replies., type: float, default: 1.0}
requirements: [kubernetes, celery]
"""
