"""Run the collection's playbooks against the local control plane.

`make test-playbooks` brings the cluster up and links the collection into
ANSIBLE_COLLECTIONS_PATH first; these fixtures only drive ansible-playbook and
read the cluster back.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
# API-level suite: every pod on the KWOK nodes (no container runs; see inventories/local-kwok).
INVENTORIES = ["-i", str(REPO / "inventories" / "local"), "-i", str(REPO / "inventories" / "local-kwok")]
# ELASTIC_AIRFLOW_TEST_NAMESPACE runs the suite in another namespace (passed
# as elastic_airflow_namespace), so that it does not meet someone else's work
# on the shared local cluster's `airflow` namespace.
NAMESPACE = os.environ.get("ELASTIC_AIRFLOW_TEST_NAMESPACE", "airflow")
CLUSTER_NAME = "airflow"
RECAP = re.compile(r"^\S+\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclasses.dataclass
class Run:
    rc: int
    output: str
    seconds: float

    @property
    def changed(self) -> int:
        """Sum of changed= over the hosts of the PLAY RECAP."""
        return sum(int(m.group(2)) for m in RECAP.finditer(self.output))

    @property
    def changed_tasks(self) -> list[str]:
        """The TASK headers of the tasks that reported a change, with what followed."""
        found, task = [], ""
        lines = self.output.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("TASK ["):
                task = line
            elif line.startswith("changed: "):
                found.append(task + "\n" + "\n".join(lines[i : i + 40]))
        return found


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", pathlib.Path.home() / ".cache" / "elastic-airflow"))


def kubeconfig() -> pathlib.Path:
    return cache_dir() / "run" / "cluster" / "kubeconfig"


@functools.lru_cache(maxsize=1)
def installed_collection() -> str:
    """The collection as users get it: built with ansible-galaxy and installed
    offline into an empty collections path (kubernetes.core still comes from
    the `ansible` package). Returns that collections path."""
    target = pathlib.Path(tempfile.mkdtemp(prefix="elastic-airflow-collection-"))
    atexit.register(shutil.rmtree, target, True)
    subprocess.run(["ansible-galaxy", "collection", "build", "--output-path", str(target), str(REPO)],
                   check=True, capture_output=True)
    tarball = next(target.glob("elastic_airflow-cluster-*.tar.gz"))
    installed = str(target / "installed")
    subprocess.run(["ansible-galaxy", "collection", "install", "--offline", "--no-deps", "-p", installed, str(tarball)],
                   check=True, capture_output=True, env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=installed))
    return installed


def run_playbook(playbook: str, *args: str, extra_vars: dict | None = None, timeout: int = 1200) -> Run:
    """`ansible-playbook elastic_airflow.cluster.<playbook>` from the installed
    collection, against inventories/local + local-kwok; output is returned, not printed."""
    import time

    name = "elastic_airflow.cluster." + playbook.removesuffix(".yml")
    cmd = ["ansible-playbook", *INVENTORIES, name, *args]
    if NAMESPACE != "airflow":  # before the case's own -e, which wins
        cmd += ["-e", json.dumps({"elastic_airflow_namespace": NAMESPACE})]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(extra_vars or {}, fh)
    cmd += ["-e", "@" + fh.name]
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0",
               ANSIBLE_COLLECTIONS_PATH=installed_collection())
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    os.unlink(fh.name)
    return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


@functools.lru_cache(maxsize=1)
def _kubectl_bin() -> str:
    bin_dir = subprocess.run([str(REPO / "tests" / "cluster" / "build.sh")],
                             capture_output=True, text=True, check=True).stdout
    return str(pathlib.Path(bin_dir.strip()) / "kubectl")


def kubectl(*args: str) -> str:
    proc = subprocess.run([_kubectl_bin(), "--kubeconfig", str(kubeconfig()), *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


# Objects that change on their own (heartbeats, leader leases, events) are no
# evidence of what a playbook did.
# ServiceCIDRs and IPAddresses change whenever anyone creates or deletes a
# Service anywhere in the shared cluster.
VOLATILE = {"events", "events.events.k8s.io", "leases.coordination.k8s.io",
            "ipaddresses.networking.k8s.io", "servicecidrs.networking.k8s.io"}


@functools.lru_cache(maxsize=1)
def _listable_resources() -> tuple[list[str], list[str]]:
    namespaced = [r for r in kubectl("api-resources", "--verbs=list", "--namespaced=true", "-o", "name").split()
                  if r not in VOLATILE]
    cluster_scoped = [
        r for r in kubectl("api-resources", "--verbs=list", "--namespaced=false", "-o", "name").split()
        if r not in VOLATILE and r not in {"nodes", "componentstatuses"}
        and not r.startswith(("tokenreviews", "selfsubject"))
    ]
    return namespaced, cluster_scoped


def cluster_snapshot() -> dict[str, str]:
    """(kind/namespace/name) -> resourceVersion of every object a run could
    touch: all cluster-scoped objects (a new namespace shows there), and all
    objects in the cluster's namespace and in kube-system (the metrics
    adapter's RoleBinding). Other namespaces belong to other tests."""
    snapshot: dict[str, str] = {}
    namespaced, cluster_scoped = _listable_resources()
    scopes = [("-n", NAMESPACE), ("-n", "kube-system"), None]
    for scope in scopes:
        resources = namespaced if scope else cluster_scoped
        items = json.loads(kubectl("get", ",".join(resources), *(scope or ()), "-o", "json"))["items"]
        for item in items:
            meta = item["metadata"]
            if item["kind"] == "Namespace" and meta["name"] != NAMESPACE:
                continue  # other test suites' namespaces come and go
            if (item["kind"] == "PersistentVolume"
                    and (item["spec"].get("claimRef") or {}).get("namespace") != NAMESPACE):
                continue  # the shared pool: bound, released and recycled for other namespaces' claims
            snapshot[f"{item['kind']}/{meta.get('namespace', '')}/{meta['name']}"] = meta["resourceVersion"]
    return snapshot


@pytest.fixture(scope="session")
def converged() -> Run:
    """site.yml applied once (with -vvv, so the secrets test can read everything it printed)."""
    run = run_playbook("site.yml", "-vvv")
    assert run.rc == 0, run.output[-6000:]
    return run
