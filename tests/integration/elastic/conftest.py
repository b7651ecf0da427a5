"""Fixtures of the ElasticWorker tests: the local control plane, the CRDs, a
namespace, the controller as a local process, and real Celery workers that
follow the pods the controller creates."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
sys.path.insert(0, HERE)
sys.path.insert(0, MODULE_UTILS)
sys.path.append(os.path.dirname(HERE))

import render  # noqa: E402
from local_cluster import CACHE, ON_KWOK_NODES, api_fixture  # noqa: E402
from local_cluster import SHARED_KUBECONFIG as KUBECONFIG  # noqa: E402

REDIS_PORT = os.environ.get("ELASTIC_AIRFLOW_REDIS_PORT", "16379")
GROUP, VERSION = "elastic-airflow.io", "v1"


def kubectl(*args, input=None):
    import glob
    found = glob.glob(os.path.join(CACHE, "cluster", "*", "bin", "kubectl"))
    return subprocess.run([found[0], "--kubeconfig", KUBECONFIG] + list(args), capture_output=True, text=True,
                          input=input, check=False)


api = api_fixture(KUBECONFIG)


@pytest.fixture(scope="session")
def crds(api):
    ext = client.ApiextensionsV1Api(api)
    manifest = "\n".join(json.dumps(d) for d in render.render("crds.yaml.j2"))
    out = kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=elastic-airflow-tests",
                  "-f", "-", input=manifest)
    assert out.returncode == 0, out.stderr
    deadline = time.time() + 60
    for crd in render.render("crds.yaml.j2"):
        while True:
            obj = ext.read_custom_resource_definition(crd["metadata"]["name"])
            if any(c.type == "Established" and c.status == "True" for c in obj.status.conditions or []):
                break
            assert time.time() < deadline, "CRD %s not Established" % crd["metadata"]["name"]
            time.sleep(0.2)
    return True


@pytest.fixture
def namespace(api):
    core = client.CoreV1Api(api)
    name = "ew-%s" % uuid.uuid4().hex[:8]
    core.create_namespace({"metadata": {"name": name, "labels": {"purpose": "test"}}})
    yield name
    try:
        core.delete_namespace(name)
    except ApiException:
        pass


@pytest.fixture
def custom(api):
    return client.CustomObjectsApi(api)


@pytest.fixture
def core(api):
    return client.CoreV1Api(api)


def elastic_worker(name, namespace, low=1, high=4, replicas=None, policy="IdleOnly", broker_secret=None,
                   queues=None, drain_timeout=120):
    spec = {"minReplicas": low, "maxReplicas": high,
            "selector": {"matchLabels": {"app": name}},
            "scaleInPolicy": {"type": policy},
            "drain": {"timeoutSeconds": drain_timeout},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": dict(ON_KWOK_NODES, containers=[{"name": "worker", "image": "apache/airflow:3.0.2"}])}}
    if replicas is not None:
        spec["replicas"] = replicas
    if broker_secret:
        spec["drain"]["brokerSecretRef"] = {"name": broker_secret, "key": "url"}
    if queues:
        spec["drain"]["queues"] = queues
    return {"apiVersion": "%s/%s" % (GROUP, VERSION), "kind": "ElasticWorker",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def wait_for(predicate, timeout=60, interval=0.2, what="condition"):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def elastic_worker_when(custom, namespace, name, ready):
    """A predicate for wait_for: the ElasticWorker once ready(its status) holds, else None."""
    def read():
        ew = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "elasticworkers", name)
        return ew if ready(ew.get("status") or {}) else None
    return read


def live_pods(core, namespace, app=None):
    pods = core.list_namespaced_pod(namespace, label_selector="elastic-airflow.io/elastic-worker").items
    return [p for p in pods if p.metadata.deletion_timestamp is None
            and (app is None or (p.metadata.labels or {}).get("app") == app)]


def exactly_live_pods(core, namespace, count):
    """The live pods when there are exactly ``count`` of them, else None: a wait_for predicate that returns them."""
    pods = live_pods(core, namespace)
    return pods if len(pods) == count else None


class ControllerProcess:
    """``python -m elastic.controller`` against the local cluster, as a child process."""

    def __init__(self, namespace, identity, log_dir, lease_duration=6, health_port=0):
        self.namespace = namespace
        self.identity = identity
        self.log_path = os.path.join(log_dir, "controller-%s.log" % identity)
        env = dict(os.environ, PYTHONPATH=MODULE_UTILS)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "elastic.controller", "--kubeconfig", KUBECONFIG, "--namespace", namespace,
             "--identity", identity, "--lease-duration", str(lease_duration), "--resync-seconds", "1",
             "--health-port", str(health_port), "--log-level", "INFO"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def kill(self):
        """SIGKILL: no cleanup, the Lease is not released (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def text(self):
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")


@pytest.fixture
def controllers(namespace, tmp_path):
    started = []

    def start(identity="ctl-a", **kw):
        c = ControllerProcess(namespace, identity, str(tmp_path), **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
        print("---- %s log (tail)\n%s" % (c.identity, c.text()[-3000:]))


class CeleryFleet:
    """One real Celery worker process per ElasticWorker pod.

    A worker ``celery@<pod name>`` starts when its pod appears and gets a warm
    shutdown (SIGTERM) only once the pod is deleted, like a kubelet would.
    """

    def __init__(self, core, namespace, broker, queue, concurrency=2, log_dir="/tmp"):
        self.core, self.namespace, self.broker, self.queue = core, namespace, broker, queue
        self.concurrency = concurrency
        self.log_dir = log_dir
        self.procs = {}
        self.deleted_at = {}  # pod name -> time the deletion was seen
        self.started_at = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.lock = threading.Lock()

    def start(self):
        self._thread.start()
        return self

    def _spawn(self, pod):
        env = dict(os.environ, EW_TEST_BROKER=self.broker, EW_TEST_QUEUE=self.queue, PYTHONPATH=HERE)
        log = open(os.path.join(self.log_dir, "worker-%s.log" % pod), "ab")
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        return subprocess.Popen(
            [celery, "-A", "celery_app", "worker", "-n", "celery@" + pod, "-Q", self.queue,
             "-c", str(self.concurrency), "-P", "threads", "--without-heartbeat", "--without-gossip",
             "--without-mingle", "-l", "INFO"],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.namespace,
                                                     label_selector="elastic-airflow.io/elastic-worker").items
            except Exception:
                time.sleep(0.5)
                continue
            live = set(p.metadata.name for p in pods if p.metadata.deletion_timestamp is None)
            with self.lock:
                for name in live - set(self.procs):
                    self.procs[name] = self._spawn(name)
                    self.started_at[name] = time.time()
                for name, proc in list(self.procs.items()):
                    if name not in live and name not in self.deleted_at:
                        self.deleted_at[name] = time.time()
                        proc.send_signal(signal.SIGTERM)  # warm shutdown
            time.sleep(0.3)

    def seen_deleted(self, names, timeout=10):
        """{pod: time its deletion was seen} for these pods, once this fleet has seen each deleted:
        it polls on its own clock, so a test may see a deletion before the fleet does."""
        names = list(names)
        wait_for(lambda: all(name in self.deleted_at for name in names), timeout,
                 what="the fleet seeing %s deleted" % ", ".join(names))
        return dict((name, self.deleted_at[name]) for name in names)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def redis_url():
    services = os.path.join(ROOT, "tests", "services", "services.sh")
    subprocess.run([services, "start", "redis"], check=True, stdout=subprocess.DEVNULL)
    return "redis://127.0.0.1:%s/7" % REDIS_PORT


@pytest.fixture
def broker_secret(core, namespace, redis_url):
    core.create_namespaced_secret(namespace, {"metadata": {"name": "broker"}, "stringData": {"url": redis_url}})
    return "broker"


@pytest.fixture
def fleet(core, namespace, redis_url, tmp_path):
    queue = "ewtest-" + uuid.uuid4().hex[:6]
    f = CeleryFleet(core, namespace, redis_url, queue, log_dir=str(tmp_path)).start()
    yield f
    f.stop()
