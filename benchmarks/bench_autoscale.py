#!/usr/bin/env python3
"""Autoscaling of Celery workers, measured on real Airflow in real pods:
elastic (the ElasticWorker controller) vs KEDA as the official Airflow chart
configures it vs a fixed fleet at the maximum and at the minimum (issue 17).

    python benchmarks/bench_autoscale.py [--repetitions N] [--modes elastic,keda,...]
                                         [--workloads bursts,grace] [--docs] [--dry-run]

How it works (benchmarks/autoscale/README.md has the details):

1. The workloads are fixed before any measurement: autoscale/workload.py
   turns SEED into two schedules of DAG runs (``bursts`` and ``grace``), the
   same for every mode. ``--dry-run`` prints them, every mode's site.yml
   variables and the rendered ScaledObject, and touches no cluster.
2. Modes run one after the other on the shared local cluster (order rotated
   per repetition), each in a fresh namespace deployed by site.yml on the
   real node with the e2e suite's functions (tests/integration/e2e_pods/
   conftest.py: deploy, forwarded_airflow, kubectl, wait_for): ``elastic``
   (elastic_airflow_worker_autoscaling: elastic), ``keda`` (autoscaling none,
   i.e. the worker StatefulSet, KEDA installed from the local images and our
   ScaledObject on it), ``fixed-max`` and ``fixed-min`` (autoscaling none).
   ``bursts`` runs with the chart's grace period (600 s), then site.yml
   changes it to 60 s and ``grace`` runs.
3. While a workload runs, a sampler thread records every SAMPLE_INTERVAL_S
   the worker pods (Pending / Running / Terminating) and the queue length
   (task instances scheduled or queued, from the REST API); afterwards each
   run's task instance (queued, start, end, try, state, hostname).
4. autoscale/metrics.py computes the figures, the ratios to KEDA and the
   targets (benchmarks/targets.py: a miss exits 1); autoscale/report.py writes
   the table, the plot and, with --docs, docs/performance.md.

Sizes are the constants below, for the 2-core node.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
E2E = REPO / "tests" / "integration" / "e2e_pods"
sys.path.insert(0, str(HERE))

from autoscale import keda, metrics, report, workload  # noqa: E402  (benchmarks/, this script's directory)
from targets import Targets  # noqa: E402

# --- Sizes (a 2-core node) -------------------------------------------------------
MIN_WORKERS = 1
MAX_WORKERS = 3
CONCURRENCY = 2                  # Celery task slots per worker
GRACE_BURSTS = 600               # terminationGracePeriodSeconds for "bursts": the chart's default
GRACE_SHORT = 60                 # ... and for "grace" (the issue: 60 s in every mode)
SAMPLE_INTERVAL_S = 2.0
# After the planned end of a workload: long enough for the slowest scale-in
# of a mode (KEDA's HPA keeps its default 300 s scale-down stabilization).
SETTLE_S = 330
OVERRUN_S = 600                  # how much longer a run may take than planned + settle
MODES = ("elastic", "keda", "fixed-max", "fixed-min")
WORKLOADS = ("bursts", "grace")
NAMESPACE_PREFIX = "bench-autoscale"
PREFIX = "e2e"                   # the cluster name conftest's functions expect
DAG = "e2e_sleep_append"
API_PORT = int(os.environ.get("ELASTIC_AIRFLOW_BENCH_AUTOSCALE_API_PORT", "18190"))
TERMINAL = ("success", "failed", "upstream_failed", "skipped", "removed")

CACHE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", os.path.expanduser("~/.cache/elastic-airflow")))


# --- Pure: what each mode deploys -------------------------------------------------


def namespace(mode):
    return "%s-%s" % (NAMESPACE_PREFIX, mode)


def floor(mode):
    """(the fleet size a mode returns to, whether it autoscales)."""
    return {"elastic": (MIN_WORKERS, True), "keda": (MIN_WORKERS, True),
            "fixed-max": (MAX_WORKERS, False), "fixed-min": (MIN_WORKERS, False)}[mode]


def mode_vars(mode, grace):
    """site.yml's variables (over inventories/local) for a mode and grace period."""
    v = {
        "elastic_airflow_namespace": namespace(mode),
        "elastic_airflow_cluster_name": PREFIX,
        "elastic_airflow_skip_layers": ["monitoring", "metrics_adapter"],
        "database_engine": "postgresql",
        "broker_engine": "redis",
        # conftest.deploy fills this claim with the e2e DAGs before site.yml.
        "git_sync_mode": "pvc",
        "git_sync_pvc_claim_name": "e2e-dags-fixture",
        "airflow_worker_concurrency": CONCURRENCY,
        "airflow_worker_termination_grace_period_seconds": grace,
        # e2e_sleep_append appends a line per run to a file on this claim.
        "airflow_worker_extra_volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "e2e-results"}}],
        "airflow_worker_extra_volume_mounts": [{"name": "results", "mountPath": "/results"}],
        "airflow_flower_enabled": False,
        "airflow_config": {
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # A task whose worker was killed is failed within about 30 s, not 5 min.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        },
    }
    if mode == "elastic":
        # The controller's defaults otherwise (target 80 %, back-off 30 s, poll 5 s).
        v.update({"elastic_airflow_worker_autoscaling": "elastic",
                  "elastic_worker_min_replicas": MIN_WORKERS, "elastic_worker_max_replicas": MAX_WORKERS})
    else:
        size = MAX_WORKERS if mode == "fixed-max" else MIN_WORKERS
        v.update({"elastic_airflow_worker_autoscaling": "none", "airflow_worker_replicas": size})
        v["elastic_airflow_skip_layers"] = v["elastic_airflow_skip_layers"] + ["elastic_worker"]
    if mode == "keda":
        # KEDA's operator (namespace keda) queries the metadata database.
        v["elastic_airflow_network_extra_flows"] = [{
            "name": "keda-postgresql",
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": keda.NAMESPACE}}}],
            "to": ["database"], "ports": [{"port": 5432}]}]
    return v


def mode_order(repetition, modes=MODES):
    """The modes of repetition ``repetition`` (0-based): rotated by one each time."""
    modes = list(modes)
    k = repetition % len(modes)
    return modes[k:] + modes[:k]


def scaled_objects(mode):
    return keda.scaled_object(namespace(mode), PREFIX, CONCURRENCY, MIN_WORKERS, MAX_WORKERS)


# --- Recording ----------------------------------------------------------------------


def epoch(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else None


def count_tis(af, states):
    query = "&".join("state=%s" % s for s in states)
    return af._call("GET", "/api/v2/dags/%s/dagRuns/~/taskInstances?%s&limit=1" % (DAG, query))["total_entries"]


class Sampler(threading.Thread):
    """Every SAMPLE_INTERVAL_S: the worker pods and their state, the queue length."""

    def __init__(self, core, af, ns):
        super().__init__(daemon=True)
        self.core, self.af, self.ns = core, af, ns
        self.samples, self.pods, self.errors = [], {}, 0
        self.halt = threading.Event()

    def sample(self):
        t = time.time()
        states = {}
        for p in self.core.list_namespaced_pod(self.ns, label_selector="app.kubernetes.io/component=worker").items:
            name = p.metadata.name
            states[name] = "Terminating" if p.metadata.deletion_timestamp else p.status.phase
            self.pods.setdefault(name, {"created": p.metadata.creation_timestamp.timestamp(), "first_seen": t})
        queued = running = None
        try:
            queued = count_tis(self.af, ["scheduled", "queued"])
            running = count_tis(self.af, ["running"])
        except Exception:  # a missed queue sample is recorded as None, the pods still count
            self.errors += 1
        self.samples.append({"t": t, "pods": states, "queued": queued, "running": running})

    def run(self):
        while not self.halt.is_set():
            started = time.time()
            try:
                self.sample()
            except Exception:
                self.errors += 1
            self.halt.wait(max(0.0, SAMPLE_INTERVAL_S - (time.time() - started)))

    def last(self):
        return self.samples[-1] if self.samples else None

    def stop(self):
        self.halt.set()
        self.join(30)


def ti_record(sub, ti):
    return {"key": sub.key, "burst": sub.burst, "seconds": sub.seconds, "kind": sub.kind,
            "state": ti.get("state"), "try_number": ti.get("try_number"), "hostname": ti.get("hostname"),
            "queued": epoch(ti.get("queued_when")), "start": epoch(ti.get("start_date")),
            "end": epoch(ti.get("end_date"))}


def at_floor(sample, size):
    states = list(sample["pods"].values())
    return (sum(s in ("Pending", "Running", "Terminating") for s in states) == size
            and "Terminating" not in states and "Pending" not in states)


def run_workload(e2e, core, af, mode, name, subs):
    """Trigger the schedule, sample until every task ended and the fleet is back
    at its floor (or the deadline), and return the recorded run."""
    ns = namespace(mode)
    size, autoscales = floor(mode)
    tag = os.urandom(3).hex()
    path = "/results/bench-%s-%s.txt" % (name, tag)
    e2e.wait_for(lambda: _quiet(core, ns, size), 900, "%s: %d worker(s) Running, none terminating" % (mode, size),
                 interval=3)
    sampler = Sampler(core, af, ns)
    sampler.start()
    time.sleep(2 * SAMPLE_INTERVAL_S)
    t0 = time.time()
    triggered = {}
    for s in subs:
        delay = t0 + s.at - time.time()
        if delay > 0:
            time.sleep(delay)
        run_id = "%s-%s-%s" % (name, s.key, tag)
        af.trigger(DAG, {"path": path, "seconds": s.seconds}, run_id)
        triggered[s.key] = (run_id, time.time() - t0)
    horizon = t0 + workload.planned_end(subs) + SETTLE_S
    deadline = horizon + OVERRUN_S
    tis = {}
    while True:
        for s in subs:
            if tis.get(s.key, {}).get("state") not in TERMINAL:
                got = af.tries(DAG, triggered[s.key][0])
                tis[s.key] = got[0] if got else {"state": None}
        done = all(t.get("state") in TERMINAL for t in tis.values())
        last = sampler.last()
        # A sample taken after the last task ended shows the fleet back at its floor.
        last_end = max((epoch(t.get("end_date")) or 0) for t in tis.values())
        if done and last and last["t"] > last_end and at_floor(last, size):
            break
        if time.time() > deadline:
            print("  %s/%s: deadline reached (tasks done: %s, fleet at floor: %s)"
                  % (mode, name, done, bool(last and at_floor(last, size))))
            break
        time.sleep(5)
    sampler.stop()
    t_stop = time.time()
    return {
        "mode": mode, "workload": name, "namespace": ns, "t0": t0, "t_stop": t_stop,
        "window_end": max(horizon, t_stop), "floor": size if autoscales else None,
        "triggered": {k: {"run_id": v[0], "at": v[1]} for k, v in triggered.items()},
        "tis": [ti_record(s, tis[s.key]) for s in subs], "samples": sampler.samples, "pods": sampler.pods,
        "sampler_errors": sampler.errors, "results_file": path,
    }


def _quiet(core, ns, size):
    pods = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=worker").items
    return (len(pods) == size and all(p.metadata.deletion_timestamp is None and p.status.phase == "Running"
                                      for p in pods))


def write_vars(directory, mode, grace):
    path = pathlib.Path(directory) / ("%s-grace%d.yml" % (mode, grace))
    path.write_text("---\n" + yaml.safe_dump(mode_vars(mode, grace), sort_keys=False))
    return path


def run_mode(e2e, core, mode, workloads, tmp, seed):
    """Deploy the mode in its own namespace, run the workloads, tear it down."""
    ns = namespace(mode)
    size = floor(mode)[0]
    runs = []
    installed = None

    def kubectl(*args, **kw):
        kw.setdefault("namespace", ns)
        return e2e.kubectl(*args, **kw)
    try:
        if mode == "keda":
            t = time.time()
            installed = keda.install_objects(keda.module_config_dir())  # uninstalled below, even half installed
            keda.install(kubectl, e2e.wait_for, objects=installed)
            print("  KEDA %s installed (%.0f s)" % (keda.keda_version(), time.time() - t))
        t = time.time()
        e2e.deploy(core, ns, write_vars(tmp, mode, GRACE_BURSTS))
        print("  %s deployed in %s (%.0f s)" % (mode, ns, time.time() - t))
        if mode == "keda":
            keda.apply(kubectl, scaled_objects(mode))
            e2e.wait_for(lambda: kubectl("get", "scaledobject", "%s-worker" % PREFIX, "-o",
                                         "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                                         check=False).strip() == "True",
                         300, "the ScaledObject Ready", interval=3)
        with e2e.forwarded_airflow(ns, API_PORT) as af:
            af.unpause(DAG)
            for name in workloads:
                if name == "grace":
                    t = time.time()
                    proc = e2e.site_yml(write_vars(tmp, mode, GRACE_SHORT), 1500)
                    if proc.returncode:
                        raise RuntimeError("site.yml with a %d s grace period failed: %s"
                                           % (GRACE_SHORT, proc.stdout[-3000:]))
                    e2e.wait_for(lambda: _quiet(core, ns, size) and all(
                        p.spec.termination_grace_period_seconds == GRACE_SHORT for p in core.list_namespaced_pod(
                            ns, label_selector="app.kubernetes.io/component=worker").items),
                        900, "%s: workers of the %d s grace period" % (mode, GRACE_SHORT), interval=3)
                    print("  %s: grace period %d s (%.0f s)" % (mode, GRACE_SHORT, time.time() - t))
                t = time.time()
                run = run_workload(e2e, core, af, mode, name, workload.schedule(name, seed))
                runs.append(run)
                s = metrics.summarize(run)
                print("  %s/%s (%.0f s): %s" % (mode, name, time.time() - t, json.dumps(
                    {k: (round(v, 1) if isinstance(v, float) else v) for k, v in s.items()
                     if k != "scale_out_by_burst"})))
    finally:
        if mode == "keda":
            # While the operator runs: it removes the finalizers of the ScaledObject (and its HPA) and of
            # the TriggerAuthentication. Should it not have done so, nothing else would: the namespace
            # would hang in Terminating (it did, the first time, on the TriggerAuthentication).
            for obj in reversed(scaled_objects(mode)):  # the ScaledObject first
                kind = keda.resource(obj)
                kubectl("delete", kind, obj["metadata"]["name"], "--ignore-not-found", "--wait=true",
                        "--timeout=240s", check=False)
                kubectl("patch", kind, obj["metadata"]["name"], "--type=merge", "-p",
                        '{"metadata": {"finalizers": null}}', check=False)
            if installed:
                keda.uninstall(kubectl, installed)
        # Gone before the next mode starts: two Airflows do not fit the 2-core node.
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
        e2e.wait_for(lambda: not _namespace_exists(core, ns), 900, "namespace %s gone" % ns, interval=5)
    return runs


def _namespace_exists(core, ns):
    from kubernetes import client
    try:
        core.read_namespace(ns)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


# --- Report ---------------------------------------------------------------------------


def versions(e2e):
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    local = yaml.safe_load((REPO / "inventories" / "local" / "group_vars" / "elastic_airflow.yml").read_text())
    kube = "?"
    with contextlib.suppress(Exception):  # --report without a cluster: the version stays "?"
        kube = json.loads(e2e.kubectl("version", "-o", "json", namespace="default"))["serverVersion"]["gitVersion"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    return {"collection": galaxy["version"], "commit": commit, "airflow": local.get("airflow_image_tag", "?"),
            "keda": keda.keda_version().lstrip("v"), "kubernetes": kube}


def machine():
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return "%d cores (%s), %s" % (os.cpu_count(), model, platform.platform(terse=True))


def finish(all_runs, args, e2e, out_dir):
    by = {}
    for run in all_runs:
        by.setdefault((run["mode"], run["workload"]), []).append(metrics.summarize(run))
    modes = [m for m in MODES if m in args.modes]
    tgt = Targets()
    tables, target_lines, missed_unmeasured = [], [], []
    for wl in args.workloads:
        agg = {m: report.aggregate(by[(m, wl)]) for m in modes if (m, wl) in by}
        if not agg:
            continue
        tables.append(report.table(wl, agg))
        if "keda" in agg:
            tables.append(report.ratio_table(wl, metrics.ratios(agg)))
        checks, unmeasured, skipped = metrics.target_checks(agg, wl)
        for name, value, limit in checks:
            ok = tgt.at_most(name, value, limit)
            target_lines.append("%s: %.2f (<= %.2f): %s" % (name, value, limit, "ok" if ok else "MISSED"))
        for name in unmeasured:
            print("target %s: not measured: MISSED" % name)
            tgt.missed.append(name)
            target_lines.append("%s: not measured: MISSED" % name)
            missed_unmeasured.append(name)
        for name in skipped:
            print("target %s: skipped" % name)
            target_lines.append("%s: skipped" % name)
    v = versions(e2e)
    header = [
        "Measured %s on %s." % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), machine()),
        "Versions: collection %(collection)s (%(commit)s), Airflow %(airflow)s, KEDA %(keda)s, "
        "Kubernetes %(kubernetes)s." % v,
        "Workloads of seed %d (benchmarks/autoscale/workload.py); %d to %d workers of concurrency %d; "
        "median of %d repetition(s), mode order rotated." % (args.seed, MIN_WORKERS, MAX_WORKERS, CONCURRENCY,
                                                             args.repetitions),
    ]
    print()
    print("\n\n".join(tables))
    plot_path = out_dir / "autoscale.png"
    first = {}
    for run in all_runs:
        first.setdefault((run["mode"], run["workload"]), run)
    try:
        report.plot(plot_path, first, modes, list(args.workloads),
                    "Celery workers and queue length, seed %d" % args.seed)
        print("plot: %s" % plot_path)
    except ImportError as exc:
        print("no plot (%s): make venv installs matplotlib (requirements-dev.txt)" % exc)
        plot_path = None
    except Exception as exc:  # the figures matter more than the picture: report and go on
        print("no plot: %r" % exc)
        plot_path = None
    sec = report.section(header, tables, target_lines, "performance-autoscale.png" if plot_path else None)
    (out_dir / "table.md").write_text(sec + "\n")
    if args.docs:
        docs = REPO / "docs" / "performance.md"
        docs.write_text(report.replace_section(docs.read_text(), sec))
        if plot_path:
            shutil.copy(plot_path, REPO / "docs" / "performance-autoscale.png")
        print("docs/performance.md updated")
    return tgt.exit_code()


# --- Main ------------------------------------------------------------------------------


def dry_run(args):
    print("sizes: %d-%d workers, concurrency %d, grace %d s (bursts) / %d s (grace), sample every %.0f s, "
          "settle %d s" % (MIN_WORKERS, MAX_WORKERS, CONCURRENCY, GRACE_BURSTS, GRACE_SHORT, SAMPLE_INTERVAL_S,
                           SETTLE_S))
    for r in range(args.repetitions):
        print("repetition %d: %s" % (r + 1, ", ".join(m for m in mode_order(r) if m in args.modes)))
    for name in args.workloads:
        subs = workload.schedule(name, args.seed)
        print()
        print(workload.describe(name, subs))
        print("  horizon (planned end + settle): %.0f s" % (workload.planned_end(subs) + SETTLE_S))
    for mode in args.modes:
        print("\n# site.yml variables of mode %s (grace %d s)" % (mode, GRACE_BURSTS))
        print(yaml.safe_dump(mode_vars(mode, GRACE_BURSTS), sort_keys=False).rstrip())
    print("\n# KEDA mode: the ScaledObject and its TriggerAuthentication")
    print(keda.to_yaml(scaled_objects("keda")).rstrip())
    print("\n# KEDA %s: applied from its Go module's config/ at bench time: %s"
          % (keda.keda_version(), ", ".join(keda.CONFIG_FILES)))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=1, help="rounds over every mode (order rotated)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of %s" % ", ".join(MODES))
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of bursts, grace")
    parser.add_argument("--seed", type=int, default=workload.SEED,
                        help="the workload seed (fixed; a change goes into the CHANGELOG)")
    parser.add_argument("--docs", action="store_true", help="write the results into docs/performance.md")
    parser.add_argument("--report", metavar="RUNS_JSON", type=pathlib.Path,
                        help="no run: report (and with --docs, write) from the runs.json a run kept, e.g. one "
                             "cut short; modes it lacks are 'not measured'")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the schedules, the modes' variables and the ScaledObject; touch no cluster")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [m for m in args.modes if m not in MODES] + [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        parser.error("unknown mode or workload: %s" % ", ".join(bad))
    if args.dry_run:
        return dry_run(args)
    if args.report:
        sys.path.insert(0, str(E2E))
        import conftest as e2e
        runs = json.loads(args.report.read_text())
        args.repetitions = max([run["repetition"] for run in runs] or [0])
        return finish(runs, args, e2e, args.report.parent)

    sys.path.insert(0, str(E2E))
    from kubernetes import client, config

    import conftest as e2e  # the e2e suite's functions (deploy, forwarded_airflow, kubectl, wait_for)
    from local_cluster import SHARED_KUBECONFIG
    if not os.path.exists(SHARED_KUBECONFIG):
        print("no cluster: %s is missing (make cluster-up)" % SHARED_KUBECONFIG)
        return 2
    core = client.CoreV1Api(config.new_client_from_config(config_file=SHARED_KUBECONFIG))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = CACHE / "bench" / ("autoscale-" + stamp)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_runs, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repetitions):
            for mode in [m for m in mode_order(r) if m in args.modes]:
                print("=== repetition %d, mode %s" % (r + 1, mode), flush=True)
                try:
                    runs = run_mode(e2e, core, mode, args.workloads, tmp, args.seed)
                except Exception as exc:
                    print("  %s FAILED: %s" % (mode, exc))
                    failed.append("%d/%s" % (r + 1, mode))
                    continue
                for run in runs:
                    run["repetition"] = r + 1
                all_runs.extend(runs)
                (out_dir / "runs.json").write_text(json.dumps(all_runs, default=str))
    rc = finish(all_runs, args, e2e, out_dir)
    print("raw runs, table and plot kept in %s" % out_dir)
    if failed:
        print("FAILED runs: %s" % ", ".join(failed))
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
