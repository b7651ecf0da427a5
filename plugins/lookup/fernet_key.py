# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Lookup elastic_airflow.cluster.fernet_key: a new Fernet key."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: fernet_key
version_added: "0.1.0"
author: elastic_airflow developers (@elastic_airflow)
short_description: A new Fernet key, from 32 random bytes
description:
  - Returns a new Fernet key (Airflow's C([core] fernet_key)), the url-safe
    base64 text of 32 bytes from C(os.urandom), as
    C(cryptography.fernet.Fernet.generate_key()) makes it.
  - Every call returns a new key. Generate it once and keep it
    (C(roles/elastic_airflow/tasks/generate_once.yml) does).
options:
  _terms:
    description: Not used; call it without terms.
    required: false
"""

EXAMPLES = r"""
- name: A Fernet key
  ansible.builtin.set_fact:
    fernet_key: "{{ lookup('elastic_airflow.cluster.fernet_key') }}"
"""

RETURN = r"""
_raw:
  description: One Fernet key, 44 characters of url-safe base64 (32 random bytes).
  type: list
  elements: str
"""

import base64
import os

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase


def fernet_key():
    """The url-safe base64 text of 32 random bytes."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if terms:
            raise AnsibleError("elastic_airflow.cluster.fernet_key takes no terms")
        return [fernet_key()]
