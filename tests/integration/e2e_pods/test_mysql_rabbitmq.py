"""The MySQL (MariaDB here) + RabbitMQ variant in real pods: it boots and a
DAG succeeds; then playbooks/drain.yml, run from this host, drains two busy
worker pods (the module reaches RabbitMQ through a port-forward) and scales
the worker StatefulSet down by exactly those, and no task is lost or retried.

Real-node suite (see conftest.py). Its own namespace, deployed after the
PostgreSQL + Redis one of test_real_pods.py is gone (`make test-e2e` runs
the two files in separate pytest sessions, to fit the 2-core node).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time
import urllib.parse

from conftest import (
    HERE,
    REPO,
    RESULTS,
    PortForward,
    kubectl,
    results,
    variant_fixtures,
    wait_for,
    wait_runs,
    worker_pods,
)

NAMESPACE = "e2e-pods-my"
VARS = HERE / "vars" / "mysql-rabbitmq.yml"
API_PORT = int(os.environ.get("ELASTIC_AIRFLOW_E2E_MY_API_PORT", "18181"))
BROKER_PORT = int(os.environ.get("ELASTIC_AIRFLOW_E2E_MY_BROKER_PORT", "15672"))
DAG = "e2e_sleep_append"


deployed_my, airflow_my = variant_fixtures("my", NAMESPACE, VARS, API_PORT)


def test_mysql_rabbitmq_variant_boots_and_a_dag_succeeds(deployed_my, airflow_my):
    engines = kubectl("get", "statefulsets", "-o", "jsonpath={.items[*].spec.template.spec.containers[0].image}",
                      namespace=NAMESPACE)
    assert "mariadb" in engines and "rabbitmq" in engines, engines
    path = f"{RESULTS}/hello-{os.urandom(3).hex()}.txt"
    airflow_my.unpause(DAG)
    run_id = airflow_my.trigger(DAG, {"path": path, "seconds": 1}, f"hello-{os.urandom(3).hex()}")["dag_run_id"]
    assert wait_runs(airflow_my, DAG, [run_id], 300) == ["success"]
    assert [line[0] for line in results(deployed_my, path, NAMESPACE)] == [run_id]


def test_drain_playbook_drains_two_busy_workers_and_loses_no_task(deployed_my, airflow_my, capsys):
    core = deployed_my
    path = f"{RESULTS}/drain-{os.urandom(3).hex()}.txt"
    airflow_my.unpause(DAG)
    run_ids = [airflow_my.trigger(DAG, {"path": path, "seconds": 45}, f"drain-{i}-{os.urandom(3).hex()}")["dag_run_id"]
               for i in range(3)]

    def busy_hosts():
        hosts = [t.get("hostname") for r in run_ids for t in airflow_my.tries(DAG, r) if t["state"] == "running"]
        return hosts if len(hosts) == 3 else None
    hosts = {h.split(".")[0] for h in wait_for(busy_hosts, 300, "three tasks running, one per worker", interval=2)}
    assert hosts == {"e2e-worker-0", "e2e-worker-1", "e2e-worker-2"}, hosts

    # The module runs on this host: the broker's Service through a port-forward,
    # with the URL of the Secret <c>-broker pointed at it (in a 0600 vars file,
    # so the password is on no command line and in no output).
    url = urllib.parse.urlsplit(base64.b64decode(
        kubectl("get", "secret", "e2e-broker", "-o", "jsonpath={.data.url}", namespace=NAMESPACE)).decode())
    local = url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@127.0.0.1:{BROKER_PORT}").geturl()
    forward = PortForward(NAMESPACE, "e2e-broker", BROKER_PORT, url.port or 5672)
    forward.start()
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as extra:
            os.chmod(extra.name, 0o600)
            extra.write(json.dumps({"elastic_airflow_drain_broker_url": local}))
            extra.flush()
            t0 = time.time()
            proc = subprocess.run(["ansible-playbook", "-i", str(REPO / "inventories" / "local"),
                                   str(REPO / "playbooks" / "drain.yml"), "-e", "@" + str(VARS),
                                   "-e", "@" + extra.name, "-e", "elastic_airflow_drain_count=2"],
                                  cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
            took = time.time() - t0
    finally:
        forward.stop()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    leaked = url.password in proc.stdout + proc.stderr
    assert not leaked, "drain.yml printed the broker password"
    states = wait_runs(airflow_my, DAG, run_ids, 600)
    wait_for(lambda: {p.metadata.name for p in worker_pods(core, NAMESPACE)} == {"e2e-worker-0"}, 180,
             "the StatefulSet down to e2e-worker-0")
    lines = results(core, path, NAMESPACE)
    tries = [t["try_number"] for r in run_ids for t in airflow_my.tries(DAG, r)]
    assert states == ["success"] * 3, states
    assert sorted(line[0] for line in lines) == sorted(run_ids), "each task ran once and wrote its line"
    assert tries == [1, 1, 1], tries
    replicas = kubectl("get", "statefulset", "e2e-worker", "-o", "jsonpath={.spec.replicas}", namespace=NAMESPACE)
    assert replicas == "1", replicas
    with capsys.disabled():
        print(f"\ndrain.yml drained e2e-worker-2 and -1 while busy: {took:.0f} s (their 45 s tasks finished), "
              "3 runs succeeded on their first try, StatefulSet at 1")
