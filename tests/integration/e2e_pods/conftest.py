"""The end-to-end suite in real pods: site.yml with inventories/local deploys
Airflow on the local cluster's real node (the images of `make images`), and
the tests drive it through its REST API, port-forwarded to 127.0.0.1, with
the generated password. Real-node suite: every component, the controller
(2 replicas, leader-elected) and the Celery workers run in containers.

Needs the shared cluster up with its images imported (`make test-e2e-pods`
sees to both).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from local_cluster import SHARED_KUBECONFIG, api_fixture

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
DAGS = HERE / "dags" / "e2e_dags.py"
# What the DAG files import (loaded with any of them).
DAG_HELPERS = HERE / "dags" / "e2e_results.py"
VARS = HERE / "vars" / "postgresql-redis.yml"
NAMESPACE = "e2e-pods"
PREFIX = "e2e"
RESULTS = "/results"
DAGS_CLAIM = "e2e-dags-fixture"
API_PORT = int(os.environ.get("ELASTIC_AIRFLOW_E2E_PODS_API_PORT", "18180"))
# The Secret that vars/postgresql-redis.yml's declared variable and connection take their values
# from, created before site.yml runs; the values are new each session and must never be printed.
OBJECTS_PASSWORD = "e2e-pw-" + os.urandom(8).hex()
OBJECTS_VARIABLE = "e2e-value-" + os.urandom(8).hex()
OBJECTS_SECRET = {
    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e2e-objects"},
    "stringData": {"connection": f"postgres://e2e_user:{OBJECTS_PASSWORD}@warehouse.e2e.example:5432/e2e_db"
                                 "?sslmode=disable",
                   "variable": OBJECTS_VARIABLE}}
# What site.yml printed (both runs of deploy()), by namespace.
SITE_OUTPUTS: dict[str, str] = {}

api = api_fixture(SHARED_KUBECONFIG)


def kubectl_path() -> str:
    return (pathlib.Path(SHARED_KUBECONFIG).parent / "bin").read_text().strip() + "/kubectl"


def kubectl(*args: str, input: str | None = None, check: bool = True, namespace: str = NAMESPACE) -> str:
    cmd = [kubectl_path(), "--kubeconfig", SHARED_KUBECONFIG, "-n", namespace, *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr[-2000:]}")
    return proc.stdout


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Airflow:
    """The deployed Airflow's REST API, as its admin user."""

    def __init__(self, base: str, password: str):
        self.base = base
        self.username = "admin"
        self.password = password
        self.token = self._call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]

    def _call(self, method, path, body=None):
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = "Bearer " + self.token
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
        # The port-forward is started again when it ends (PortForward): a
        # refused connection is retried for a minute, an HTTP error is not.
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return json.loads(resp.read() or b"null")
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def get(self, path):
        return self._call("GET", path)

    def dag_known(self, dag_id):
        try:
            self._call("GET", f"/api/v2/dags/{dag_id}")
            return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def unpause(self, dag_id):
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id, conf, run_id):
        return self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                          {"dag_run_id": run_id, "logical_date": None, "conf": conf})

    def run(self, dag_id, run_id):
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def tries(self, dag_id, run_id):
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]


def _listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def load_dags(namespace, dag_files=(DAGS,)):
    """A one-off pod of the Airflow image writes each DAG file into the claim
    (git_sync_mode pvc: "fill it yourself"), the module they import first."""
    for dag_file in (DAG_HELPERS, *dag_files):
        _load_dag_file(namespace, dag_file)


def _load_dag_file(namespace, dag_file):
    image = "localhost/elastic-airflow/airflow:3.3.2"
    kubectl("delete", "pod", "dags-loader", "--ignore-not-found", "--wait=true", namespace=namespace)
    kubectl("run", "dags-loader", "--restart=Never", f"--image={image}", "--image-pull-policy=Never",
            "--overrides", json.dumps({"spec": {
                "securityContext": {"runAsUser": 50000, "runAsGroup": 0, "fsGroup": 0, "runAsNonRoot": True,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "dags-loader", "image": image, "stdin": True, "stdinOnce": True,
                                "command": ["sh", "-c", f"cat > /dags/{dag_file.name}"],
                                "securityContext": {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}},
                                "volumeMounts": [{"name": "dags", "mountPath": "/dags"}]}],
                "volumes": [{"name": "dags", "persistentVolumeClaim": {"claimName": DAGS_CLAIM}}]}}),
            "-i", "--quiet", input=dag_file.read_text(), namespace=namespace)
    kubectl("delete", "pod", "dags-loader", "--wait=true", namespace=namespace)


