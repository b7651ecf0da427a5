"""Fixtures for the tests of the local control plane (tests/cluster/cluster.sh)."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from clusterlib import state_dir


@pytest.fixture(scope="session")
def kubeconfig():
    path = state_dir() / "kubeconfig"
    if not path.exists():
        pytest.fail(f"no cluster: {path} is missing (run `make cluster-up` or `make test-cluster`)")
    return path


@pytest.fixture(scope="session")
def api(kubeconfig) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def namespace(api):
    """A fresh namespace per test, deleted (without waiting) afterwards."""
    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"purpose": "test"})))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:  # already deleted by the test itself
        if exc.status != 404:
            raise
