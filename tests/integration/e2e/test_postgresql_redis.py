"""Real Airflow 3 on PostgreSQL + Redis, configured by what site.yml applied.

Order matters: the module boots once (site.yml, db migrate, api-server,
scheduler, dag-processor, triggerer, one Celery worker per worker pod).
"""
import os
import time

import pytest

import harness
from conftest import boot, timed

API_PORT = 18080
LOG_PORT_BASE = 18793


@pytest.fixture(scope="module")
def af(request, api, airflow_venv, tmp_path_factory):
    b = boot(request, api, airflow_venv, "postgresql-redis.yml", "postgresql", "redis", API_PORT, LOG_PORT_BASE,
             tmp_path_factory)
    yield b
    if request.session.testsfailed:
        b.dump_logs()
    b.close()


def test_health_and_a_dag_run_on_a_celery_worker(af, tmp_path, capsys):
    h = af.healthy()
    assert h, af.last_health
    t0 = time.time()
    out = str(tmp_path / "hello.txt")
    run = af.run_dag("e2e_hello", {"path": out})
    assert run["state"] == "success", run
    timed("e2e_hello run (trigger -> success)", t0)
    with open(out) as fh:
        run_id, pod = fh.read().split()
    assert run_id == run["dag_run_id"]
    # it ran in the worker process of a worker pod of the cluster
    assert pod in af.fleet.live(), (pod, af.fleet.live())
    with capsys.disabled():
        print("\nhealth: %s\ne2e_hello ran on celery@%s" % (
            {k: v.get("status") for k, v in h.items()}, pod))
