"""Declared Airflow pools, variables and connections (airflow_pools, airflow_variables,
airflow_connections): the checks and the import spec (plugins/module_utils/elastic/airflow_objects.py),
the objects Job as the role renders it (conftest.VARIANTS, variant `declared-objects`), and a run of
the Job's script with a stand-in for Airflow's CLI that records what it would import.

Whether a cluster admits the Job's pod is test_pod_security_objects.py's, what its NetworkPolicies
allow test_network_policy_objects.py's. That the real Airflow imports the files, and that site.yml
stays changed=0 with the Job, is tests/integration/e2e_pods/test_real_pods.py's."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT / "plugins" / "module_utils"))

from elastic import airflow_objects as O  # noqa: E402

VARIANT = "declared-objects"
PASSWORD = "s3cr3t-Pa55word"
TOKEN = "partner-t0ken-value"
URI = f"postgres://dwh:{PASSWORD}@warehouse.example.com:5432/dwh?sslmode=require"


def _objects(rendered, variant):
    return [o for objects in rendered[variant].values() for o in objects]


def _objects_jobs(rendered, variant):
    return [o for o in _objects(rendered, variant)
            if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "objects"]


def _job(rendered):
    jobs = _objects_jobs(rendered, VARIANT)
    assert len(jobs) == 1, jobs
    return jobs[0]


def _main(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def _env(job):
    return {e["name"]: e for e in _main(job)["env"]}


# --- The checks ----------------------------------------------------------------------------------

def test_valid_declarations_have_no_errors():
    assert O.objects_errors(
        [{"name": "etl", "slots": 8}, {"name": "all", "slots": -1, "description": "", "include_deferred": True}],
        [{"key": "a", "value": "x"}, {"key": "b", "value": {"k": [1]}, "description": "d"},
         {"key": "c", "secret": {"name": "s", "key": "k"}}],
        [{"conn_id": "x", "secret": {"name": "s", "key": "uri"}, "description": "d"},
         {"conn_id": "y", "conn_type": "http", "host": "h", "port": 443, "extra": {"a": 1},
          "password_secret": {"name": "s", "key": "p"}}]) == []
    assert O.objects_errors([], [], []) == []


@pytest.mark.parametrize(("pools", "variables", "connections", "expected"), [
    ("etl", [], [], "airflow_pools must be a list"),
    ([{"name": "a b", "slots": 1}], [], [], "needs a name of letters, digits"),
    ([{"name": "etl", "slots": -2}], [], [], "airflow_pools[0] (name 'etl').slots must be a whole number of slots "
                                             "from 0, or -1 for unlimited (got -2)"),
    ([{"name": "etl", "slots": "8"}], [], [], "airflow_pools[0] (name 'etl').slots must be a whole number"),
    ([{"name": "etl", "slots": 1}, {"name": "etl", "slots": 2}], [], [], "airflow_pools: name 'etl' is declared twice"),
    ([{"name": "etl", "slots": 1, "include_deferred": "yes"}], [], [], "include_deferred must be true or false"),
    ([{"name": "etl", "slots": 1, "size": 3}], [], [], "airflow_pools[0] (name 'etl') has unknown keys size; "
                                                       "allowed: name, slots, description, include_deferred"),
    ([], [{"key": "a"}], [], "airflow_variables[0] (key 'a') must have either a value or a secret"),
    ([], [{"key": "a", "value": "x", "secret": {"name": "s", "key": "k"}}], [], "not both"),
    ([], [{"key": "a", "value": None}], [], "airflow_variables[0] (key 'a').value must be a string"),
    ([], [{"key": "a/b", "value": "x"}], [], "needs a key of letters, digits"),
    ([], [{"key": "a", "secret": {"name": "Bad_Name", "key": "k"}}], [],
     "airflow_variables[0] (key 'a').secret.name must name a Secret"),
    ([], [{"key": "a", "secret": "s/k"}], [], "airflow_variables[0] (key 'a').secret must be {name: <Secret name>"),
    ([], [], [{"conn_id": "a..b", "conn_type": "http"}], "needs a conn_id of letters"),
    ([], [], [{"conn_id": "x"}], "airflow_connections[0] (conn_id 'x') needs a conn_type"),
    ([], [], [{"conn_id": "x", "conn_type": "http", "port": 0}], ".port must be a port number, 1-65535 (got 0)"),
    ([], [], [{"conn_id": "x", "conn_type": "http", "extra": '{"a": 1}'}], ".extra must be a mapping"),
    ([], [], [{"conn_id": "x", "secret": {"name": "s", "key": "k"}, "host": "h"}],
     "takes the whole connection from its secret (a URI or JSON), so it must not also have host"),
])
def test_bad_declarations_are_named(pools, variables, connections, expected):
    errors = O.objects_errors(pools, variables, connections)
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize("key", ["password", "uri"])
def test_an_inline_password_or_uri_is_refused_and_never_quoted(key):
    value = URI if key == "uri" else PASSWORD
    errors = O.objects_errors([], [], [{"conn_id": "x", "conn_type": "postgres", key: value}])
    assert len(errors) == 1
    assert f"airflow_connections[0] (conn_id 'x'): an inline '{key}' is refused" in errors[0]
    assert PASSWORD not in errors[0]
    # not quoted even where the key is unexpected
    assert PASSWORD not in " ".join(O.objects_errors([{"name": "p", "slots": 1, "password": PASSWORD}], [], []))


def test_missing_secrets_and_keys_are_named():
    variables = [{"key": "a", "secret": {"name": "partner", "key": "token"}}]
    connections = [{"conn_id": "dwh", "secret": {"name": "warehouse", "key": "uri"}},
                   {"conn_id": "api", "conn_type": "http", "password_secret": {"name": "partner", "key": "pw"}}]
    assert O.objects_errors([], variables, connections, secrets={"partner": ["token"]}, namespace="airflow") == [
        "airflow_connections[0] (conn_id 'dwh').secret: Secret 'warehouse' does not exist in namespace airflow; "
        "create it before the run.",
        "airflow_connections[1] (conn_id 'api').password_secret: Secret 'partner' has no key 'pw' "
        "(it has the keys token)."]
    assert O.objects_errors([], variables, connections,
                            secrets={"partner": ["token", "pw"], "warehouse": ["uri"]}) == []


def test_the_import_spec_names_the_secret_values_and_holds_none():
    pools = [{"name": "etl", "slots": 8}]
    variables = [{"key": "a", "value": [1, 2]}, {"key": "b", "secret": {"name": "partner", "key": "token"}}]
    connections = [{"conn_id": "dwh", "secret": {"name": "warehouse", "key": "uri"}, "description": "d"},
                   {"conn_id": "api", "conn_type": "http", "host": "h", "port": 443,
                    "password_secret": {"name": "partner", "key": "pw"}}]
    spec = O.import_spec(pools, variables, connections)
    assert spec == {
        "spec": {"pools": {"etl": {"slots": 8, "description": "", "include_deferred": False}},
                 "variables": {"a": {"value": [1, 2], "description": None},
                               "b": {"value_from": "OBJECTS_SECRET_0", "description": None}},
                 "connections": {"dwh": {"from": "OBJECTS_SECRET_1", "description": "d"},
                                 "api": {"fields": {"conn_type": "http", "host": "h", "port": 443},
                                         "password_from": "OBJECTS_SECRET_2"}}},
        "secrets": [
            {"env": "OBJECTS_SECRET_0", "secret": "partner", "key": "token",
             "var": "airflow_variables[1] (key 'b').secret"},
            {"env": "OBJECTS_SECRET_1", "secret": "warehouse", "key": "uri",
             "var": "airflow_connections[0] (conn_id 'dwh').secret"},
            {"env": "OBJECTS_SECRET_2", "secret": "partner", "key": "pw",
             "var": "airflow_connections[1] (conn_id 'api').password_secret"}]}


# --- The Job as the role renders it ------------------------------------------------------------

def test_nothing_declared_no_job(rendered):
    for variant in rendered:
        if variant != VARIANT:
            assert _objects_jobs(rendered, variant) == [], variant


def test_the_job_imports_the_declarations_after_the_migrations(rendered):
    job = _job(rendered)
    assert job["metadata"]["name"] == "airflow-objects-rendered"
    assert job["metadata"]["annotations"] == {"checksum/secrets": "0123456789abcdef"}
    assert job["spec"]["backoffLimit"] == 2
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "objects"
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["spec"]["nodeSelector"] == {"pool": "jobs"}  # the component's own pod settings
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["wait-for-migrations"]
    main = _main(job)
    assert main["name"] == "objects" and main["image"] == "apache/airflow:3.3.2"
    assert main["args"][:2] == ["python", "-c"]
    assert main["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert {"name": "objects", "mountPath": "/opt/airflow/objects"} in main["volumeMounts"]
    assert {"name": "objects", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}} in pod["spec"]["volumes"]
    env = _env(job)
    assert env["OBJECTS_DIR"]["value"] == "/opt/airflow/objects"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"] == {"name": "airflow-database",
                                                                                       "key": "url"}
    assert json.loads(env["OBJECTS_SPEC"]["value"]) == {
        "pools": {"etl": {"slots": 8, "description": "ETL jobs", "include_deferred": False},
                  "unlimited": {"slots": -1, "description": "", "include_deferred": True}},
        "variables": {"environment": {"value": "production", "description": "where this runs"},
                      "settings": {"value": {"retries": 3, "regions": ["eu", "us"]}, "description": None},
                      "partner_token": {"value_from": "OBJECTS_SECRET_0", "description": None}},
        "connections": {"warehouse": {"from": "OBJECTS_SECRET_1", "description": "the DWH"},
                        "partner_api": {"fields": {"conn_type": "http", "host": "api.example.com", "port": 443,
                                                   "schema": "https", "login": "airflow", "extra": {"timeout": 30}},
                                        "password_from": "OBJECTS_SECRET_2"},
                        "public_api": {"fields": {"conn_type": "http", "host": "public.example.com"}}}}
    # Secret values come in only as secretKeyRefs.
    refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if name.startswith("OBJECTS_SECRET_")}
    assert refs == {"OBJECTS_SECRET_0": {"name": "partner", "key": "token"},
                    "OBJECTS_SECRET_1": {"name": "warehouse-conn", "key": "uri"},
                    "OBJECTS_SECRET_2": {"name": "partner", "key": "password"}}


def test_the_job_is_applied_with_the_migrate_job(rendered):
    """conftest renders the airflow layer's Jobs from airflow_named_jobs, as tasks/main.yml applies them."""
    names = [o["metadata"]["name"] for o in rendered[VARIANT]["airflow"] if o["kind"] == "Job"]
    assert names == ["airflow-migrate-rendered", "airflow-objects-rendered"]


