"""DAGs of the end-to-end tests. Each task records where it ran: the pod
name of its Celery worker (the worker container's hostname), so a test can
tell which worker ran what."""
import datetime
import os
import time

from airflow.sdk import dag, get_current_context, task
from e2e_results import append_line, pod_name

DEFAULTS = {"retries": 0}


@dag(dag_id="e2e_hello", schedule=None, catchup=False, default_args=DEFAULTS, tags=["e2e"])
def e2e_hello():
    @task
    def hello():
        ctx = get_current_context()
        path = ctx["dag_run"].conf.get("path")
        if path:
            append_line(path, "%s %s" % (ctx["run_id"], pod_name()))
        return pod_name()

    hello()


@dag(dag_id="e2e_sleep_append", schedule=None, catchup=False, default_args=DEFAULTS, max_active_runs=32,
     tags=["e2e"])
def e2e_sleep_append():
    @task
    def sleep_then_append():
        ctx = get_current_context()
        conf = ctx["dag_run"].conf
        started = time.time()
        time.sleep(float(conf.get("seconds", 30)))
        append_line(conf["path"], "%s %s %d %.3f %.3f" % (ctx["run_id"], pod_name(), ctx["ti"].try_number,
                                                          started, time.time()))

    sleep_then_append()


@dag(dag_id="e2e_kill", schedule=None, catchup=False, tags=["e2e"],
     default_args={"retries": 1, "retry_delay": datetime.timedelta(seconds=2)})
def e2e_kill():
    @task
    def victim():
        ctx = get_current_context()
        path = ctx["dag_run"].conf["path"]
        try_number = ctx["ti"].try_number
        append_line(path, "start %d %s %d" % (try_number, pod_name(), os.getpid()))
        if try_number == 1:
            time.sleep(600)  # the test kills this worker meanwhile
        append_line(path, "done %d %s" % (try_number, pod_name()))

    victim()


e2e_hello()
e2e_sleep_append()
e2e_kill()
