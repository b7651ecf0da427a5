"""What the integration test suites share about the cluster they run against.

Imported by the conftest.py of tests/integration/e2e and tests/integration/elastic
(each appends this folder to sys.path); it is no conftest itself, so it adds
nothing to the other suites.
"""
import os

import pytest
from kubernetes import config

CACHE = os.environ.get("ELASTIC_AIRFLOW_CACHE", os.path.expanduser("~/.cache/elastic-airflow"))
# the shared local control plane (tests/cluster/cluster.sh, `make cluster-up`)
SHARED_KUBECONFIG = os.path.join(CACHE, "run", "cluster", "kubeconfig")
# Pod spec fields that put a pod on the cluster's KWOK nodes (tainted, labelled
# type=kwok): it turns Ready, and no container of it runs.
ON_KWOK_NODES = {"nodeSelector": {"type": "kwok"},
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake",
                                  "effect": "NoSchedule"}]}


def api_fixture(kubeconfig):
    """The session fixture ``api``: an ApiClient of ``kubeconfig``; fails the tests when there is no cluster."""
    @pytest.fixture(scope="session", name="api")
    def api():
        if not os.path.exists(kubeconfig):
            pytest.fail("no cluster: %s is missing (run `make cluster-up`)" % kubeconfig)
        return config.new_client_from_config(config_file=kubeconfig)
    return api
