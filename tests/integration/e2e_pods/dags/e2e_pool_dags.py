"""DAGs of the worker pool test (test_worker_pools.py): tasks routed to the
Celery queues of two worker pools, `fast` and `slow`, and to the main
workers' queue `default` (no queue=). Each task records where it ran, the
pod name of its Celery worker, like the DAGs of e2e_dags.py."""
import time

from airflow.sdk import dag, get_current_context, task
from e2e_results import append_line, pod_name

DEFAULTS = {"retries": 0}


def _record(where):
    ctx = get_current_context()
    path = ctx["dag_run"].conf.get("path")
    if path:
        append_line(path, "%s %s %s" % (ctx["run_id"], where, pod_name()))
    return pod_name()


@dag(dag_id="e2e_pool_queues", schedule=None, catchup=False, default_args=DEFAULTS, tags=["e2e"])
def e2e_pool_queues():
    @task
    def on_default():
        return _record("default")

    @task(queue="fast")
    def on_fast():
        return _record("fast")

    @task(queue="slow")
    def on_slow():
        return _record("slow")

    on_default()
    on_fast()
    on_slow()


@dag(dag_id="e2e_pool_burst", schedule=None, catchup=False, default_args=DEFAULTS, max_active_runs=32,
     tags=["e2e"])
def e2e_pool_burst():
    @task(queue="fast")
    def sleep_on_fast():
        ctx = get_current_context()
        conf = ctx["dag_run"].conf
        time.sleep(float(conf.get("seconds", 30)))
        append_line(conf["path"], "%s %s %d" % (ctx["run_id"], pod_name(), ctx["ti"].try_number))

    sleep_on_fast()


e2e_pool_queues()
e2e_pool_burst()
