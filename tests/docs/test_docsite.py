# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""The documentation site that `make docs` built renders in headless Chromium.

`make docs-check` runs this with ELASTIC_AIRFLOW_DOCS_HTML set to the built
site. Each page is opened from file:// in Debian's chromium with name
resolution and proxying pointed at nothing, and Chromium's network log must
show that no socket sent a byte: the site needs nothing from the network.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from headless_chromium import CHROMIUM, HEADLESS, OFFLINE, sent_off_host

HTML = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_DOCS_HTML", ""))
COLLECTION = "collections/elastic_airflow/cluster"


def render(page):
    """The DOM of one page after Chromium ran its scripts, its console lines and its network log."""
    path = HTML / page
    assert path.is_file(), "%s not built (make docs)" % path
    profile = tempfile.mkdtemp(prefix="docs-chromium-")
    try:
        proc = subprocess.run([CHROMIUM, *HEADLESS, "--user-data-dir=" + profile,
                               *OFFLINE, "--enable-logging=stderr", "--v=0",
                               "--log-net-log=" + os.path.join(profile, "net.json"),
                               "--dump-dom", path.as_uri()],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        with open(os.path.join(profile, "net.json"), encoding="utf-8") as fh:
            netlog = json.load(fh)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console, netlog


def title(dom):
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    return match.group(1).strip() if match else None


def heading(dom):
    match = re.search(r"<h1>(.*?)<a class=\"headerlink\"", dom, re.S)
    return match.group(1).strip() if match else None


pytestmark = [
    pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium (make deps)"),
    pytest.mark.skipif(not os.environ.get("ELASTIC_AIRFLOW_DOCS_HTML"), reason="run by make docs-check"),
]


def assert_clean(dom, console, netlog):
    assert 'class="system-message"' not in dom, "docutils reported an error in the page"
    remote = re.findall(r'<(?:script|img|iframe)[^>]* src="(https?:[^"]*)"|<link[^>]* href="(https?:[^"]*)"', dom)
    assert remote == [], "the page loads from the network: %s" % remote
    assert console == [], console
    assert sent_off_host(netlog) == []


def test_index_lists_the_collection_and_every_plugin_index():
    dom, console, netlog = render("index.html")
    assert title(dom).startswith("elastic_airflow.cluster"), title(dom)
    assert heading(dom) == "elastic_airflow.cluster"
    for target in ["collections/index.html", "collections/index_module.html", "collections/index_role.html",
                   "collections/index_filter.html", "collections/index_test.html", "collections/index_lookup.html"]:
        assert 'href="%s"' % target in dom, target
    assert_clean(dom, console, netlog)


def test_collection_index_links_modules_plugins_and_roles():
    dom, console, netlog = render(COLLECTION + "/index.html")
    for page in ["apply_manifests_module", "celery_worker_drain_module", "elastic_worker_module",
                 "elastic_worker_info_module", "fernet_key_lookup", "resource_errors_filter", "k8s_quantity_test",
                 "airflow_role", "elastic_airflow_role", "elastic_worker_role"]:
        assert 'href="%s.html' % page in dom, page
    assert_clean(dom, console, netlog)


def test_module_page_shows_its_options_examples_and_return_values():
    dom, console, netlog = render(COLLECTION + "/apply_manifests_module.html")
    assert title(dom).startswith("elastic_airflow.cluster.apply_manifests module"), title(dom)
    assert heading(dom).startswith("elastic_airflow.cluster.apply_manifests module")
    text = re.sub(r"<[^>]+>", " ", dom)
    for words in ["Parameters", "templates", "kubeconfig", "Examples", "Return Values", "server_version"]:
        assert words in text, words
    assert_clean(dom, console, netlog)


def test_role_page_shows_each_entry_point():
    dom, console, netlog = render(COLLECTION + "/airflow_role.html")
    assert heading(dom).startswith("elastic_airflow.cluster.airflow role")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", dom))
    for entry_point in ["main", "validate", "worker_pod_template"]:
        assert "Entry point %s – " % entry_point in text, entry_point
    assert "Runs only the role" in text  # the validate entry point's description (from argument_specs.yml)
    assert_clean(dom, console, netlog)
