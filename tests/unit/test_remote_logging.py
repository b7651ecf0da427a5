"""Elasticsearch remote logging: what the airflow role configures, and what its
validation (roles/airflow/tasks/validate.yml) refuses.

The configuration is read from the rendered ConfigMap <c>-airflow-env
(conftest.VARIANTS). The validation runs for real, in ansible-playbook on
localhost: the role's checks over every role's defaults and vars, no cluster.
Whether Airflow then writes to or reads from a real Elasticsearch is not
tested here (no Elasticsearch runs on these machines).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import ROLES, ROOT


def _env(rendered, variant):
    [config] = [o for o in rendered[variant]["airflow"]
                if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-airflow-env")]
    return config["data"]


def test_elasticsearch_is_written_directly_by_default(rendered):
    env = _env(rendered, "external-pvc-none-elasticsearch")
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
    assert env["AIRFLOW__ELASTICSEARCH__HOST"] == "https://es.example.com:9243"
    assert env["AIRFLOW__ELASTICSEARCH__WRITE_TO_ES"] == "True"
    assert env["AIRFLOW__ELASTICSEARCH__WRITE_STDOUT"] == "False"
    assert env["AIRFLOW__ELASTICSEARCH__JSON_FORMAT"] == "True"
    # written to one index, and read back from it (not from _all, which a write-only key may not read)
    assert env["AIRFLOW__ELASTICSEARCH__TARGET_INDEX"] == "airflow-logs"
    assert env["AIRFLOW__ELASTICSEARCH__INDEX_PATTERNS"] == "airflow-logs"


def test_stdout_mode_only_prints_for_the_declared_shipper_and_reads_its_indices(rendered):
    env = _env(rendered, "elasticsearch-stdout-shipper")
    assert env["AIRFLOW__ELASTICSEARCH__WRITE_TO_ES"] == "False"
    assert env["AIRFLOW__ELASTICSEARCH__WRITE_STDOUT"] == "True"
    assert env["AIRFLOW__ELASTICSEARCH__JSON_FORMAT"] == "True"
    assert env["AIRFLOW__ELASTICSEARCH__INDEX_PATTERNS"] == "filebeat-*,airflow-logs"


def test_no_elasticsearch_setting_without_elasticsearch_logging(rendered):
    for variant in ("defaults", "mysql-rabbitmq-git-ssh-hpa-s3"):
        assert not [k for k in _env(rendered, variant) if k.startswith("AIRFLOW__ELASTICSEARCH")]


# --- Validation ------------------------------------------------------------------

PASSWORD = "Pw-N0tToPrint-7c1e"  # must never appear in any output
ES = {"airflow_remote_logging": "elasticsearch", "airflow_remote_logging_elasticsearch_host": "https://es.example.com:9200"}
CASES = {
    "direct-by-default": (ES, None),
    "stdout-with-shipper": (dict(ES, airflow_remote_logging_elasticsearch_mode="stdout",
                                 airflow_remote_logging_elasticsearch_shipper=True,
                                 airflow_remote_logging_elasticsearch_index="filebeat-*"), None),
    "stdout-without-shipper": (dict(ES, airflow_remote_logging_elasticsearch_mode="stdout"),
                               ["airflow_remote_logging_elasticsearch_mode is stdout",
                                "airflow_remote_logging_elasticsearch_shipper: true"]),
    "stdout-shipper-false": (dict(ES, airflow_remote_logging_elasticsearch_mode="stdout",
                                  airflow_remote_logging_elasticsearch_shipper=False),
                             ["airflow_remote_logging_elasticsearch_shipper: true"]),
    "pattern-in-direct-mode": (dict(ES, airflow_remote_logging_elasticsearch_index="airflow-*"),
                               ["airflow_remote_logging_elasticsearch_index must be an index name"]),
    "upper-case-index": (dict(ES, airflow_remote_logging_elasticsearch_index="Airflow"),
                         ["airflow_remote_logging_elasticsearch_index must be an index name"]),
    "empty-index": (dict(ES, airflow_remote_logging_elasticsearch_index=""),
                    ["airflow_remote_logging_elasticsearch_index must be an index name"]),
    "password-in-host-with-stdout-and-no-shipper": (
        dict(ES, airflow_remote_logging_elasticsearch_host=f"https://elastic:{PASSWORD}@es.example.com:9200",
             airflow_remote_logging_elasticsearch_mode="stdout"),
        ["airflow_remote_logging_elasticsearch_host must be http[s]://host[:port]",
         "airflow_remote_logging_elasticsearch_shipper: true"]),
    # not elasticsearch: its settings are not checked
    "stdout-without-shipper-but-s3": (dict(airflow_remote_logging="s3", airflow_remote_logging_s3_folder="s3://logs/a",
                                           airflow_remote_logging_elasticsearch_mode="stdout"), None),
}


def _validate(cases: dict) -> tuple[dict, str]:
    """{case: failure messages or None} of the airflow role's checks, and the run's whole output at -vvv."""
    var_files = [str(p) for role in sorted(ROLES.iterdir())
                 for p in (role / "defaults/main.yml", role / "vars/main.yml") if p.exists()]
    with tempfile.TemporaryDirectory(prefix="elastic-airflow-validate-") as tmp:
        tmp = pathlib.Path(tmp)
        collection = tmp / "collections/ansible_collections/elastic_airflow"
        collection.mkdir(parents=True)
        (collection / "cluster").symlink_to(ROOT)
        for name, (settings, _expect) in cases.items():
            (tmp / f"{name}.json").write_text(json.dumps(settings))
        case_file = f"{tmp}/{{{{ inventory_hostname }}}}.json"
        tasks = [
            {"name": "Load every role's defaults and vars, then the case's settings",
             "ansible.builtin.include_vars": "{{ item }}", "loop": var_files + [case_file],
             # the test's own loading of the settings; -vvv would print them (an inventory is not printed)
             "no_log": True},
            {"block": [{"name": "Validate",
                        "ansible.builtin.include_tasks": str(ROLES / "airflow/tasks/validate.yml")}],
             "rescue": [{"name": "Keep the failure", "ansible.builtin.set_fact": {
                 "failed_messages": "{{ ansible_failed_result.results | default([ansible_failed_result])"
                                    " | selectattr('failed', 'defined') | selectattr('failed')"
                                    " | map(attribute='msg') | list }}"}}]},
            {"name": "Write the result", "delegate_to": "localhost", "ansible.builtin.copy": {
                "dest": f"{tmp}/{{{{ inventory_hostname }}}}.result.json", "mode": "0600",
                "content": "{{ failed_messages | default(None) | to_json }}"}},
        ]
        (tmp / "validate.yml").write_text(json.dumps([{"name": "Validate", "hosts": "all", "connection": "local",
                                                       "gather_facts": False, "tasks": tasks}]))
        ansible_playbook = (shutil.which("ansible-playbook")
                            or str(pathlib.Path(sys.executable).parent / "ansible-playbook"))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp / "collections"), ANSIBLE_NOCOLOR="1")
        run = subprocess.run([ansible_playbook, "-vvv", "-i", ",".join(cases) + ",", "--forks", str(len(cases)),
                              str(tmp / "validate.yml"), "-e", f"ansible_python_interpreter={sys.executable}"],
                             env=env, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        results = {name: json.loads((tmp / f"{name}.result.json").read_text()) for name in cases}
        return results, run.stdout + run.stderr


@pytest.fixture(scope="module")
def validated():
    return _validate(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_accepts_or_names_the_variables(validated, case):
    results, _output = validated
    expect = CASES[case][1]
    if expect is None:
        assert results[case] is None
    else:
        assert results[case], f"{case} was accepted"
        text = " ".join(results[case])
        assert [e for e in expect if e not in text] == []


def test_a_password_in_the_host_is_never_printed_even_at_vvv(validated):
    results, output = validated
    assert results["password-in-host-with-stdout-and-no-shipper"]
    assert PASSWORD not in output
    assert PASSWORD not in json.dumps(results)
