"""Fixtures of the drain integration tests: real Redis/RabbitMQ, real Celery worker processes.

Servers come from tests/services/services.sh; a server this session started
is stopped at its end, one that was already running is left running.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
SERVICES = REPO / "tests" / "services" / "services.sh"
sys.path.insert(0, str(REPO / "plugins" / "module_utils"))

from elastic.celery_control import CeleryControl  # noqa: E402


def _service_env(name: str) -> dict:
    out = subprocess.run([str(SERVICES), "env", name], check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.split())


def _service(name: str):
    running = subprocess.run([str(SERVICES), "status", name], capture_output=True, check=False).returncode == 0
    if not running:
        subprocess.run([str(SERVICES), "start", name], check=True)
    return running


def _server_url(name: str, key: str):
    """Yield the server's URL; stop it afterwards only if this session started it."""
    was_running = _service(name)
    yield _service_env(name)[key]
    if not was_running:
        subprocess.run([str(SERVICES), "stop", name], check=False)


@pytest.fixture(scope="session")
def redis_url():
    yield from _server_url("redis", "REDIS_URL")


@pytest.fixture(scope="session")
def rabbitmq_url():
    yield from _server_url("rabbitmq", "RABBITMQ_URL")


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request):
    return request.getfixturevalue(request.param + "_url")


class Workers:
    """Celery worker processes (prefork, concurrency 2) consuming one private queue."""

    def __init__(self, broker: str, tmp: pathlib.Path, acks_late: bool = True, concurrency: int = 2):
        self.broker = broker
        self.tmp = tmp
        self.tag = uuid.uuid4().hex[:8]
        self.queue = "drain-test-" + self.tag
        self.log = tmp / "tasks.log"
        self.log.touch()
        self.acks_late = acks_late
        self.concurrency = concurrency
        self.procs: dict[str, subprocess.Popen] = {}
        self.control = CeleryControl(broker, timeout=2.0)
        # a client app of its own per test (a shared one would keep its first broker's producer pool)
        from celery import Celery

        self.app = Celery("drain-tests-client", broker=broker, set_as_current=False)

    def hostname(self, i: int) -> str:
        return "w%d-%s@drain" % (i, self.tag)

    def start(self, n: int) -> list[str]:
        env = dict(os.environ, DRAIN_TEST_BROKER=self.broker, DRAIN_TEST_LOG=str(self.log),
                   DRAIN_TEST_ACKS_LATE="1" if self.acks_late else "0",
                   PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        names = []
        for i in range(len(self.procs), len(self.procs) + n):
            name = self.hostname(i)
            out = open(self.tmp / ("worker-%d.log" % i), "w")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasksapp", "worker", "-c", str(self.concurrency),
                 "-n", name, "-Q", self.queue, "-P", "prefork", "-l", "info",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(HERE))
            names.append(name)
        deadline = time.time() + 60
        while time.time() < deadline:
            if all(self.control.ping(names).values()):
                # and consuming (the queue consumer starts after the pidbox)
                if all(self.control.queues(h) for h in names):
                    return names
            for name in names:
                if self.procs[name].poll() is not None:
                    raise RuntimeError("worker %s exited: see %s" % (name, self.tmp))
            time.sleep(0.3)
        raise RuntimeError("workers did not answer within 60s: see %s" % self.tmp)

    def send(self, job_id: str, seconds: float):
        return self.app.send_task("drain_tests.work", args=(job_id, seconds), queue=self.queue)

    def send_hold(self, job_id: str):
        """A task that runs until release(job_id) (at most 120 s)."""
        return self.app.send_task("drain_tests.hold", args=(job_id, str(self.tmp / ("gate-" + job_id))),
                                  queue=self.queue)

    def release(self, job_id: str):
        (self.tmp / ("gate-" + job_id)).touch()

    def stop(self, name: str, sig=signal.SIGTERM, wait: float = 30):
        """What deleting the pod does: SIGTERM (Celery warm shutdown) to the main process."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self):
        self.app.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(10)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
        self.control.close()

    def events(self):
        """[(kind, job_id, hostname, time, pid, celery_id)] from the tasks log."""
        out = []
        for line in self.log.read_text().splitlines():
            kind, job, host, t, pid, cid = line.split()
            out.append((kind, job, host, float(t), int(pid), cid))
        return out

    def ends(self):
        return collections.Counter(e[1] for e in self.events() if e[0] == "end")

    def wait_ends(self, n: int, timeout: float):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(self.ends().values()) >= n:
                return
            time.sleep(0.5)
        raise AssertionError("only %d of %d tasks ended within %ss" % (sum(self.ends().values()), n, timeout))


@pytest.fixture
def workers_factory(tmp_path):
    made = []

    def make(broker, **kw):
        w = Workers(broker, tmp_path, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


@pytest.fixture(scope="session")
def collections_path():
    """<tmp>/ansible_collections/elastic_airflow/cluster -> the repository."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="drain-collections-"))
    (tmp / "ansible_collections" / "elastic_airflow").mkdir(parents=True)
    (tmp / "ansible_collections" / "elastic_airflow" / "cluster").symlink_to(REPO)
    return tmp


def _ansible_bin(name: str) -> str:
    cand = pathlib.Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def ansible_module_cmd(args: dict, check: bool = False) -> list[str]:
    cmd = [_ansible_bin("ansible"), "localhost", "-m", "elastic_airflow.cluster.celery_worker_drain",
           "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    return cmd


def ansible_env(collections_path) -> dict:
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path), ANSIBLE_STDOUT_CALLBACK="json",
                ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
                ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_PYTHON_INTERPRETER=sys.executable)


def run_module(collections_path, args: dict, check: bool = False, timeout: float = 120):
    """Run the module through `ansible localhost`; returns (rc, result dict)."""
    proc = subprocess.run(ansible_module_cmd(args, check), env=ansible_env(collections_path),
                          capture_output=True, text=True, timeout=timeout, check=False)
    try:
        data = json.loads(proc.stdout)
        result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError("unexpected ansible output (rc=%s): %s\n%s\n%s"
                             % (proc.returncode, exc, proc.stdout, proc.stderr)) from exc
    return proc.returncode, result
