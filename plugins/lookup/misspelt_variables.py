# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: misspelt_variables
short_description: Variables that carry a role's prefix but that this collection never reads
version_added: "0.1.0"
author: elastic_airflow developers (@elastic_airflow)
description:
  - Given variable names (for example every variable whose name starts with one of the roles'
    prefixes, from C(ansible.builtin.varnames)), returns those that no role, template or playbook
    of this collection mentions, each with the closest variable the roles document.
  - Such a variable has no effect; it is almost always a typo (C(airflow_workr_replicas)).
  - Unless O(strict=true), each one is also reported as an Ansible warning. Only names are
    reported, never values.
options:
  names:
    description: The variable names to check.
    type: list
    elements: str
    required: true
  strict:
    description: Do not warn (the caller fails on the result instead).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Warn about misspelt variables
  ansible.builtin.set_fact:
    unknown: >-
      {{ lookup('elastic_airflow.cluster.misspelt_variables',
                names=query('ansible.builtin.varnames', '^(airflow|broker)_')) }}
"""

RETURN = r"""
_raw:
  description: One entry per unknown variable, sorted by name.
  type: list
  elements: dict
  contains:
    name:
      description: The variable's name.
      type: str
      sample: airflow_workr_replicas
    closest:
      description: The documented variable it most resembles, or null.
      type: str
      sample: airflow_worker_replicas
"""

import difflib
import os
import re

import yaml
from ansible.plugins.lookup import LookupBase
from ansible.utils.display import Display

display = Display()

# The collection's root: plugins/lookup/<this file> -> ../..
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIXES = ("airflow", "broker", "database", "elastic_airflow", "elastic_worker", "git_sync", "metrics_adapter",
            "monitoring", "namespace")
NAME = re.compile(r"\b(?:%s)_[a-z0-9_]+\b" % "|".join(PREFIXES))
# A comment mentions a name without reading it (and may show a typo as an example).
COMMENT = re.compile(r"(^|\s)#.*$", re.MULTILINE)


def _yaml(path):
    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except (IOError, OSError):
        return {}


def documented_variables(root=ROOT):
    """The roles' options (every argument spec entry point) and defaults: what a user is meant to set."""
    names = set()
    roles = os.path.join(root, "roles")
    for role in sorted(os.listdir(roles)):
        specs = _yaml(os.path.join(roles, role, "meta", "argument_specs.yml")).get("argument_specs") or {}
        for spec in specs.values():
            names.update((spec or {}).get("options") or {})
        names.update(_yaml(os.path.join(roles, role, "defaults", "main.yml")))
    return names


def mentioned_variables(root=ROOT):
    """Every name with a role's prefix that the roles and playbooks mention anywhere (set_fact, vars, templates)."""
    names = set()
    for top in ("roles", "playbooks"):
        for dirpath, _unused, files in os.walk(os.path.join(root, top)):
            for name in files:
                if name.endswith((".yml", ".yaml", ".j2")):
                    with open(os.path.join(dirpath, name)) as fh:
                        names.update(NAME.findall(COMMENT.sub("", fh.read())))
    return names


def misspelt(names, documented, mentioned):
    """[{name, closest}] for the names nobody mentions, sorted."""
    out = []
    for name in sorted(set(names) - mentioned - documented):
        close = difflib.get_close_matches(name, sorted(documented), n=1, cutoff=0.6)
        out.append({"name": name, "closest": close[0] if close else None})
    return out


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        found = misspelt(self.get_option("names"), documented_variables(), mentioned_variables())
        if not self.get_option("strict"):
            for item in found:
                display.warning("%s is not a variable of elastic_airflow.cluster and has no effect%s"
                                % (item["name"], "; did you mean %s?" % item["closest"] if item["closest"] else ""))
        return [found]
