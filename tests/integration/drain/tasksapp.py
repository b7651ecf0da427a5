"""The Celery app of the drain tests' worker processes.

Configured from the environment so one file serves every test:
  DRAIN_TEST_BROKER   broker URL
  DRAIN_TEST_LOG      file each task appends ``start``/``end`` lines to
  DRAIN_TEST_ACKS_LATE  "1" (Airflow's default) or "0"
  DRAIN_TEST_RESULT_BACKEND  result backend URL (e.g. file:///dir); unset or
                      empty: no result backend, results are ignored

Settings follow Airflow's Celery defaults where they matter for a drain:
prefetch multiplier 1, acks_late, a Redis visibility timeout far above any
task's duration (a message is only redelivered if a worker dies holding it),
task_track_started (with a result backend, a running task is STARTED there).
"""
import os
import socket
import time

from celery import Celery

RESULT_BACKEND = os.environ.get("DRAIN_TEST_RESULT_BACKEND") or None

app = Celery("drain_tests", broker=os.environ.get("DRAIN_TEST_BROKER", "redis://127.0.0.1:16379/0"),
             backend=RESULT_BACKEND)
app.conf.update(
    task_acks_late=os.environ.get("DRAIN_TEST_ACKS_LATE", "1") == "1",
    task_reject_on_worker_lost=False,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    task_ignore_result=RESULT_BACKEND is None,
    task_track_started=True,
    worker_hijack_root_logger=False,
)


def _log(kind, task_id, hostname, extra=""):
    line = "%s %s %s %.3f %d %s\n" % (kind, task_id, hostname, time.time(), os.getpid(), extra)
    # O_APPEND writes of one short line are atomic between processes
    fd = os.open(os.environ["DRAIN_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(bind=True, name="drain_tests.work")
def work(self, job_id, seconds):
    host = self.request.hostname or socket.gethostname()
    _log("start", job_id, host, self.request.id)
    time.sleep(seconds)
    _log("end", job_id, host, self.request.id)
    return job_id


@app.task(bind=True, name="drain_tests.hold")
def hold(self, job_id, gate, max_seconds=120):
    """Run until the file `gate` exists (at most max_seconds): busy for exactly as long as a test needs."""
    host = self.request.hostname or socket.gethostname()
    _log("start", job_id, host, self.request.id)
    deadline = time.time() + max_seconds
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.2)
    _log("end", job_id, host, self.request.id)
    return job_id
