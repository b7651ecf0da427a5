"""site.yml on the local control plane: converges, waits for real readiness,
is idempotent, tells the truth in check mode and never prints a secret."""

from __future__ import annotations

import base64
import json

from conftest import CLUSTER_NAME, NAMESPACE, kubectl, run_playbook


def _items(kind: str) -> list[dict]:
    return json.loads(kubectl("get", kind, "-n", NAMESPACE, "-o", "json"))["items"]


def test_every_workload_is_ready_and_migrations_completed(converged):
    deployments = _items("deployments")
    statefulsets = _items("statefulsets")
    assert deployments and statefulsets
    for d in deployments:
        available = {c["type"]: c["status"] for c in d["status"].get("conditions", [])}.get("Available")
        assert available == "True", f"Deployment {d['metadata']['name']} not Available"
        assert d["status"].get("readyReplicas", 0) == d["spec"]["replicas"]
    for s in statefulsets:
        assert s["status"].get("readyReplicas", 0) == s["spec"]["replicas"], \
            f"StatefulSet {s['metadata']['name']} not ready"
    migrations = [j for j in _items("jobs") if j["metadata"]["name"].startswith(f"{CLUSTER_NAME}-migrate")]
    assert migrations, "no migration Job"
    for job in migrations:
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"].get("conditions", []))


def test_second_run_changes_nothing(converged):
    run = run_playbook("site.yml", "--diff")
    assert run.rc == 0, run.output[-4000:]
    assert run.changed == 0, run.changed_tasks


def test_check_diff_on_a_converged_cluster_reports_no_change(converged):
    run = run_playbook("site.yml", "--check", "--diff")
    assert run.rc == 0, run.output[-4000:]
    assert run.changed == 0, run.changed_tasks


def _secret_values() -> dict[str, str]:
    values = {}
    for secret in _items("secrets"):
        if not secret["metadata"]["name"].startswith(CLUSTER_NAME + "-"):
            continue
        for key, encoded in (secret.get("data") or {}).items():
            values[f"{secret['metadata']['name']}/{key}"] = encoded
            values[f"{secret['metadata']['name']}/{key} (decoded)"] = base64.b64decode(encoded).decode()
    return values


def test_no_secret_value_is_printed_even_with_vvv(converged):
    values = _secret_values()
    assert any(k.startswith(f"{CLUSTER_NAME}-generated-secrets/") for k in values)
    rerun = run_playbook("site.yml", "-vvv")
    assert rerun.rc == 0, rerun.output[-4000:]
    for output in (converged.output, rerun.output):
        leaked = [k for k, v in values.items() if len(v) >= 8 and v in output]
        assert not leaked, f"secret values printed: {leaked}"


def test_generated_secrets_survive_a_rerun(converged):
    before = _secret_values()
    run = run_playbook("namespace.yml")
    assert run.rc == 0, run.output[-4000:]
    assert _secret_values() == before


def test_check_mode_on_a_new_namespace_reports_changes_and_creates_nothing():
    namespace = "airflow-check-mode"
    run = run_playbook("site.yml", "--check", extra_vars={"elastic_airflow_namespace": namespace})
    assert run.rc == 0, run.output[-4000:]
    assert run.changed > 0
    assert namespace not in kubectl("get", "namespaces", "-o", "name").split("namespace/")