# --- The Job's script, with a stand-in for Airflow ---------------------------------------------------

FAKE_AIRFLOW = '''
import json, os, sys

def main():
    path = sys.argv[3]
    with open(path) as f:
        content = json.load(f)
    record = {"argv": sys.argv[1:], "mode": oct(os.stat(path).st_mode & 0o777), "content": content}
    with open(os.environ["FAKE_AIRFLOW_RECORD"], "a") as out:
        out.write(json.dumps(record) + "\\n")
    if os.environ.get("FAKE_AIRFLOW_FAIL") == sys.argv[1]:
        raise SystemExit("Failed to update pool(s): x")
'''


def _script(rendered):
    return _main(_job(rendered))["args"][2]


def _run(script, tmp_path, spec, secrets, fail=None):
    fake = tmp_path / "fake"
    (fake / "airflow").mkdir(parents=True)
    (fake / "airflow" / "__init__.py").write_text("")
    (fake / "airflow" / "__main__.py").write_text(FAKE_AIRFLOW)
    folder = tmp_path / "objects"
    folder.mkdir()
    record = tmp_path / "record.jsonl"
    env = dict(os.environ, PYTHONPATH=str(fake), OBJECTS_SPEC=json.dumps(spec), OBJECTS_DIR=str(folder),
               FAKE_AIRFLOW_RECORD=str(record), **secrets)
    if fail:
        env["FAKE_AIRFLOW_FAIL"] = fail
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    imports = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return run, imports, list(folder.iterdir())


