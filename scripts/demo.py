"""The end of `make demo`: open the deployed Airflow to a person.

After site.yml has converged on the local cluster (inventories/local), this
  - forwards the api-server, Flower and Prometheus to 127.0.0.1 (kubectl
    port-forward, left running after make returns; `make demo-down` or
    `make cluster-down` stops them),
  - waits until the api-server answers, logs in as the first declared user
    with the password generated into <cluster>-airflow-passwords,
  - runs the demo DAG once (unless a run of it already succeeded) and waits
    until it succeeded on a Celery worker,
  - prints where to go and how to log in.
A re-run reuses the port-forwards and the earlier run: it changes nothing.

    scripts/demo.py          # as above
    scripts/demo.py --stop   # stop the port-forwards
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", pathlib.Path.home() / ".cache" / "elastic-airflow"))
STATE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CLUSTER_STATE", CACHE / "run" / "cluster"))
FORWARDS_DIR = STATE / "port-forwards"  # cluster.sh down stops what is recorded here
NAMESPACE = os.environ.get("DEMO_NAMESPACE", "airflow")
PREFIX = os.environ.get("DEMO_CLUSTER_NAME", "airflow")
DAG_ID = "elastic_airflow_demo"
# name -> (Service, service port, local port)
FORWARDS = {
    "airflow": (f"{PREFIX}-api-server", 8080, int(os.environ.get("DEMO_AIRFLOW_PORT", "28080"))),
    "flower": (f"{PREFIX}-flower", 5555, int(os.environ.get("DEMO_FLOWER_PORT", "25555"))),
    "prometheus": (f"{PREFIX}-prometheus", 9090, int(os.environ.get("DEMO_PROMETHEUS_PORT", "29090"))),
}
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[demo {time.monotonic() - T0:5.1f}s] {message}", flush=True)


def kubectl(*args: str) -> str:
    bin_dir = (STATE / "bin").read_text().strip()
    return subprocess.run([f"{bin_dir}/kubectl", "--kubeconfig", str(STATE / "kubeconfig"), "-n", NAMESPACE, *args],
                          check=True, capture_output=True, text=True).stdout


def alive(pid_file: pathlib.Path) -> bool:
    try:
        pid = int(pid_file.read_text())
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"port-forward" in cmdline


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def forward(name: str, service: str, remote: int, local: int) -> None:
    FORWARDS_DIR.mkdir(parents=True, exist_ok=True)
    pid_file = FORWARDS_DIR / f"{name}.pid"
    if alive(pid_file) and listening(local):
        return
    if listening(local):
        sys.exit(f"demo: 127.0.0.1:{local} is taken by another program; set DEMO_{name.upper()}_PORT")
    bin_dir = (STATE / "bin").read_text().strip()
    log = open(FORWARDS_DIR / f"{name}.log", "w")
    # Its own session: it outlives make, and a terminal's Ctrl-C.
    proc = subprocess.Popen([f"{bin_dir}/kubectl", "--kubeconfig", str(STATE / "kubeconfig"), "-n", NAMESPACE,
                             "port-forward", "--address", "127.0.0.1", f"svc/{service}", f"{local}:{remote}"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    wait(f"port-forward of {service} to 127.0.0.1:{local}", lambda: listening(local), 30)


def stop() -> None:
    for pid_file in FORWARDS_DIR.glob("*.pid") if FORWARDS_DIR.exists() else []:
        if alive(pid_file):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink()
    print("demo: port-forwards stopped")


def wait(what: str, predicate, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    shown = time.monotonic()
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            sys.exit(f"demo: timed out after {timeout:.0f} s waiting for {what}")
        if time.monotonic() - shown >= 15:
            say(f"still waiting for {what}")
            shown = time.monotonic()
        time.sleep(every)


class Api:
    def __init__(self, base: str):
        self.base = base
        self.token = None

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def healthy(self) -> bool:
        try:
            health = self.call("GET", "/api/v2/monitor/health")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return all(part.get("status") == "healthy" for key, part in health.items()
                   if key in ("metadatabase", "scheduler"))

    def login(self, username: str, password: str) -> None:
        self.token = self.call("POST", "/auth/token", {"username": username, "password": password})["access_token"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stop", action="store_true", help="stop the port-forwards")
    if parser.parse_args().stop:
        stop()
        return
    if not (STATE / "kubeconfig").exists():
        sys.exit("demo: the local cluster is not up (make cluster-up)")

    for name, (service, remote, local) in FORWARDS.items():
        forward(name, service, remote, local)
    ui = f"http://127.0.0.1:{FORWARDS['airflow'][2]}"
    api = Api(ui)
    say("waiting until the api-server reports the database and the scheduler healthy")
    wait("a healthy api-server", api.healthy, 300)

    users = kubectl("get", "configmap", f"{PREFIX}-airflow-env",
                    "-o", "jsonpath={.data.AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS}").split(",")
    user = users[0].split(":")[0]
    secret = f"{PREFIX}-airflow-passwords"
    password = base64.b64decode(kubectl("get", "secret", secret, "-o", f"jsonpath={{.data.{user}}}")).decode()
    api.login(user, password)
    say(f"logged in to the API as {user}")

    runs = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?state=success&limit=1")["dag_runs"]
    if runs:
        run = runs[0]
        say(f"{DAG_ID} already ran successfully ({run['dag_run_id']}): not triggering it again")
    else:
        wait(f"the DAG {DAG_ID} to be parsed", lambda: _exists(api), 300)
        api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})
        say(f"triggered {DAG_ID} ({run['dag_run_id']}); waiting until its tasks ran on a Celery worker")

        def finished():
            state = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}")["state"]
            return state if state in ("success", "failed") else None
        if wait(f"the run of {DAG_ID}", finished, 600) != "success":
            sys.exit(f"demo: the run {run['dag_run_id']} of {DAG_ID} failed: see its task logs in the UI")
    tasks = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    hosts = sorted({t["hostname"] for t in tasks if t.get("hostname")})

    print(f"""
Airflow is up on the local cluster (namespace {NAMESPACE}), after {time.monotonic() - T0:.0f} s here.

  Airflow UI   {ui}
               user {user}; password (generated once, never printed by the playbooks):
                 make demo-password
  Flower       http://127.0.0.1:{FORWARDS['flower'][2]}
  Prometheus   http://127.0.0.1:{FORWARDS['prometheus'][2]}

  The demo DAG {DAG_ID} ran successfully ({run['dag_run_id']}) on the Celery worker {', '.join(hosts) or '?'}.

The port-forwards keep running; `make demo-down` (or `make cluster-down`) stops them.
""")


def _exists(api: Api) -> bool:
    try:
        api.call("GET", f"/api/v2/dags/{DAG_ID}")
        return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


if __name__ == "__main__":
    main()
