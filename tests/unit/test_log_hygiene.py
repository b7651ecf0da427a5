"""Logs and database hygiene, and the Ingresses of Flower and Grafana, as the roles render them
(conftest.VARIANTS), plus a real run of the log-cleanup sidecar's script on a local folder.

* The workers' log claim: one claim, mounted by every worker (StatefulSet and ElasticWorker) and,
  ReadWriteMany only, read-only by the api-server.
* The log-cleanup sidecar in the scheduler, dag-processor, triggerer and worker pods, on by default.
* The `airflow db clean` CronJob.
* The Ingresses: the api-server's shape, TLS, the user's annotations.
Whether a cluster admits the pods is test_pod_security_objects.py's, what the NetworkPolicies
allow test_network_policy_objects.py's.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import signal
import subprocess
import time

import pytest
from test_pod_security_objects import pod_templates

VARIANT = "ingresses-worker-logs-db-clean"
CLEANED = {"scheduler", "dag-processor", "triggerer", "worker"}


def _objects(rendered, variant):
    return [o for objects in rendered[variant].values() for o in objects]


def _named(rendered, variant, kind, name):
    found = [o for o in _objects(rendered, variant) if o["kind"] == kind and o["metadata"]["name"] == name]
    return found[0] if found else None


def _by_component(rendered, variant):
    return {t["metadata"]["labels"]["app.kubernetes.io/component"] + "/" + name.split("/")[0]: t
            for name, t in pod_templates(_objects(rendered, variant)).items()}


def _volume(template, name="logs"):
    return next(v for v in template["spec"]["volumes"] if v["name"] == name)


# --- The workers' log claim ----------------------------------------------------------

def test_no_claim_by_default_and_logs_are_an_empty_dir(rendered):
    assert _named(rendered, "defaults", "PersistentVolumeClaim", "airflow-worker-logs") is None
    for name, template in _by_component(rendered, "defaults").items():
        if name.split("/")[0] in ("api-server", "worker", "scheduler"):
            assert _volume(template) == {"name": "logs", "emptyDir": {}}, name


def test_the_shared_claim_is_read_write_many_on_the_named_class(rendered):
    claim = _named(rendered, VARIANT, "PersistentVolumeClaim", "airflow-worker-logs")
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs",
                             "resources": {"requests": {"storage": "50Gi"}}}


def test_every_worker_pod_and_the_api_server_mount_the_claim(rendered):
    templates = _by_component(rendered, VARIANT)
    claim = {"name": "logs", "persistentVolumeClaim": {"claimName": "airflow-worker-logs"}}
    # elastic mode: the ElasticWorker's template is what the controller creates pods from
    assert _volume(templates["worker/ElasticWorker"]) == claim
    assert _volume(templates["api-server/Deployment"]) == claim
    for container in templates["api-server/Deployment"]["spec"]["containers"]:
        assert {"name": "logs", "mountPath": "/opt/airflow/logs", "readOnly": True} in container["volumeMounts"]
    worker = templates["worker/ElasticWorker"]["spec"]["containers"][0]
    assert worker["name"] == "worker"
    assert {"name": "logs", "mountPath": "/opt/airflow/logs"} in worker["volumeMounts"]
    # the others keep their own logs
    for component in ("scheduler", "dag-processor"):
        assert _volume(templates[f"{component}/Deployment"]) == {"name": "logs", "emptyDir": {}}


def test_a_single_worker_may_have_a_read_write_once_claim_the_api_server_does_not_mount(rendered):
    variant = "external-pvc-none-elasticsearch"
    claim = _named(rendered, variant, "PersistentVolumeClaim", "airflow-worker-logs")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]  # the default class
    templates = _by_component(rendered, variant)
    assert _volume(templates["worker/StatefulSet"])["persistentVolumeClaim"] == {"claimName": "airflow-worker-logs"}
    assert _volume(templates["api-server/Deployment"]) == {"name": "logs", "emptyDir": {}}


# --- Log cleanup ----------------------------------------------------------------------------

def _cleanup(template):
    found = [c for c in template["spec"]["containers"] if c["name"] == "log-cleanup"]
    return found[0] if found else None


def test_log_cleanup_runs_beside_each_component_that_keeps_logs(rendered):
    for variant in ("defaults", VARIANT, "mysql-rabbitmq-git-ssh-hpa-s3"):
        for name, template in _by_component(rendered, variant).items():
            component = name.split("/")[0]
            sidecar = _cleanup(template)
            assert (sidecar is not None) == (component in CLEANED), (variant, name)
            if sidecar:
                assert template["spec"]["containers"][0]["name"] != "log-cleanup", name
                assert sidecar["volumeMounts"] == [{"name": "logs", "mountPath": "/opt/airflow/logs"}]
                assert sidecar["image"] == template["spec"]["containers"][0]["image"]
                # no Secret reaches it: it needs none
                assert not sidecar.get("envFrom") and all("valueFrom" not in e for e in sidecar["env"]), name


def test_log_cleanup_follows_its_settings(rendered):
    env = {e["name"]: e["value"] for e in _cleanup(_by_component(rendered, "defaults")["worker/ElasticWorker"])["env"]}
    assert env == {"LOG_CLEANUP_DIR": "/opt/airflow/logs", "LOG_RETENTION_DAYS": "15",
                   "LOG_CLEANUP_INTERVAL_SECONDS": "900"}
    env = {e["name"]: e["value"] for e in _cleanup(_by_component(rendered, VARIANT)["scheduler/Deployment"])["env"]}
    assert env["LOG_RETENTION_DAYS"] == "7" and env["LOG_CLEANUP_INTERVAL_SECONDS"] == "300"
    assert not [n for n, t in _by_component(rendered, "policies-off-baseline-budgets").items() if _cleanup(t)]


def _script(rendered):
    sidecar = _cleanup(_by_component(rendered, "defaults")["worker/ElasticWorker"])
    assert sidecar["command"][:2] == ["bash", "-c"]
    return sidecar["command"][2]


def _age(path: pathlib.Path, days: float):
    when = time.time() - days * 86400
    os.utime(path, (when, when))


@pytest.mark.skipif(not shutil.which("bash") or not shutil.which("find"), reason="needs bash and GNU find")
def test_the_cleanup_script_deletes_old_files_and_stale_empty_folders_and_stops_on_sigterm(rendered, tmp_path):
    logs = tmp_path / "logs"
    old_task = logs / "dag_id=a/run_id=r1/task_id=t"
    new_task = logs / "dag_id=a/run_id=r2/task_id=t"
    fresh_empty = logs / "dag_id=b/run_id=r3"
    old_task.mkdir(parents=True)
    new_task.mkdir(parents=True)
    fresh_empty.mkdir(parents=True)
    (logs / "lost+found").mkdir()
    (old_task / "attempt=1.log").write_text("old\n")
    (old_task / "attempt=1.log.trigger.7.log").write_text("old\n")
    (new_task / "attempt=1.log").write_text("new\n")
    (logs / "lost+found/kept").write_text("fsck's\n")
    for path in (old_task / "attempt=1.log", old_task / "attempt=1.log.trigger.7.log", logs / "lost+found/kept"):
        _age(path, 3)
    _age(new_task / "attempt=1.log", 1)
    stale_empty = logs / "dag_id=c/run_id=r4"
    stale_empty.mkdir(parents=True)
    _age(stale_empty, 1)

    env = dict(os.environ, LOG_CLEANUP_DIR=str(logs), LOG_RETENTION_DAYS="2", LOG_CLEANUP_INTERVAL_SECONDS="3600")
    proc = subprocess.Popen(["bash", "-c", _script(rendered)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while (old_task / "attempt=1.log").exists() or stale_empty.exists():
            assert time.time() < deadline, "the first pass did not delete the old files"
            time.sleep(0.1)
        time.sleep(0.3)  # the pass is over: the script sleeps
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert time.monotonic() - started < 2, "SIGTERM must end it at once (a worker's warm shutdown waits for it)"
    assert "older than 2 days" in out
    assert err == ""
    assert not (old_task / "attempt=1.log.trigger.7.log").exists()
    assert (new_task / "attempt=1.log").read_text() == "new\n"
    assert fresh_empty.is_dir()  # empty, but young: a task may be about to write into it
    assert (logs / "lost+found/kept").exists()
    assert logs.is_dir()


# --- airflow db clean ----------------------------------------------------------------------------

def test_no_db_clean_by_default(rendered):
    assert not [o for o in _objects(rendered, "defaults") if o["kind"] == "CronJob"]


def test_the_db_clean_cronjob_runs_airflow_db_clean_with_the_database_secrets(rendered):
    cron = _named(rendered, VARIANT, "CronJob", "airflow-db-clean")
    spec = cron["spec"]
    assert spec["schedule"] == "@daily" and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "db-clean"
    assert pod["spec"]["restartPolicy"] == "Never"
    main = pod["spec"]["containers"][0]
    assert main["name"] == "db-clean" and main["image"] == "apache/airflow:3.3.2"
    command = main["args"][2]
    assert main["args"][:2] == ["bash", "-c"]
    assert command.startswith("exec airflow db clean --clean-before-timestamp ")
    assert command.endswith(" --yes --skip-archive")
    assert {"name": "RETENTION_DAYS", "value": "30"} in main["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if "valueFrom" in e}
    assert refs["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == {"name": "airflow-database", "key": "url"}
    # it waits for the migrated schema like every Airflow pod
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["wait-for-migrations"]


@pytest.mark.skipif(not shutil.which("date"), reason="needs GNU date")
def test_the_cutoff_is_retention_days_before_now_in_utc(rendered):
    command = _named(rendered, VARIANT, "CronJob", "airflow-db-clean")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"]["containers"][0]["args"][2]
    # Run the command with `airflow` replaced by echo: the timestamp it would pass.
    run = subprocess.run(["bash", "-c", command.replace("exec airflow", "exec echo", 1)],
                         env=dict(os.environ, RETENTION_DAYS="30"), capture_output=True, text=True, check=True)
    words = run.stdout.split()
    assert words[:3] == ["db", "clean", "--clean-before-timestamp"]
    cutoff = datetime.datetime.fromisoformat(words[3])
    expected = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    assert abs((cutoff - expected).total_seconds()) < 60
    assert cutoff.utcoffset() == datetime.timedelta(0)


def test_skip_archive_is_a_choice(rendered):
    cron = _named(rendered, "platform-pod-settings-extensions", "CronJob", "airflow-db-clean")
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][2]
    assert command.endswith(" --yes") and "--skip-archive" not in command
    assert {"name": "RETENTION_DAYS", "value": "90"} in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]["env"]


# --- Ingresses ------------------------------------------------------------------------------------

def _backend(ingress):
    return ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]


def test_flower_and_grafana_ingresses_have_the_api_servers_shape(rendered):
    flower = _named(rendered, VARIANT, "Ingress", "airflow-flower")
    assert flower["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/auth-url": "https://auth.example.com/validate"}
    assert flower["spec"]["ingressClassName"] == "nginx"
    assert flower["spec"]["tls"] == [{"hosts": ["flower.example.com"], "secretName": "flower-tls"}]
    assert flower["spec"]["rules"][0]["host"] == "flower.example.com"
    assert _backend(flower) == {"name": "airflow-flower", "port": {"name": "flower"}}
    grafana = _named(rendered, VARIANT, "Ingress", "airflow-grafana")
    assert grafana["spec"]["tls"] == [{"hosts": ["grafana.example.com"], "secretName": "grafana-tls"}]
    assert "ingressClassName" not in grafana["spec"]
    assert _backend(grafana) == {"name": "airflow-grafana", "port": {"name": "http"}}
    # the named ports exist on the Services
    for name, port in (("airflow-flower", "flower"), ("airflow-grafana", "http")):
        assert port in [p["name"] for p in _named(rendered, VARIANT, "Service", name)["spec"]["ports"]]
    # Grafana's links and redirects use the Ingress host
    deployment = _named(rendered, VARIANT, "Deployment", "airflow-grafana")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GF_SERVER_ROOT_URL"] == "https://grafana.example.com/"


def test_the_api_server_ingress_is_unchanged(rendered):
    ingress = _named(rendered, "mysql-rabbitmq-git-ssh-hpa-s3", "Ingress", "airflow-api-server")
    assert ingress["metadata"]["annotations"] == {}
    assert "tls" not in ingress["spec"] and "ingressClassName" not in ingress["spec"]
    assert ingress["spec"]["rules"][0]["host"] == "airflow.example.com"
    assert _backend(ingress) == {"name": "airflow-api-server", "port": {"name": "api"}}


def test_no_ingress_by_default(rendered):
    assert not [o for o in _objects(rendered, "defaults") if o["kind"] == "Ingress"]
    deployment = _named(rendered, "defaults", "Deployment", "airflow-grafana")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "GF_SERVER_ROOT_URL" not in [e["name"] for e in env]
