#!/usr/bin/env python3
"""How long the drain of an idle Celery worker takes, on real Redis and RabbitMQ.

Starts the servers with tests/services/services.sh (and stops them again if
it started them), one real Celery worker (prefork, concurrency 2) per broker,
then drains it ROUNDS times (restoring its consumers in between) with the same
settings as the module's defaults except the poll interval (--poll-interval,
default 1 s). Prints the seconds per drain and of the single control calls.

    python benchmarks/bench_drain.py [--rounds 5] [--poll-interval 1] [--brokers redis,rabbitmq]

Targets: an idle worker is drained in <= 5 s every time, and in <= 0.3 s
(median): the drain's two settle polls come Drain.settle_interval (0.1 s)
apart once the worker was seen idle, and the final "still consuming?" check
is kept.
"""

import argparse
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
SERVICES = REPO / "tests" / "services" / "services.sh"
APP_DIR = REPO / "tests" / "integration" / "drain"
sys.path.insert(0, str(REPO / "plugins" / "module_utils"))

from elastic.celery_control import CeleryControl  # noqa: E402
from elastic.drain import Drain, MemoryStore  # noqa: E402
from targets import Targets  # noqa: E402  (benchmarks/, this script's directory)

URL_KEYS = {"redis": "REDIS_URL", "rabbitmq": "RABBITMQ_URL"}


def service(name):
    started = subprocess.run([str(SERVICES), "status", name], capture_output=True).returncode != 0
    if started:
        subprocess.run([str(SERVICES), "start", name], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([str(SERVICES), "env", name], check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.split())
    return env[URL_KEYS[name]], started


def start_worker(url, tmp):
    tag = uuid.uuid4().hex[:8]
    host, queue = "bench-%s@drain" % tag, "bench-" + tag
    env = dict(os.environ, DRAIN_TEST_BROKER=url, DRAIN_TEST_LOG=str(tmp / "tasks.log"),
               PYTHONPATH=str(APP_DIR))
    log = open(tmp / ("worker-%s.log" % tag), "w")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasksapp", "worker", "-c", "2", "-n", host,
                             "-Q", queue, "-P", "prefork", "-l", "warning", "--without-gossip", "--without-mingle",
                             "--without-heartbeat"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=str(APP_DIR))
    return proc, host


def timed(fn, *a):
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def bench(name, rounds, poll_interval, tmp):
    url, started = service(name)
    proc, host = start_worker(url, tmp)
    ctl = CeleryControl(url, timeout=2.0)
    try:
        deadline = time.time() + 60
        while not (ctl.ping([host])[host] and ctl.queues(host)):
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("worker did not start, see %s" % tmp)
            time.sleep(0.3)
        calls = {"ping": [], "workload": [], "active_queues": []}
        for _ in range(10):
            calls["ping"].append(timed(ctl.ping, [host]))
            calls["workload"].append(timed(ctl.workload, [host]))
            calls["active_queues"].append(timed(ctl.queues, host))
        drains, restores = [], []
        for _ in range(rounds):
            store = MemoryStore()
            t = time.perf_counter()
            st = Drain(ctl, store, host, timeout=60, poll_interval=poll_interval).run()
            drains.append(time.perf_counter() - t)
            assert st.phase == "drained", st
            t = time.perf_counter()
            Drain(ctl, store, host).abort()
            # add_consumer is answered before the broker confirms the consumer: the worker may
            # list it a moment later (RabbitMQ)
            deadline = t + 10
            while not ctl.queues(host):
                assert time.perf_counter() < deadline, "consumers not restored within 10 s"
                time.sleep(0.05)
            restores.append(time.perf_counter() - t)
        print("%-8s idle drain: min %.2f s  median %.2f s  max %.2f s  "
              "(%d rounds, poll_interval %.1f s, settle_polls 2, settle_interval 0.1 s)"
              % (name, min(drains), statistics.median(drains), max(drains), rounds, poll_interval))
        print("%-8s rollback until the worker lists its consumer again: max %.2f s" % (name, max(restores)))
        print("%-8s control calls (median of 10): %s" % (name, ", ".join(
            "%s %.1f ms" % (k, 1000 * statistics.median(v)) for k, v in calls.items())))
        return max(drains), statistics.median(drains)
    finally:
        ctl.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        if started:
            subprocess.run([str(SERVICES), "stop", name], check=False, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--poll-interval", type=float, default=1.0)
    ap.add_argument("--brokers", default="redis,rabbitmq")
    args = ap.parse_args()
    worst = median = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        for name in args.brokers.split(","):
            broker_worst, broker_median = bench(name.strip(), args.rounds, args.poll_interval, pathlib.Path(tmp))
            worst, median = max(worst, broker_worst), max(median, broker_median)
    targets = Targets()
    targets.at_most("worst idle drain", worst, 5, " s")
    targets.at_most("idle drain, median (the slower broker)", median, 0.3, " s")
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
