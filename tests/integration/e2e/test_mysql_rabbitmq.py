"""Real Airflow 3 on MySQL (MariaDB here) + RabbitMQ, configured by what
site.yml applied: boot (db migrate, api-server, scheduler, dag-processor,
triggerer, a Celery worker) and one DAG run."""
import time

import pytest

from conftest import boot, timed

API_PORT = 18081
LOG_PORT_BASE = 18893


@pytest.fixture(scope="module")
def af(request, api, airflow_venv, tmp_path_factory):
    b = boot(request, api, airflow_venv, "mysql-rabbitmq.yml", "mysql", "rabbitmq", API_PORT, LOG_PORT_BASE,
             tmp_path_factory)
    yield b
    if request.session.testsfailed:
        b.dump_logs()
    b.close()


def test_boot_and_one_dag_run(af, tmp_path, capsys):
    h = af.healthy()
    assert h, af.last_health
    t0 = time.time()
    out = str(tmp_path / "hello.txt")
    run = af.run_dag("e2e_hello", {"path": out})
    assert run["state"] == "success", run
    timed("e2e_hello run on MariaDB + RabbitMQ", t0)
    with open(out) as fh:
        run_id, pod = fh.read().split()
    assert run_id == run["dag_run_id"] and pod in af.fleet.live()
    with capsys.disabled():
        print("\nhealth: %s\ne2e_hello ran on celery@%s (broker %s)" % (
            {k: v.get("status") for k, v in h.items()}, pod, af.local_broker_url.split("@")[-1]))
