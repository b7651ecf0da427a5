"""The pure parts of `make bench-autoscale` (benchmarks/bench_autoscale.py and
benchmarks/autoscale/): the seeded workloads (pinned for the fixed seed), the
metrics on synthetic timelines, the KEDA objects, each mode's settings and
the report. No cluster, no matplotlib."""

import pathlib
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_autoscale as bench  # noqa: E402
from autoscale import keda, metrics, report, workload  # noqa: E402

# The schedules of workload.SEED: (at, key, seconds, kind). Fixed before the
# first measurement; a change here is a change of the benchmark (CHANGELOG).
BURSTS = [
    (1.4, "b0-01", 64, "l"), (2.0, "b0-04", 26, "s"), (2.8, "b0-00", 11, "s"), (3.9, "b0-03", 25, "s"),
    (4.5, "b0-02", 162, "l"), (113.3, "b1-03", 73, "l"), (114.1, "b1-01", 83, "l"), (114.5, "b1-02", 30, "s"),
    (115.0, "b1-04", 27, "s"), (116.8, "b1-00", 10, "s"), (221.0, "b2-04", 23, "s"), (221.1, "b2-01", 28, "s"),
    (223.5, "b2-02", 29, "s"), (223.7, "b2-06", 22, "s"), (224.2, "b2-03", 26, "s"), (224.6, "b2-05", 29, "s"),
    (225.2, "b2-00", 25, "s"),
]
GRACE = [
    (0.1, "g0-00", 22, "s"), (1.3, "g0-01", 28, "s"), (1.3, "g0-04", 14, "s"), (2.4, "g0-05", 22, "s"),
    (3.3, "g0-03", 24, "s"), (3.9, "g0-02", 11, "s"), (20.0, "t1-00", 112, "l"), (66.5, "t1-01", 164, "l"),
    (109.5, "t1-02", 76, "l"), (148.8, "t1-03", 82, "l"), (198.3, "t1-04", 172, "l"), (237.8, "t1-05", 93, "l"),
    (279.8, "t1-06", 163, "l"), (323.6, "t1-07", 86, "l"),
]


def _short(subs):
    return [(s.at, s.key, s.seconds, s.kind[0]) for s in subs]


# ------------------------------------------------------------------ the workloads


def test_the_seed_is_the_one_fixed_before_the_first_measurement():
    assert workload.SEED == 20261217


@pytest.mark.parametrize(("name", "expected"), [("bursts", BURSTS), ("grace", GRACE)])
def test_the_schedule_of_the_seed_is_pinned(name, expected):
    assert _short(workload.schedule(name)) == expected
    assert workload.schedule(name) == workload.schedule(name, workload.SEED)  # a pure function of the seed


def test_another_seed_gives_another_schedule():
    assert _short(workload.schedule("bursts", workload.SEED + 100)) != BURSTS


@pytest.mark.parametrize("seed", [workload.SEED, 1, 2, 3, 42])
def test_schedules_keep_their_shape_for_any_seed(seed):
    for name in workload.WORKLOADS:
        subs = workload.schedule(name, seed)
        assert [s.at for s in subs] == sorted(s.at for s in subs)
        assert len({s.key for s in subs}) == len(subs)
        for s in subs:
            low, high = workload.SHORT if s.kind == "short" else workload.LONG
            assert low <= s.seconds <= high
    bursts = workload.schedule("bursts", seed)
    for b in range(1, workload.BURSTS):
        # The idle gap: the next burst starts after every short task of the previous one would have ended.
        prev_short_end = max([s.at + s.seconds for s in bursts if s.burst == b - 1 and s.kind == "short"] or [0])
        assert min(s.at for s in bursts if s.burst == b) >= prev_short_end + workload.IDLE_GAP[0] - 0.1
    grace = workload.schedule("grace", seed)
    assert sum(s.kind == "long" and s.seconds > bench.GRACE_SHORT for s in grace) == workload.TRICKLE


def test_describe_lists_every_run():
    text = workload.describe("grace", workload.schedule("grace"))
    assert text.startswith("workload grace: 14 runs (6 short, 8 long), planned end 443 s")
    assert len(text.splitlines()) == 15


# ------------------------------------------------------------------ the modes


def test_mode_order_rotates_per_repetition():
    assert bench.mode_order(0) == ["elastic", "keda", "fixed-max", "fixed-min"]
    assert bench.mode_order(1) == ["keda", "fixed-max", "fixed-min", "elastic"]
    assert bench.mode_order(4) == bench.mode_order(0)


