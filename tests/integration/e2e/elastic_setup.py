"""The elastic controller over the e2e cluster's Airflow workers.

The worker StatefulSet the airflow role made is scaled to 0 and an
ElasticWorker (+ ElasticWorkerAutoscaler) takes over with the same pod
template, as the elastic_worker role does in mode `elastic`. The controller
is the project's code (plugins/module_utils/elastic), run locally against
the cluster. The WorkerFleet runs one real Airflow Celery worker per pod.

One local difference: the controller reaches the broker through a Secret
<c>-broker-local holding the broker URL mapped to the local server (in the
cluster it would use <c>-broker, whose host name only resolves there).
"""
import glob
import json
import os
import subprocess
import sys

from kubernetes import client

import harness

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
GROUP, VERSION = "elastic-airflow.io", "v1"
BACKOFF = 10


def apply_crds(kubeconfig, api):
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "elastic"))
    import render
    docs = render.render("crds.yaml.j2")
    cache = os.environ.get("ELASTIC_AIRFLOW_CACHE", os.path.expanduser("~/.cache/elastic-airflow"))
    kubectl = glob.glob(os.path.join(cache, "cluster", "*", "bin", "kubectl"))[0]
    out = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "apply", "--server-side", "--force-conflicts",
                          "--field-manager=elastic-airflow-tests", "-f", "-"],
                         input="\n".join(json.dumps(d) for d in docs), capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    ext = client.ApiextensionsV1Api(api)
    for crd in docs:
        name = crd["metadata"]["name"]

        def established(name=name):
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        harness.wait_for(established, 60, "CRD %s Established" % name)


class Elastic:
    def __init__(self, af, api, log_dir):
        from conftest import KUBECONFIG
        self.af, self.api, self.kubeconfig = af, api, KUBECONFIG
        self.ns, self.cluster = af.namespace, af.cluster
        self.name = "%s-elastic" % self.cluster
        self.custom = client.CustomObjectsApi(api)
        self.log_path = os.path.join(log_dir, "controller.log")
        self.proc = None

    def start(self):
        af = self.af
        apply_crds(self.kubeconfig, self.api)
        template = self.api.sanitize_for_serialization(af.config.worker_template())
        # the StatefulSet's workers go (warm shutdown, as on a real scale-in of an idle worker)
        af.apps.patch_namespaced_stateful_set_scale("%s-worker" % self.cluster, self.ns, {"spec": {"replicas": 0}})
        harness.wait_for(lambda: not [p for p in af.fleet.live() if not p.startswith(self.name)], 120,
                         "StatefulSet workers gone")
        secret = "%s-broker-local" % self.cluster
        af.core.create_namespaced_secret(self.ns, {"metadata": {"name": secret},
                                                   "stringData": {"url": af.local_broker_url}})
        labels = dict(template["metadata"]["labels"], **{"elastic-airflow.io/e2e": "elastic"})
        template["metadata"]["labels"] = labels
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "elasticworkers", {
            "apiVersion": "%s/%s" % (GROUP, VERSION), "kind": "ElasticWorker",
            "metadata": {"name": self.name, "namespace": self.ns},
            "spec": {"minReplicas": 1, "maxReplicas": 4, "selector": {"matchLabels": labels},
                     "scaleInPolicy": {"type": "IdleOnly"},
                     "drain": {"timeoutSeconds": 120, "brokerSecretRef": {"name": secret, "key": "url"},
                               "queues": ["default"]},
                     "template": template}})
        # 2 slots per worker: 50 % means one task per worker
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "elasticworkerautoscalers", {
            "apiVersion": "%s/%s" % (GROUP, VERSION), "kind": "ElasticWorkerAutoscaler",
            "metadata": {"name": self.name, "namespace": self.ns},
            "spec": {"scaleTargetRef": {"name": self.name}, "minReplicas": 1, "maxReplicas": 4,
                     "targetValue": 50, "scaleInBackOffSeconds": BACKOFF, "pollIntervalSeconds": 2,
                     "metric": {"type": "celery", "celery": {"queues": ["default"]}}}})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "elastic.controller", "--kubeconfig", self.kubeconfig, "--namespace", self.ns,
             "--identity", "e2e", "--lease-duration", "6", "--resync-seconds", "1", "--health-port", "0",
             "--log-level", "INFO"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=MODULE_UTILS),
            start_new_session=True)

    def live_pods(self):
        pods = self.af.core.list_namespaced_pod(self.ns, label_selector="elastic-airflow.io/e2e=elastic").items
        return [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]

    def wait_first_worker(self):
        sys.path.insert(0, MODULE_UTILS)
        from elastic.celery_control import CeleryControl
        pods = harness.wait_for(self.live_pods, 60, "the first ElasticWorker pod")
        ctl = CeleryControl(self.af.local_broker_url, timeout=1.0)
        try:
            harness.wait_for(lambda: ctl.ping(["celery@" + pods[0]]).get("celery@" + pods[0]), 180,
                             "celery@%s answers" % pods[0], interval=2, stack=self.af.stack)
        finally:
            ctl.close()
        return pods[0]

    def text(self):
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")

    def scale_events(self):
        return "\n".join(line for line in self.text().splitlines() if " -> " in line or "delet" in line.lower())

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            self.log.close()
            sys.stdout.write("---- controller log (tail)\n%s\n" % self.text()[-3000:])
