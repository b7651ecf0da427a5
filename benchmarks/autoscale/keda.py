"""KEDA as the official Airflow chart configures it for Celery workers, for the
`keda` mode of the autoscaling benchmark.

Our own ScaledObject, with what the chart's
``chart/templates/workers/worker-kedaautoscaler.yaml`` and ``values.yaml``
(``workers.keda``) set by default:

- one ``postgresql`` trigger on the metadata database, ``targetQueryValue: "1"``
  and the query ``SELECT ceil(COUNT(*)::decimal / <worker_concurrency>) FROM
  task_instance WHERE (state='running' OR state='queued')``: the workers that
  the running and queued task instances fill;
- ``pollingInterval: 5``, ``cooldownPeriod: 30``; no ``advanced`` section, so
  the HPA KEDA creates keeps Kubernetes' default behaviour (scale-down
  stabilization 300 s);
- on the worker StatefulSet (the chart's target when worker persistence is on,
  its default).

Where ours differs, and why:

- the chart reads the connection from the workers' ``AIRFLOW_CONN_AIRFLOW_DB``
  (``connectionFromEnv``); our workers carry a SQLAlchemy URL instead, so the
  trigger names host, port, user, database and sslmode, and a
  TriggerAuthentication takes the password from the collection's generated
  Secret (``database-password``): no secret is copied or printed;
- ``minReplicaCount`` is the benchmark's floor, the same as every other
  mode's (the chart's default is 0), so the cost compares policies, not
  floors; ``maxReplicaCount`` the benchmark's maximum (the chart's 10 does not
  fit a 2-core node).

KEDA itself (operator and metrics API server, v2.18.1, images/keda-*) is
installed at bench time from what its Go module ships in ``config/``: the
CRDs (``crd/bases``), the namespace, service account, RBAC, Services and the
APIService, applied as they are; the two Deployments from
``config/manager`` and ``config/metrics-server`` with our local images, and
the operator told not to patch an admission webhook (its webhooks image is not
built here). Nothing of it is copied into this repository.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import subprocess

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
KEDA_SH = REPO / "images" / "keda-operator" / "keda.sh"
KEDA_MODULE = "github.com/kedacore/keda/v2"
NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"

# The chart's defaults (workers.keda) that the benchmark keeps.
POLLING_INTERVAL = 5
COOLDOWN_PERIOD = 30
TARGET_QUERY_VALUE = "1"


def keda_version():
    """KEDA_VERSION of images/keda-operator/keda.sh (the images' version)."""
    match = re.search(r"^KEDA_VERSION=(\S+)$", KEDA_SH.read_text(), re.M)
    return match.group(1)


def query(concurrency):
    """The chart's default query (CeleryExecutor), for this worker concurrency."""
    return ("SELECT ceil(COUNT(*)::decimal / %d) FROM task_instance WHERE (state='running' OR state='queued')"
            % int(concurrency))


def scaled_object(namespace, prefix, concurrency, min_replicas, max_replicas, database_port=5432):
    """The ScaledObject and its TriggerAuthentication, as a list of objects."""
    auth_name = "%s-keda-postgresql" % prefix
    # Not the collection's own labels: its layers prune by them.
    labels = {"app.kubernetes.io/part-of": "bench-autoscale"}
    auth = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": {"name": auth_name, "namespace": namespace, "labels": labels},
        "spec": {"secretTargetRef": [
            {"parameter": "password", "name": "%s-generated-secrets" % prefix, "key": "database-password"}]},
    }
    so = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "%s-worker" % prefix, "namespace": namespace, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "%s-worker" % prefix},
            "pollingInterval": POLLING_INTERVAL,
            "cooldownPeriod": COOLDOWN_PERIOD,
            "minReplicaCount": int(min_replicas),
            "maxReplicaCount": int(max_replicas),
            "triggers": [{
                "type": "postgresql",
                "metadata": {
                    "targetQueryValue": TARGET_QUERY_VALUE,
                    "query": query(concurrency),
                    "host": "%s-database.%s.svc" % (prefix, namespace),
                    "port": str(database_port),
                    "userName": "airflow",
                    "dbName": "airflow",
                    "sslmode": "disable",
                },
                "authenticationRef": {"name": auth_name},
            }],
        },
    }
    return [auth, so]


def to_yaml(objects):
    return yaml.safe_dump_all(objects, sort_keys=False, width=200)


# ------------------------------------------------------------------ KEDA itself