def test_mode_settings():
    el = bench.mode_vars("elastic", 600)
    assert el["elastic_airflow_worker_autoscaling"] == "elastic"
    bounds = (el["elastic_worker_min_replicas"], el["elastic_worker_max_replicas"])
    assert bounds == (bench.MIN_WORKERS, bench.MAX_WORKERS)
    assert el["airflow_worker_termination_grace_period_seconds"] == 600
    kd = bench.mode_vars("keda", 60)
    assert kd["elastic_airflow_worker_autoscaling"] == "none"
    assert kd["airflow_worker_replicas"] == bench.MIN_WORKERS
    assert kd["elastic_airflow_network_extra_flows"][0]["to"] == ["database"]
    assert kd["airflow_worker_termination_grace_period_seconds"] == 60
    assert bench.mode_vars("fixed-max", 600)["airflow_worker_replicas"] == bench.MAX_WORKERS
    assert bench.mode_vars("fixed-min", 600)["airflow_worker_replicas"] == bench.MIN_WORKERS
    for mode in bench.MODES:
        v = bench.mode_vars(mode, 600)
        assert v["elastic_airflow_namespace"] == "bench-autoscale-" + mode
        assert v["airflow_worker_concurrency"] == bench.CONCURRENCY
        assert ("elastic_worker" in v["elastic_airflow_skip_layers"]) == (mode != "elastic")


def test_dry_run_touches_no_cluster(capsys, monkeypatch):
    monkeypatch.setattr(keda, "module_config_dir", lambda *a: pytest.fail("the dry run looked for KEDA's module"))
    assert bench.main(["--dry-run", "--repetitions", "2"]) == 0
    out = capsys.readouterr().out
    assert "repetition 2: keda, fixed-max, fixed-min, elastic" in out
    assert "kind: ScaledObject" in out and "workload bursts: 17 runs" in out


# ------------------------------------------------------------------ KEDA


def test_scaled_object_has_the_charts_defaults():
    auth, so = keda.scaled_object("ns", "e2e", 2, 1, 3)
    spec = so["spec"]
    assert so["kind"] == "ScaledObject" and so["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "e2e-worker"}
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (5, 30)
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 3)
    assert "advanced" not in spec  # the HPA keeps Kubernetes' default behaviour, as the chart's default
    trigger = spec["triggers"][0]
    assert trigger["type"] == "postgresql"
    assert trigger["metadata"]["targetQueryValue"] == "1"
    assert trigger["metadata"]["query"] == (
        "SELECT ceil(COUNT(*)::decimal / 2) FROM task_instance WHERE (state='running' OR state='queued')")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "e2e-generated-secrets", "key": "database-password"}]
    assert "password" not in trigger["metadata"]
    assert list(yaml.safe_load_all(keda.to_yaml([auth, so]))) == [auth, so]