def test_the_script_imports_each_kind_with_the_secret_values(rendered, tmp_path):
    spec = json.loads(_env(_job(rendered))["OBJECTS_SPEC"]["value"])
    run, imports, left = _run(_script(rendered), tmp_path, spec, {
        "OBJECTS_SECRET_0": TOKEN, "OBJECTS_SECRET_1": URI + "\n", "OBJECTS_SECRET_2": PASSWORD})
    assert run.returncode == 0, run.stderr
    assert [i["argv"][:3] for i in imports] == [["pools", "import", f"{tmp_path}/objects/pools.json"],
                                                ["variables", "import", f"{tmp_path}/objects/variables.json"],
                                                ["connections", "import", f"{tmp_path}/objects/connections.json"]]
    assert [i["argv"][3:] for i in imports] == [[], ["--action-on-existing-key", "overwrite"], ["--overwrite"]]
    assert {i["mode"] for i in imports} == {"0o600"}
    assert left == [], "the import files are deleted"
    pools, variables, connections = (i["content"] for i in imports)
    # `airflow pools import` skips a pool without a description: every one has one.
    assert pools == {"etl": {"slots": 8, "description": "ETL jobs", "include_deferred": False},
                     "unlimited": {"slots": -1, "description": "", "include_deferred": True}}
    assert variables == {"environment": {"value": "production", "description": "where this runs"},
                         "settings": {"value": {"retries": 3, "regions": ["eu", "us"]}, "description": None},
                         "partner_token": {"value": TOKEN, "description": None}}
    assert connections == {
        "warehouse": {"uri": URI, "description": "the DWH"},
        "partner_api": {"conn_type": "http", "host": "api.example.com", "port": 443, "schema": "https",
                        "login": "airflow", "extra": {"timeout": 30}, "password": PASSWORD},
        "public_api": {"conn_type": "http", "host": "public.example.com"}}
    for secret in (PASSWORD, TOKEN):
        assert secret not in run.stdout + run.stderr
    assert "imported 2 pools, 3 variables, 3 connections" in run.stdout


