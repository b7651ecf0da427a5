"""A task that ends while the broker is down, on a worker with the Celery of the Airflow image (5.5.x).

Celery 5.5's prefork pool flushes its job cache when the consumer loses the
broker connection, so the result of a task that was running then and ends
before the worker has reconnected is dropped: ``inspect active`` lists that
task for good (celery/celery#8541; fixed in Celery 5.6, which the dev venv
has, hence a venv with the image's pins for the worker). Without a result
backend a drain of that worker can only time out; with the workers' result
backend, which records the task as SUCCESS, CeleryControl counts it as
finished and the drain completes.

Restarts the drain tests' shared Redis (services.sh stop/start; it keeps no
data), so the result backend is a ``file://`` directory, and Redis runs again
when the test ends, whatever happens.
"""

import json
import subprocess
import time

import pytest

from conftest import SERVICES, airflow_celery_pins, run_module
from elastic.celery_control import FINISHED_MIN_AGE, CeleryControl, CeleryControlError


def _wait(what, timeout, probe, interval=0.2):
    """probe()'s first truthy value within timeout seconds; a CeleryControlError (broker down) counts as falsy."""
    deadline = time.time() + timeout
    while True:
        try:
            got = probe()
        except CeleryControlError:
            got = None
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError("%s: not within %ss" % (what, timeout))
        time.sleep(interval)


def _redis(action):
    subprocess.run([str(SERVICES), action, "redis"], check=True)


def _log_since(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


# The first run builds the worker venv from PyPI (pytest-timeout counts fixture set-up); later runs take ~30 s.
@pytest.mark.timeout(400)
def test_task_ended_while_broker_down_is_finished_by_the_result_backend(
        redis_url, airflow_celery_python, workers_factory, collections_path, tmp_path, monkeypatch):
    monkeypatch.delenv("ELASTIC_AIRFLOW_RESULT_BACKEND", raising=False)  # the module's fallback for result_backend
    results = tmp_path / "results"
    results.mkdir()
    backend = "file://" + str(results)
    w = workers_factory(redis_url, python=airflow_celery_python, result_backend=backend)
    (host,) = w.start(1)
    worker_log = tmp_path / "worker-0.log"
    celery_version = airflow_celery_pins()["celery"].partition("==")[2]
    assert " v%s " % celery_version in worker_log.read_text(), "the worker does not run Celery %s" % celery_version

    task = w.send_hold("held")  # runs until released
    _wait("hold task STARTED and active", 30,
          lambda: task.state == "STARTED" and task.id in w.control.workload([host])[host].active)

    mark = worker_log.stat().st_size
    try:
        _redis("stop")
        # Celery logs "Cannot connect" when it retries the connection, after it flushed the pool:
        # the task must end after that flush to hit the bug.
        _wait("worker lost the broker and retries", 30,
              lambda: "Connection to broker lost" in (log := _log_since(worker_log, mark)) and "Cannot connect" in log)
        w.release("held")
        _wait("task SUCCESS in the result backend while the broker is down", 30, lambda: task.state == "SUCCESS")
        assert w.ends()["held"] == 1
    finally:
        _redis("start")  # the drain tests' shared Redis runs again, whatever happened
    # the worker retries at growing intervals (2, 4, 6 ... s); the control client reconnects on its next call
    _wait("worker connected and consuming again", 60,
          lambda: w.control.ping([host])[host] and [q.name for q in w.control.queues(host)] == [w.queue])

    # the backend is asked only about a task listed for FINISHED_MIN_AGE (a task that just ended is listed briefly)
    started = min(e[3] for e in w.events() if e[0] == "start" and e[1] == "held")
    time.sleep(max(0.0, started + FINISHED_MIN_AGE + 1 - time.time()))
    plain = CeleryControl(redis_url, timeout=2.0)
    witness = CeleryControl(redis_url, timeout=2.0, result_backend=backend)
    try:
        load = plain.workload([host])[host]
        assert load.active == (task.id,) and not load.finished, (
            "Celery %s no longer lists a task that ended while the broker was down as active (celery/celery#8541 "
            "reproduced no more): if Celery fixed it in this version, this assertion must go; load: %r"
            % (celery_version, load))
        load = witness.workload([host])[host]
        assert load.idle and load.finished == (task.id,), load

        state = tmp_path / "drain.json"
        args = {"broker_url": redis_url, "celery_hostnames": [host], "state_file": str(state),
                "poll_interval": 0.5, "control_timeout": 1}

        # without the result backend the stale task keeps the drain waiting: timeout, consumers restored
        rc, res = run_module(collections_path, dict(args, timeout=8))
        assert rc != 0 and res.get("failed"), res
        (entry,) = res["workers"]
        assert entry["state"] == "restored" and entry["reason"] == "timeout", entry
        assert entry["task_ids"] == [task.id] and entry["load"]["active"] == 1, entry
        assert entry["seconds"] >= 8, entry
        assert res["drained"] == [] and "not idle within timeout" in res["msg"], res
        assert [q.name for q in w.control.queues(host)] == [w.queue]
        assert host not in json.loads(state.read_text())
        assert plain.workload([host])[host].active == (task.id,)  # still listed, seconds later

        # with it: drained at once
        rc, res = run_module(collections_path, dict(args, timeout=30, result_backend=backend))
        assert rc == 0, res
        (entry,) = res["workers"]
        assert entry["state"] == "drained" and res["drained"] == [host] and res["changed"] is True, res
        assert res["invocation"]["module_args"]["result_backend"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
        assert w.control.queues(host) == []
        assert json.loads(state.read_text())[host]["phase"] == "drained"
        assert witness.workload([host])[host].idle
        assert w.procs[host].poll() is None
        assert w.ends()["held"] == 1  # ran once, never redelivered
    finally:
        plain.close()
        witness.close()