def test_keda_install_objects_use_our_images(tmp_path):
    for name in keda.CONFIG_FILES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = "Deployment" if name in ("manager/manager.yaml", "metrics-server/deployment.yaml") else "Service"
        obj_name = {"manager/manager.yaml": "keda-operator",
                    "metrics-server/deployment.yaml": "keda-metrics-apiserver"}.get(name, name.replace("/", "-"))
        doc = {"apiVersion": "apps/v1" if kind == "Deployment" else "v1", "kind": kind,
               "metadata": {"name": obj_name}}
        if kind == "Deployment":
            doc["spec"] = {"template": {"spec": {"containers": [
                {"name": obj_name, "image": "ghcr.io/x:latest", "imagePullPolicy": "Always", "args": ["--a"]}]}}}
        path.write_text(yaml.safe_dump(doc) + "---\n")
    objects = keda.install_objects(tmp_path, "v2.18.1")
    assert len(objects) == len(keda.CONFIG_FILES)
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    op = deployments["keda-operator"]["spec"]["template"]["spec"]["containers"][0]
    assert op["image"] == "localhost/elastic-airflow/keda-operator:2.18.1"
    assert op["imagePullPolicy"] == "Never" and op["args"] == ["--a", "--enable-webhook-patching=false"]
    ms = deployments["keda-metrics-apiserver"]["spec"]["template"]["spec"]["containers"][0]
    assert ms["image"] == "localhost/elastic-airflow/keda-metrics-apiserver:2.18.1" and ms["args"] == ["--a"]
    assert all(o["metadata"]["namespace"] == "keda" for o in objects)
    assert keda.resource({"apiVersion": "v1", "kind": "Service"}) == "service"
    assert keda.resource({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService"}) == \
        "apiservice.apiregistration.k8s.io"


def test_keda_version_is_the_images():
    assert keda.keda_version() == "v2.18.1"


# ------------------------------------------------------------------ metrics on synthetic timelines


def sample(t, queued=0, **pods):
    return {"t": t, "pods": {name.replace("_", "-"): state for name, state in pods.items()}, "queued": queued,
            "running": 0}


def ti(key, burst, queued, start, end, state="success", try_number=1, host="w-0"):
    return {"key": key, "burst": burst, "queued": queued, "start": start, "end": end, "state": state,
            "try_number": try_number, "hostname": host}


def test_percentile_is_nearest_rank():
    assert metrics.percentile([], 50) is None
    assert metrics.percentile([3, 1, 2], 50) == 2
    assert metrics.percentile(list(range(1, 21)), 95) == 19
    assert metrics.percentile(list(range(1, 21)), 100) == 20
    assert metrics.percentile([5, None, 1], 50) == 1


def test_task_counts():
    tis = [ti("a", 0, 0, 1, 2), ti("b", 0, 0, 1, 2, try_number=2), ti("c", 0, 0, 1, 2, state="failed"),
           ti("d", 0, 0, None, None, state="queued")]
    assert metrics.task_counts(tis) == {"submitted": 4, "succeeded": 2, "failed": 1, "killed_or_retried": 2,
                                        "lost": 2}


def test_pod_seconds_count_running_and_terminating_and_hold_the_last_sample():
    samples = [sample(100, w_0="Running"),
               sample(110, w_0="Running", w_1="Pending"),
               sample(120, w_0="Running", w_1="Running"),
               sample(130, w_0="Running", w_1="Terminating"),
               sample(140, w_0="Running")]
    # 10 s x 1 + 10 x 1 + 10 x 2 + 10 x 2 + 20 x 1 (held to the window's end)
    assert metrics.pod_seconds(samples, 100, 160) == 80
    assert metrics.pod_seconds(samples, 105, 125) == 5 + 10 + 10
    assert metrics.peak_workers(samples) == 2


def test_queue_wait_and_makespan():
    tis = [ti("a", 0, 10, 12, 40), ti("b", 0, 10, 20, 50)]
    assert metrics.queue_waits(tis) == [2, 10]
    assert metrics.makespan(5, tis) == 45
    assert metrics.makespan(5, tis + [ti("c", 0, 10, None, None, state="running")]) is None


def test_scale_out_latency_is_first_queued_to_a_new_worker_taking_a_task():
    pods = {"w-0": {"created": 0}, "w-1": {"created": 103}, "w-2": {"created": 203}}
    tis = [ti("a", 0, 100, 101, 130, host="w-0"), ti("b", 0, 100.5, 108, 130, host="w-1.e2e-worker.ns"),
           ti("c", 1, 200, 201, 230, host="w-0"), ti("d", 1, 200, 201, 230, host="w-1")]
    out = metrics.scale_out_latencies(tis, pods)
    assert out == {0: 8, 1: None}  # burst 1 was served by the workers it found


def test_scale_out_latency_counts_a_worker_for_the_episode_it_was_created_in():
    # grace: the burst's new worker takes its first task after the trickle began
    pods = {"w-0": {"created": 0}, "w-1": {"created": 102}, "w-2": {"created": 125}}
    tis = [ti("a", 0, 100, 101, 130, host="w-0"), ti("b", 0, 101, 102, 140, host="w-0"),
           ti("c", 0, 101, 127, 150, host="w-1"), ti("t", 1, 120, 126, 300, host="w-1"),
           ti("u", 1, 160, 161, 300, host="w-2")]
    assert metrics.scale_out_latencies(tis, pods) == {0: 26, 1: 41}


def test_scale_in_latency_from_the_last_task_end_to_the_fleet_at_its_floor():
    tis = [ti("a", 0, 0, 1, 100)]
    samples = [sample(90, w_0="Running", w_1="Running"), sample(120, w_0="Running", w_1="Terminating"),
               sample(150, w_0="Running")]
    assert metrics.scale_in_latency(samples, tis, 1) == (50, False)
    assert metrics.scale_in_latency(samples[:2], tis, 1) == (20, True)  # censored: still above the floor
    assert metrics.scale_in_latency(samples, tis, None) == (None, False)  # a fixed fleet
    assert metrics.scale_in_latency([sample(101, w_0="Running")], tis, 1) == (1, False)


def _run(floor=1):
    return {"t0": 100, "window_end": 300, "floor": floor,
            "pods": {"w-0": {"created": 0}, "w-1": {"created": 110}},
            "tis": [ti("a", 0, 101, 102, 150, host="w-0"), ti("b", 0, 101, 112, 160, host="w-1")],
            "samples": [sample(100, w_0="Running"), sample(110, w_0="Running", w_1="Running"),
                        sample(170, w_0="Running", w_1="Terminating"), sample(180, w_0="Running")]}


def test_summarize():
    s = metrics.summarize(_run())
    assert s["submitted"] == 2 and s["lost"] == 0
    assert (s["wait_p50"], s["wait_p95"]) == (1, 11)
    assert s["makespan"] == 60
    assert s["pod_seconds"] == 10 + 60 * 2 + 10 * 2 + 120
    assert s["peak_workers"] == 2
    assert s["scale_out"] == 11
    assert (s["scale_in"], s["scale_in_censored"]) == (20, False)


def test_ratios_and_targets():
    el = {"wait_p95": 5.0, "pod_seconds": 700.0, "scale_out": 20.0, "scale_in": 40.0, "makespan": 300.0,
          "lost": 0, "killed_or_retried": 0}
    kd = {"wait_p95": 10.0, "pod_seconds": 1000.0, "scale_out": 25.0, "scale_in": None, "makespan": 310.0,
          "lost": 1, "killed_or_retried": 1}
    r = metrics.ratios({"elastic": el, "keda": kd})
    assert r["elastic"]["wait_p95"] == 0.5 and r["elastic"]["scale_in"] is None and r["keda"]["pod_seconds"] == 1
    checks, unmeasured, skipped = metrics.target_checks({"elastic": el, "keda": kd}, "bursts")
    assert checks == [("bursts elastic lost", 0, 0), ("bursts elastic killed-or-retried", 0, 0),
                      ("bursts elastic queue wait p95 <= KEDA's", 5.0, 10.0),
                      ("bursts elastic pod-seconds <= 0.8 x KEDA's", 700.0, 800.0),
                      ("bursts elastic scale-out latency <= KEDA's", 20.0, 25.0)]
    assert unmeasured == [] and skipped == []
    unmeasured = metrics.target_checks({"elastic": dict(el, scale_out=None), "keda": kd}, "grace")[1]
    assert len(unmeasured) == 1 and "scale-out" in unmeasured[0]
    checks, unmeasured, skipped = metrics.target_checks({"elastic": el}, "grace")
    assert len(checks) == 2 and not unmeasured and skipped


# ------------------------------------------------------------------ the report


def test_table_and_docs_section():
    s = metrics.summarize(_run())
    agg = report.aggregate([s, dict(s, pod_seconds=s["pod_seconds"] + 10), dict(s, pod_seconds=s["pod_seconds"] - 10)])
    assert agg["pod_seconds"] == s["pod_seconds"]
    assert report.aggregate([s, dict(s, scale_out=None)])["scale_out"] is None
    text = report.table("bursts", {"elastic": agg, "fixed-max": dict(agg, scale_in=None)})
    lines = text.splitlines()
    assert lines[0] == "**bursts**" and lines[2].startswith("| mode | submitted |")
    assert lines[4].startswith("| elastic | 2 | 2 | 0 | 0 | 0 | 1.0 | 11.0 | 60 | 270 | 2 | 11.0 | 20 |")
    assert lines[5].endswith("| n/a |")
    sec = report.section(["Measured today."], [text], ["t: ok"], "performance-autoscale.png")
    doc = "# Performance\n\nintro\n"
    once = report.replace_section(doc, sec)
    assert once.startswith(doc) and once.count(report.BEGIN) == 1
    twice = report.replace_section(once, sec.replace("today", "again"))
    assert "Measured again." in twice and "Measured today." not in twice and twice.count(report.END) == 1


def test_timeline_for_the_plot():
    tl = report.timeline(_run()["samples"], 100)
    assert tl[2] == (70, 2, 1, 0)


def test_plot_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run()
    report.plot(tmp_path / "p.png", {("elastic", "bursts"): run}, ["elastic", "keda"], ["bursts"], "t")
    assert (tmp_path / "p.png").stat().st_size > 1000