def test_a_connection_as_json_is_read_as_airflow_reads_airflow_conn(rendered, tmp_path):
    spec = O.import_spec([], [], [{"conn_id": "dwh", "secret": {"name": "s", "key": "k"}}])["spec"]
    value = json.dumps({"conn_type": "postgresql", "host": "db", "port": "5432", "login": "u",
                        "password": PASSWORD, "extra": {"sslmode": "require"}})
    run, imports, _left = _run(_script(rendered), tmp_path, spec, {"OBJECTS_SECRET_0": value})
    assert run.returncode == 0, run.stderr
    assert [i["argv"][0] for i in imports] == ["connections"], "only what is declared is imported"
    assert imports[0]["content"] == {"dwh": {"conn_type": "postgres", "host": "db", "port": 5432, "login": "u",
                                             "password": PASSWORD, "extra": {"sslmode": "require"}}}


@pytest.mark.parametrize("value", ['{"conn_type": "http", "password": "' + PASSWORD + '"', '{"port": "x"}', "{[1]}"])
def test_a_bad_connection_secret_fails_without_printing_it(rendered, tmp_path, value):
    spec = O.import_spec([{"name": "p", "slots": 1}], [], [{"conn_id": "dwh", "secret": {"name": "s", "key": "k"}}])
    run, imports, left = _run(_script(rendered), tmp_path, spec["spec"], {"OBJECTS_SECRET_0": value})
    assert run.returncode == 1
    assert run.stderr.startswith("objects: connection dwh: "), run.stderr
    assert PASSWORD not in run.stdout + run.stderr
    assert imports == [] and left == [], "nothing is imported before every declaration is read"


def test_a_failed_import_fails_the_job_and_deletes_the_file(rendered, tmp_path):
    spec = O.import_spec([{"name": "p", "slots": 1}], [{"key": "v", "value": "x"}], [])["spec"]
    run, imports, left = _run(_script(rendered), tmp_path, spec, {}, fail="pools")
    assert run.returncode != 0
    assert [i["argv"][0] for i in imports] == ["pools"] and left == []
