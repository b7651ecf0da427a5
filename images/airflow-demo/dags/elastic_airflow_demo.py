"""The demo DAG of the local Airflow image (images/airflow-demo).

`make demo` triggers it once and waits until it succeeded: its tasks run on
the Celery workers, and the last one says which worker pod ran them.
"""

from __future__ import annotations

import datetime
import socket

from airflow.sdk import dag, task


@dag(
    dag_id="elastic_airflow_demo",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    tags=["elastic_airflow", "demo"],
    doc_md=__doc__,
)
def elastic_airflow_demo():
    @task
    def where_am_i() -> str:
        return socket.gethostname()

    @task
    def report(worker: str) -> str:
        print(f"ran on the Celery worker pod {worker}")
        return worker

    report(where_am_i())


elastic_airflow_demo()
