"""teardown.yml keeps what holds data unless asked, and site.yml then comes
back with the same database volume and the same generated secrets."""

from __future__ import annotations

import json

from conftest import CLUSTER_NAME, NAMESPACE, kubectl, run_playbook


def _names(kind: str) -> set[str]:
    items = json.loads(kubectl("get", kind, "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={CLUSTER_NAME}",
                               "-o", "json"))["items"]
    return {i["metadata"]["name"] for i in items}


def _generated_secrets() -> str:
    return kubectl("get", "secret", f"{CLUSTER_NAME}-generated-secrets", "-n", NAMESPACE, "-o", "jsonpath={.data}")


def test_teardown_keeps_data_and_site_restores_it(converged):
    claims = _names("pvc")
    secret = _generated_secrets()
    assert claims

    run = run_playbook("teardown.yml")
    assert run.rc == 0, run.output[-4000:]
    assert not _names("deployments") and not _names("statefulsets") and not _names("services")
    assert _names("pvc") == claims
    assert _generated_secrets() == secret

    run = run_playbook("site.yml")
    assert run.rc == 0, run.output[-4000:]
    assert _names("pvc") == claims
    assert _generated_secrets() == secret