def site_yml(vars_file, timeout):
    return subprocess.run(["ansible-playbook", "-i", str(REPO / "inventories" / "local"),
                           str(REPO / "playbooks" / "site.yml"), "-e", "@" + str(vars_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def deploy(core, namespace, vars_file, secrets=(), dag_files=(DAGS,)):
    """site.yml on the real node into a fresh namespace, with the DAG files
    copied into the DAGs claim and the given Secrets created first; then the
    re-run must change nothing. What both runs printed goes to SITE_OUTPUTS."""
    def not_terminating():
        try:
            return core.read_namespace(namespace).status.phase != "Terminating"
        except client.ApiException as exc:
            return exc.status == 404
    wait_for(not_terminating, 300, f"namespace {namespace} of an earlier run to be gone", interval=2)
    try:
        core.create_namespace({"metadata": {"name": namespace}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    # The workers' shared output (airflow_worker_extra_volumes names it), and
    # the DAGs' claim (git_sync_pvc_claim_name), filled before any Airflow pod
    # mounts it: the first mount of a local volume applies the pod's fsGroup.
    for claim in ("e2e-results", DAGS_CLAIM):
        kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
    for secret in secrets:
        kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(secret))
    load_dags(namespace, dag_files)
    t0 = time.monotonic()
    proc = site_yml(vars_file, 1500)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    print(f"\nsite.yml on the real node ({vars_file.name}): {time.monotonic() - t0:.0f} s")
    again = site_yml(vars_file, 600)
    SITE_OUTPUTS[namespace] = proc.stdout + proc.stderr + again.stdout + again.stderr
    assert again.returncode == 0 and " changed=0 " in again.stdout, again.stdout[-3000:]


class PortForward(threading.Thread):
    """`kubectl port-forward` to a Service, started again whenever it exits:
    it runs through the API server, so a restarted API server (test_chaos)
    ends it."""

    def __init__(self, namespace, service, port, target):
        super().__init__(daemon=True)
        self.argv = [kubectl_path(), "--kubeconfig", SHARED_KUBECONFIG, "-n", namespace, "port-forward",
                     "--address", "127.0.0.1", f"svc/{service}", f"{port}:{target}"]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.proc = None

    def run(self):
        while True:
            with self.lock:
                if self.stopping.is_set():
                    return
                self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.proc.wait()
            self.stopping.wait(1)

    def stop(self):
        with self.lock:
            self.stopping.set()
            if self.proc:
                self.proc.terminate()
                self.proc.wait(10)


@contextlib.contextmanager
def forwarded_airflow(namespace, port, dag_ids=("e2e_sleep_append",)):
    """The api-server's Service on 127.0.0.1:port, and its REST API as admin, once it knows these DAGs."""
    forward = PortForward(namespace, f"{PREFIX}-api-server", port, 8080)
    forward.start()
    try:
        wait_for(lambda: _listening(port), 30, "the api-server port-forward")
        password = base64.b64decode(kubectl("get", "secret", f"{PREFIX}-airflow-passwords",
                                            "-o", "jsonpath={.data.admin}", namespace=namespace)).decode()
        af = Airflow(f"http://127.0.0.1:{port}", password)
        wait_for(lambda: all(af.dag_known(d) for d in dag_ids), 180, "the e2e DAGs parsed from the claim",
                 interval=3)
        yield af
    finally:
        forward.stop()


@contextlib.contextmanager
def deployment(api, namespace, vars_file, secrets=(), dag_files=(DAGS,)):
    """deploy(), then the namespace deleted at the end."""
    core = client.CoreV1Api(api)
    deploy(core, namespace, vars_file, secrets, dag_files)
    try:
        yield core
    finally:
        # Not waited for: the workers' warm shutdown may take their grace period.
        core.delete_namespace(namespace)


def wait_runs(airflow, dag_id, run_ids, timeout):
    """The final states of these runs, once every one is success or failed."""
    def done():
        states = [airflow.run(dag_id, r)["state"] for r in run_ids]
        return states if all(s in ("success", "failed") for s in states) else None
    return wait_for(done, timeout, f"{len(run_ids)} runs of {dag_id} to finish", interval=3)


def variant_fixtures(suffix, namespace, vars_file, api_port, dag_files=(DAGS,), dag_ids=("e2e_sleep_append",)):
    """A test module's own deployment: the module-scoped fixtures `deployed_<suffix>`
    (site.yml with `vars_file` into `namespace`; the CoreV1Api) and `airflow_<suffix>`
    (its REST API on 127.0.0.1:`api_port`). Assign both to those names in the module."""
    @pytest.fixture(scope="module", name=f"deployed_{suffix}")
    def deployed_variant(api):
        with deployment(api, namespace, vars_file, dag_files=dag_files) as core:
            yield core

    @pytest.fixture(scope="module", name=f"airflow_{suffix}")
    def airflow_variant(request):
        request.getfixturevalue(f"deployed_{suffix}")
        with forwarded_airflow(namespace, api_port, dag_ids) as af:
            yield af

    return deployed_variant, airflow_variant


@pytest.fixture(scope="session")
def deployed(api):
    """site.yml on the real node (PostgreSQL, Redis, the ElasticWorker, declared Airflow objects), once."""
    with deployment(api, NAMESPACE, VARS, secrets=[OBJECTS_SECRET]) as core:
        yield core


@pytest.fixture(scope="session")
def airflow(deployed):
    with forwarded_airflow(NAMESPACE, API_PORT) as af:
        yield af


def worker_pods(core, namespace=NAMESPACE):
    return [p for p in core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=worker").items
            if p.metadata.deletion_timestamp is None]


def results(core, path, namespace=NAMESPACE):
    """The lines of a results file, read in a running worker."""
    pod = wait_for(lambda: [p for p in worker_pods(core, namespace) if p.status.phase == "Running"], 120,
                   "a running worker")[0]
    out = kubectl("exec", pod.metadata.name, "-c", "worker", "--", "sh", "-c", f"cat {path} 2>/dev/null || true",
                  namespace=namespace)
    return [line.split() for line in out.splitlines() if line.strip()]
