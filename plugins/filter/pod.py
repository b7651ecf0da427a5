# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Filters that apply and check the user's pod settings; the rules are in module_utils/elastic/pod_settings.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.elastic_airflow.cluster.plugins.module_utils.elastic.pod_settings import (
    pod_extension_errors,
    pod_settings_errors,
    with_pod_settings,
)


def _with_pod_settings(template, component, settings):
    if not isinstance(template, dict) or not isinstance(settings, dict):
        raise AnsibleFilterError("with_pod_settings expects a PodTemplateSpec and the settings mapping "
                                 "elastic_airflow_pod_settings, got %r and %r" % (type(template), type(settings)))
    return with_pod_settings(template, component, settings)


def _pod_settings_errors(settings, components, restricted=True):
    if not isinstance(settings, dict):
        raise AnsibleFilterError("pod_settings_errors expects a mapping of variable names to values, got %r"
                                 % (settings,))
    return pod_settings_errors(settings, list(components), bool(restricted))


def _pod_extension_errors(extensions, reserved_volumes=(), reserved_containers=(), restricted=True):
    if not isinstance(extensions, dict):
        raise AnsibleFilterError("pod_extension_errors expects a mapping of variable names to values, got %r"
                                 % (extensions,))
    return pod_extension_errors(extensions, list(reserved_volumes), list(reserved_containers), bool(restricted))


class FilterModule(object):

    def filters(self):
        return {"with_pod_settings": _with_pod_settings, "pod_settings_errors": _pod_settings_errors,
                "pod_extension_errors": _pod_extension_errors}
