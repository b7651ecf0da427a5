# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Tests of the roles' validate tasks; the rules are in module_utils/elastic/validation.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.validation import (
    image_parts,
    is_dns_label,
    is_dns_subdomain,
    is_pinned_image,
    is_quantity,
)


class TestModule(object):

    def tests(self):
        return {
            "k8s_quantity": is_quantity,
            "dns_label": is_dns_label,
            "dns_subdomain": is_dns_subdomain,
            "image_reference": lambda value: image_parts(value) is not None,
            "pinned_image": is_pinned_image,
        }