def module_config_dir(version=None):
    """``config/`` of KEDA's Go module in the module cache (downloaded through
    the Go module proxy if it is not there yet)."""
    version = version or keda_version()
    gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                                check=True).stdout.strip()
    path = pathlib.Path(gomodcache) / ("%s@%s" % (KEDA_MODULE, version)) / "config"
    if not path.is_dir():
        out = subprocess.run(["go", "mod", "download", "-json", "%s@%s" % (KEDA_MODULE, version)],
                             capture_output=True, text=True, check=True, env=dict(os.environ, GOFLAGS="-mod=mod"))
        path = pathlib.Path(json.loads(out.stdout)["Dir"]) / "config"
    return path


# What is applied from config/, in this order (the CRDs first).
CONFIG_FILES = [
    "crd/bases/keda.sh_scaledobjects.yaml",
    "crd/bases/keda.sh_scaledjobs.yaml",
    "crd/bases/keda.sh_triggerauthentications.yaml",
    "crd/bases/keda.sh_clustertriggerauthentications.yaml",
    "crd/bases/eventing.keda.sh_cloudeventsources.yaml",
    "crd/bases/eventing.keda.sh_clustercloudeventsources.yaml",
    "general/namespace.yaml",
    "service_account/service_account.yaml",
    "rbac/role.yaml",
    "rbac/role_binding.yaml",
    "metrics-server/role.yaml",
    "metrics-server/role_binding.yaml",
    "manager/service.yaml",
    "metrics-server/service.yaml",
    "manager/manager.yaml",
    "metrics-server/deployment.yaml",
    "metrics-server/api_service.yaml",
]

IMAGES = {"keda-operator": "localhost/elastic-airflow/keda-operator:%s",
          "keda-metrics-apiserver": "localhost/elastic-airflow/keda-metrics-apiserver:%s"}
# Smaller requests than upstream's 100m each: the 2-core node also runs Airflow.
RESOURCES = {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}


def install_objects(config_dir, version=None):
    """KEDA's objects from its module's config/, the Deployments on our images."""
    version = (version or keda_version()).lstrip("v")
    objects = []
    for name in CONFIG_FILES:
        for doc in yaml.safe_load_all((pathlib.Path(config_dir) / name).read_text()):
            if not doc:
                continue
            doc = copy.deepcopy(doc)
            kind, meta = doc["kind"], doc["metadata"]
            if kind in ("Deployment", "Service", "ServiceAccount", "Role") and "namespace" not in meta:
                meta["namespace"] = NAMESPACE
            if kind == "Deployment":
                spec = doc["spec"]["template"]["spec"]
                for c in spec["containers"]:
                    c["image"] = IMAGES[meta["name"]] % version
                    c["imagePullPolicy"] = "Never"
                    c["resources"] = copy.deepcopy(RESOURCES)
                    if meta["name"] == "keda-operator":
                        c["args"] = list(c.get("args", [])) + ["--enable-webhook-patching=false"]
            objects.append(doc)
    return objects


def apply(kubectl, objects):
    """Server-side apply, one object at a time (the CRDs are too big for the
    client-side annotation), each with the namespace it names. ``kubectl`` is
    tests/integration/e2e_pods/conftest.py's (its calls time out after 300 s:
    the waits below stay under that)."""
    for obj in objects:
        ns = obj["metadata"].get("namespace", NAMESPACE)
        kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=bench-autoscale", "-f", "-",
                input=json.dumps(obj), namespace=ns)


def install(kubectl, wait_for, config_dir=None, objects=None):
    """Apply KEDA (``objects``, or install_objects() of ``config_dir``) and wait
    until its APIService is Available; returns the objects."""
    objects = objects if objects is not None else install_objects(config_dir or module_config_dir())
    apply(kubectl, objects)
    for name in ("keda-operator", "keda-metrics-apiserver"):
        kubectl("rollout", "status", "deployment/%s" % name, "--timeout=240s", namespace=NAMESPACE)

    def available():
        out = kubectl("get", "apiservice", APISERVICE, "-o",
                      "jsonpath={.status.conditions[?(@.type=='Available')].status}", check=False)
        return out.strip() == "True"
    wait_for(available, 300, "the APIService %s Available" % APISERVICE, 3)
    return objects


def uninstall(kubectl, objects):
    """The reverse of install: the APIService first (an unavailable aggregated
    API stalls namespace deletion), the CRDs last."""
    for obj in reversed(objects):
        ns = obj["metadata"].get("namespace", NAMESPACE)
        kubectl("delete", resource(obj), obj["metadata"]["name"], "--ignore-not-found",
                "--wait=true", "--timeout=240s", namespace=ns, check=False)


def resource(obj):
    """kind.group as kubectl names it (the kind alone for the core group)."""
    api = obj["apiVersion"]
    return obj["kind"].lower() + ("." + api.split("/")[0] if "/" in api else "")
