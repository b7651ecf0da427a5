#!/usr/bin/env python3
"""Benchmark of the ElasticWorker controller on the local control plane.

1. One reconcile over an ElasticWorker with 1,000 pods on the KWOK nodes:
   prints the CPU seconds of that pass, the API calls it made (by verb) and
   the peak RSS of the process (cache included).
2. Scale-in latency: run the tests' real-Celery scenario and print the time
   from load dropping to the first idle pod deleted (see
   tests/integration/elastic/test_elastic_celery.py), unless --no-latency.

Targets: <= 1 s CPU per pass, no LIST call in a pass (the informers' caches
serve it), no API call at all in a pass that changes nothing, <= 100 MB peak
RSS, and the latency test's own bound (back-off + 10 s). Exits 1 when one is
missed. With --pods above 1,000 the CPU and RSS targets grow in proportion
(per 1,000 pods: 1 s, 100 MB); `make bench-autoscale` runs 1,000 and 5,000.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid

from kubernetes import client

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "elastic"))

from elastic import controller as C  # noqa: E402
from elastic import kube as K  # noqa: E402
from elastic import reconcile as R  # noqa: E402
from targets import Targets  # noqa: E402  (benchmarks/, this script's directory)

CACHE = os.environ.get("ELASTIC_AIRFLOW_CACHE", os.path.expanduser("~/.cache/elastic-airflow"))
KUBECONFIG = os.path.join(CACHE, "run", "cluster", "kubeconfig")


def peak_rss_mb():
    """VmHWM of this process (ru_maxrss would include the parent's peak from before exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(ns, n_pods):
    """The controller's side, in a process of its own (so RSS is the controller's)."""
    # the measured controller: caches (LIST + WATCH) and one reconcile pass
    kube = K.Kube(K.load_client(KUBECONFIG), ns)
    print("  RSS after imports and client setup: %.1f MB" % peak_rss_mb())
    cpu0, wall0 = cpu(), time.time()
    informers = kube.informers(lambda *a: None)
    for i in informers.values():
        i.start()
    for i in informers.values():
        i.synced.wait(120)
    cpu_sync = cpu() - cpu0
    calls_sync = kube.counter.snapshot()
    reconciler = C.Reconciler(kube, informers)
    cpu1 = cpu()
    reports = reconciler.reconcile_all()
    cpu_pass = cpu() - cpu1
    calls = kube.counter.snapshot()
    pass_calls = dict((k, calls[k] - calls_sync.get(k, 0)) for k in calls if calls[k] - calls_sync.get(k, 0))
    rss_mb = peak_rss_mb()
    report = [r for r in reports if r.get("name") == "w"][0]
    print("reconcile of 1 ElasticWorker with %d pods (plan: %d create, %d delete; status replicas %d)"
          % (n_pods, len(report["plan"]["create"]), len(report["plan"]["delete"]),
             report["plan"]["status"]["replicas"]))
    print("  cache sync (LIST+WATCH of 3 kinds): %.3f s CPU, %.2f s wall, calls %s"
          % (cpu_sync, time.time() - wall0, calls_sync))
    print("  one reconcile pass: %.3f s CPU, API calls %s (LIST calls in the pass: %d)"
          % (cpu_pass, pass_calls, sum(v for k, v in pass_calls.items() if k.startswith("LIST"))))
    print("  peak RSS of the controller process: %.1f MB; its CPU since start (imports included): %.2f s"
          % (rss_mb, cpu()))
    # a second pass on an unchanged cluster must make no call at all
    calls_before = kube.counter.total()
    cpu2 = cpu()
    reconciler.reconcile_all()
    second_calls = kube.counter.total() - calls_before
    print("  second pass (nothing changed): %.3f s CPU, %d API calls" % (cpu() - cpu2, second_calls))
    for i in informers.values():
        i.stop()
    targets = Targets()
    per_thousand = max(1.0, n_pods / 1000.0)
    targets.at_most("CPU of one pass over %d pods" % n_pods, cpu_pass, 1.0 * per_thousand, " s")
    targets.at_most("LIST calls in a pass", sum(v for k, v in pass_calls.items() if k.startswith("LIST")), 0)
    targets.at_most("API calls in a pass that changes nothing", second_calls, 0)
    targets.at_most("peak RSS of the controller", rss_mb, 100 * per_thousand, " MB")
    return targets.exit_code()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--measure", metavar="NAMESPACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.pods)
    import conftest  # the CRD apply + kubectl helpers of the tests
    api = K.load_client(KUBECONFIG)
    api.configuration.connection_pool_maxsize = 32
    conftest.crds.__wrapped__(api) if hasattr(conftest.crds, "__wrapped__") else None
    manifest = "\n".join(json.dumps(d) for d in conftest.render.render("crds.yaml.j2"))
    assert conftest.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest).returncode == 0
    conftest.kubectl("wait", "--for", "condition=Established", "crd/elasticworkers.elastic-airflow.io")
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    ns = "bench-%s" % uuid.uuid4().hex[:6]
    core.create_namespace({"metadata": {"name": ns}})
    # Fake nodes of our own (tainted, so nobody else's pods land there): the
    # cluster's three nodes hold 110 pods each.
    bench_nodes = []
    for i in range((args.pods + 499) // 500):
        name = "kwok-%s-%d" % (ns, i)
        core.create_node({"metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                                       "labels": {"type": "kwok", "bench": ns, "kubernetes.io/hostname": name}},
                          "spec": {"taints": [{"key": "bench", "value": ns, "effect": "NoSchedule"}]},
                          "status": {"capacity": {"cpu": "1000", "memory": "1Ti", "pods": "600"},
                                     "allocatable": {"cpu": "1000", "memory": "1Ti", "pods": "600"}}})
        bench_nodes.append(name)
    try:
        body = conftest.elastic_worker("w", ns, low=1, high=args.pods, replicas=args.pods, policy="Immediate")
        body["spec"]["template"]["spec"]["nodeSelector"] = {"bench": ns}
        body["spec"]["template"]["spec"]["tolerations"] = [{"key": "bench", "operator": "Equal", "value": ns,
                                                            "effect": "NoSchedule"}]
        ew = custom.create_namespaced_custom_object(R.GROUP, R.VERSION, ns, R.EW_PLURAL, body)
        # the pods exist before the measured pass (created here in parallel, not by the controller)
        from concurrent.futures import ThreadPoolExecutor
        names = ["w-%05d" % i for i in range(args.pods)]
        t0 = time.time()
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(lambda n: core.create_namespaced_pod(ns, R.build_pod(ew, n)), names))
        print("setup: %d pods created in %.1f s" % (args.pods, time.time() - t0))

        def all_running():
            pods = core.list_namespaced_pod(ns, label_selector=R.OWNER_LABEL).items
            return sum(1 for p in pods if p.status.phase == "Running")
        deadline = time.time() + 300
        while all_running() < args.pods and time.time() < deadline:
            time.sleep(2)
        print("setup: %d pods Running on KWOK nodes" % all_running())

        # 1: a target missed (it printed which); the latency is still measured
        measured = subprocess.run([sys.executable, __file__, "--measure", ns, "--pods", str(args.pods)],
                                  text=True).returncode
    finally:
        core.delete_namespace(ns)
        for node in bench_nodes:
            core.delete_node(node)

    if not args.no_latency:
        print("scale-in latency (real Celery workers, back-off 6 s):")
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                              os.path.join(ROOT, "tests", "integration", "elastic", "test_elastic_celery.py")],
                             capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if "latency" in line or "passed" in line or "failed" in line]
        print("  " + "\n  ".join(lines))
        if out.returncode:
            print(out.stdout[-3000:])
            print("MISSED: the scale-in latency test failed")
            return 1
    return measured


if __name__ == "__main__":
    sys.exit(main())
