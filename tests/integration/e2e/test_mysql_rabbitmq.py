"""Real Airflow 3 on MySQL (MariaDB here) + RabbitMQ, configured by what
site.yml applied: boot (db migrate, api-server, scheduler, dag-processor,
triggerer, a Celery worker) and one DAG run."""
from conftest import booted, run_hello

API_PORT = 18081
LOG_PORT_BASE = 18893

af = booted("mysql-rabbitmq.yml", "mysql", "rabbitmq", API_PORT, LOG_PORT_BASE)


def test_boot_and_one_dag_run(af, tmp_path, capsys):
    h, pod = run_hello(af, tmp_path, "e2e_hello run on MariaDB + RabbitMQ")
    with capsys.disabled():
        print("\nhealth: %s\ne2e_hello ran on celery@%s (broker %s)" % (
            {k: v.get("status") for k, v in h.items()}, pod, af.local_broker_url.split("@")[-1]))
