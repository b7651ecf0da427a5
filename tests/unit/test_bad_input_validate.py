"""The bad-input cases of the pod settings and extension points, the Ingresses, the logs and database
hygiene settings, the worker pools, the declared pools, variables and connections and PgBouncer
(tests/integration/bad_input), run offline through the validate entry points of the base role, the
airflow role, the monitoring role and the database role: each fails, its message has the case's
`expect`, and a case's `secret` is nowhere in what it failed with. The StorageClasses and Secrets
those entry points read from the cluster are given instead: `standard`, the default, as on the local
cluster, and the namespace role's generated secrets. tests/integration/playbooks/test_bad_input.py
runs the same cases through the playbooks on a cluster (and checks that nothing changed); this shows
the validation without one."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASES_DIR = ROOT / "tests/integration/bad_input"
# The variables of these settings: a case that sets only such variables is run here.
OURS = re.compile(r"^(elastic_airflow_(component_)?(scheduling|pod_labels|pod_annotations|pod_security_context"
                  r"|container_security_context)|elastic_airflow_security_context_mode"
                  r"|airflow_[a-z_]+_extra_(env|env_from|volumes|volume_mounts|containers|init_containers)"
                  r"|airflow_flower_enabled|airflow_flower_ingress_[a-z_]+|monitoring_grafana_ingress_[a-z_]+"
                  r"|airflow_worker_logs_[a-z_]+|airflow_log_cleanup(_[a-z_]+)?|airflow_db_clean(_[a-z_]+)?"
                  r"|elastic_airflow_worker_autoscaling|airflow_worker_replicas|airflow_worker_pools"
                  r"|airflow_(pools|variables|connections|objects_resources))$")
# What the storage_classes entry point would read from the cluster.
STORAGE_CLASSES = [{"metadata": {"name": "standard",
                                 "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}}]
# The key names of the Secrets the declared objects' validation would read from the cluster: those the
# namespace role generates (no other Secret exists).
SECRET_KEYS = {"airflow-generated-secrets": ["api-secret-key", "broker-password", "database-password", "fernet-key",
                                             "jwt-secret"]}

# The database layer's PgBouncer cases (with the engine and the limits they name): those with a
# PgBouncer variable, but for an external database (its Secret is read from the cluster).
PGBOUNCER = re.compile(r"^(database_pgbouncer(_[a-z_]+)?|database_engine|database_max_connections)$")

CASES = [case for path in ("shared.yml", "airflow.yml", "monitoring.yml")
         for case in yaml.safe_load((CASES_DIR / path).read_text())
         if all(OURS.match(name) for name in case["vars"])] + [
    case for case in yaml.safe_load((CASES_DIR / "database.yml").read_text())
    if any(name.startswith("database_pgbouncer") for name in case["vars"])
    and all(PGBOUNCER.match(name) for name in case["vars"]) and case["vars"].get("database_engine") != "external"]


def _host(index):
    return f"case{index}"


@pytest.fixture(scope="module")
def results():
    """{host: what the validate entry points failed with, as JSON text}."""
    with tempfile.TemporaryDirectory(prefix="elastic-airflow-validate-") as tmp:
        tmp = pathlib.Path(tmp)
        collection = tmp / "collections/ansible_collections/elastic_airflow"
        collection.mkdir(parents=True)
        (collection / "cluster").symlink_to(ROOT)
        for index, case in enumerate(CASES):
            (tmp / f"{_host(index)}.json").write_text(json.dumps(case["vars"]))
        tasks = [
            {"name": "The case's settings", "ansible.builtin.include_vars": f"{tmp}/{{{{ inventory_hostname }}}}.json"},
            {"name": "The cluster's StorageClasses and Secrets",
             "ansible.builtin.set_fact": {"elastic_airflow_storage_classes": STORAGE_CLASSES,
                                          "airflow_objects_secret_keys": SECRET_KEYS}},
            {"name": "Validate", "block": [
                {"name": "Shared settings", "ansible.builtin.include_role": {
                    "name": "elastic_airflow.cluster.elastic_airflow", "tasks_from": "validate"}},
                {"name": "Airflow settings", "ansible.builtin.include_role": {
                    "name": "elastic_airflow.cluster.airflow", "tasks_from": "validate"}},
                {"name": "Monitoring settings", "ansible.builtin.include_role": {
                    "name": "elastic_airflow.cluster.monitoring", "tasks_from": "validate"}},
                # Last: past its checks it reads the cluster (the database StatefulSet), which the
                # cases of the other layers never reach, failing before.
                {"name": "Database settings", "ansible.builtin.include_role": {
                    "name": "elastic_airflow.cluster.database", "tasks_from": "validate"}},
                {"name": "Accepted", "ansible.builtin.copy": {
                    "dest": f"{tmp}/{{{{ inventory_hostname }}}}.out", "content": "ACCEPTED", "mode": "0600"}},
            ], "rescue": [
                {"name": "Refused", "ansible.builtin.copy": {
                    "dest": f"{tmp}/{{{{ inventory_hostname }}}}.out",
                    "content": "{{ ansible_failed_result | to_json }}", "mode": "0600"}},
            ]},
        ]
        play = {"name": "Validate the cases", "hosts": "all", "connection": "local", "gather_facts": False,
                "tasks": tasks}
        (tmp / "validate.yml").write_text(json.dumps([play]))
        ansible_playbook = (shutil.which("ansible-playbook")
                            or str(pathlib.Path(sys.executable).parent / "ansible-playbook"))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp / "collections"), ANSIBLE_NOCOLOR="1")
        hosts = ",".join(_host(i) for i in range(len(CASES))) + ","
        run = subprocess.run([ansible_playbook, "-i", hosts, "--forks", "8", str(tmp / "validate.yml"),
                              "-e", f"ansible_python_interpreter={sys.executable}"],
                             env=env, capture_output=True, text=True, timeout=600, check=False)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        return {_host(i): (tmp / f"{_host(i)}.out").read_text() for i in range(len(CASES))}


def test_there_are_cases():
    assert len(CASES) >= 45


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case["name"] for case in CASES])
def test_the_case_is_refused_naming_its_variable(results, index):
    output = results[_host(index)]
    assert output != "ACCEPTED", f"accepted bad input {CASES[index]['vars']}"
    # The messages as JSON strings: compare with the JSON form of the expected text.
    assert json.dumps(CASES[index]["expect"])[1:-1] in output, output[-3000:]
    if "secret" in CASES[index]:
        assert CASES[index]["secret"] not in output, "a credential was printed"
