"""Fixtures of the drain integration tests: real Redis/RabbitMQ, real Celery worker processes.

Servers come from tests/services/services.sh; a server this session started
is stopped at its end, one that was already running is left running.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import re
import shutil
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
CACHE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE") or pathlib.Path.home() / ".cache" / "elastic-airflow")
AIRFLOW_REQUIREMENTS = REPO / "images" / "airflow" / "requirements.txt"
# Celery and what its worker imports, installed at the Airflow image's pins
# (canonical names: lower case, "-" for "_" and ".").
AIRFLOW_CELERY_STACK = ("celery", "kombu", "billiard", "vine", "amqp", "click", "click-didyoumean", "click-repl",
                        "click-plugins", "python-dateutil", "redis", "tzdata", "prompt-toolkit", "wcwidth", "six",
                        "packaging", "typing-extensions")
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


def airflow_celery_pins() -> dict[str, str]:
    """{canonical name: "name==version" line} of AIRFLOW_CELERY_STACK as images/airflow/requirements.txt pins it."""
    pins = {}
    for line in AIRFLOW_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name, sep, version = line.partition("==")
        canonical = re.sub(r"[-_.]+", "-", name.strip()).lower()
        if sep and version and canonical in AIRFLOW_CELERY_STACK:
            pins[canonical] = line
    if "celery" not in pins:
        raise RuntimeError("%s pins no celery" % AIRFLOW_REQUIREMENTS)
    return dict((name, pins[name]) for name in AIRFLOW_CELERY_STACK if name in pins)


@pytest.fixture(scope="session")
def airflow_celery_python() -> str:
    """A python with the Celery of the Airflow image (a venv cached under CACHE/celery-airflow-<key>).

    Keyed by the pins it installs and this interpreter's version (a venv is
    bound to its base interpreter). Built in a temporary directory and renamed
    into place once complete, so an interrupted build is never reused.
    """
    pins = list(airflow_celery_pins().values())
    key = hashlib.sha256("\n".join(pins + ["python==%d.%d.%d" % sys.version_info[:3]]).encode()).hexdigest()[:12]
    venv = CACHE / ("celery-airflow-" + key)
    python = venv / "bin" / "python"
    if not python.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=venv.name + ".building-", dir=CACHE))
        try:
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
            subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", *pins], check=True)
            try:
                tmp.rename(venv)  # bin/python links to the base interpreter: the move keeps it working
            except OSError:
                if not python.exists():  # else another session finished first: use its venv
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(python)


class Workers:
    """Celery worker processes (prefork, concurrency 2) consuming one private queue.

    ``python``: the interpreter the workers run with (another Celery version,
    see ``airflow_celery_python``). ``result_backend``: the workers' (and the
    client app's) result backend; default none.
    """

    def __init__(self, broker: str, tmp: pathlib.Path, acks_late: bool = True, concurrency: int = 2,
                 python: str = sys.executable, result_backend: str | None = None):
        self.broker = broker
        self.python = python
        self.result_backend = result_backend
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

        self.app = Celery("drain-tests-client", broker=broker, backend=result_backend, set_as_current=False)

    def hostname(self, i: int) -> str:
        return "w%d-%s@drain" % (i, self.tag)

    def start(self, n: int) -> list[str]:
        env = dict(os.environ, DRAIN_TEST_BROKER=self.broker, DRAIN_TEST_LOG=str(self.log),
                   DRAIN_TEST_ACKS_LATE="1" if self.acks_late else "0",
                   DRAIN_TEST_RESULT_BACKEND=self.result_backend or "",
                   PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        names = []
        for i in range(len(self.procs), len(self.procs) + n):
            name = self.hostname(i)
            out = open(self.tmp / ("worker-%d.log" % i), "w")
            self.procs[name] = subprocess.Popen(
                [self.python, "-m", "celery", "-A", "tasksapp", "worker", "-c", str(self.concurrency),
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
