# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Sphinx configuration of the collection's documentation site (`make docs`).

`make docs` has antsibull-docs write the RST of every module, plugin and role
(argument specs) next to index.rst, then builds HTML with this file. No
intersphinx: the build reads nothing from the network.
"""

project = "elastic_airflow.cluster"
copyright = "elastic_airflow developers"
title = "elastic_airflow.cluster"
html_short_title = "elastic_airflow.cluster"

extensions = ["sphinx_antsibull_ext"]

pygments_style = "ansible"
highlight_language = "YAML+Jinja"
default_role = "any"

html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False

# References into the Ansible docsite (labels such as common_return_values, and
# modules of other collections) would resolve through intersphinx from
# docs.ansible.com, which the build does not read: they stay plain text. A
# missing reference into this collection still fails the build (-W).
ANSIBLE_DOCSITE_LABELS = {"action_plugins", "common_return_values", "ansible_configuration_settings"}
OWN_PREFIX = "ansible_collections.elastic_airflow.cluster."


def _outside_reference_as_text(app, env, node, contnode):
    target = node.get("reftarget", "")
    if node.get("reftype") != "ref":
        return None
    if target in ANSIBLE_DOCSITE_LABELS or (target.startswith("ansible_collections.")
                                            and not target.startswith(OWN_PREFIX)):
        return contnode
    return None


def setup(app):
    app.connect("missing-reference", _outside_reference_as_text)
