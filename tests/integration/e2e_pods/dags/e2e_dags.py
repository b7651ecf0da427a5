"""DAGs of the end-to-end tests. Each task records where it ran: the pod
name of its Celery worker (the worker container's hostname), so a test can
tell which worker ran what."""
import datetime
import os
import socket
import time

from airflow.sdk import dag, get_current_context, task

DEFAULTS = {"retries": 0}


def _pod():
    return socket.gethostname()


def _append(path, line):
    # one write() of one short line with O_APPEND: concurrent writers never mix lines
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@dag(dag_id="e2e_hello", schedule=None, catchup=False, default_args=DEFAULTS, tags=["e2e"])
def e2e_hello():
    @task
    def hello():
        ctx = get_current_context()
        path = ctx["dag_run"].conf.get("path")
        if path:
            _append(path, "%s %s" % (ctx["run_id"], _pod()))
        return _pod()

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
        _append(conf["path"], "%s %s %d %.3f %.3f" % (ctx["run_id"], _pod(), ctx["ti"].try_number, started,
                                                      time.time()))

    sleep_then_append()


@dag(dag_id="e2e_kill", schedule=None, catchup=False, tags=["e2e"],
     default_args={"retries": 1, "retry_delay": datetime.timedelta(seconds=2)})
def e2e_kill():
    @task
    def victim():
        ctx = get_current_context()
        path = ctx["dag_run"].conf["path"]
        try_number = ctx["ti"].try_number
        _append(path, "start %d %s %d" % (try_number, _pod(), os.getpid()))
        if try_number == 1:
            time.sleep(600)  # the test kills this worker meanwhile
        _append(path, "done %d %s" % (try_number, _pod()))

    victim()


e2e_hello()
e2e_sleep_append()
e2e_kill()
