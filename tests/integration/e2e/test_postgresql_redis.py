"""Real Airflow 3 on PostgreSQL + Redis, configured by what site.yml applied.

Order matters: the module boots once (site.yml, db migrate, api-server,
scheduler, dag-processor, triggerer, one Celery worker per worker pod).
"""
import os
import time

import harness
from conftest import booted, run_hello, timed

API_PORT = 18080
LOG_PORT_BASE = 18793

af = booted("postgresql-redis.yml", "postgresql", "redis", API_PORT, LOG_PORT_BASE)


def test_health_and_a_dag_run_on_a_celery_worker(af, tmp_path, capsys):
    h, pod = run_hello(af, tmp_path, "e2e_hello run (trigger -> success)")
    with capsys.disabled():
        print("\nhealth: %s\ne2e_hello ran on celery@%s" % (
            {k: v.get("status") for k, v in h.items()}, pod))


def _lines(path):
    try:
        with open(path) as fh:
            return [line.split() for line in fh.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def test_worker_killed_mid_task_is_retried(af, tmp_path, capsys):
    """SIGKILL of a worker pod's processes: the task is failed by heartbeat timeout, and retried."""
    out = str(tmp_path / "kill.txt")
    harness.wait_for(lambda: af.dag_known("e2e_kill"), 120, "DAG e2e_kill parsed", stack=af.stack)
    af.api.unpause("e2e_kill")
    run_id = af.api.trigger("e2e_kill", {"path": out})["dag_run_id"]
    started = harness.wait_for(lambda: [line for line in _lines(out) if line[:2] == ["start", "1"]], 120,
                               "try 1 started", stack=af.stack)[0]
    pod = started[2]
    time.sleep(2)
    killed_at = time.time()
    af.fleet.kill(pod)  # the container dies; it is started again 5 s later, like a kubelet restart
    harness.wait_for(lambda: af.api.run("e2e_kill", run_id)["state"] in ("success", "failed"), 180,
                     "e2e_kill run ends", stack=af.stack)
    run = af.api.run("e2e_kill", run_id)
    tries = af.api.tries("e2e_kill", run_id, "victim")
    states = {t["try_number"]: t["state"] for t in tries}
    lines = _lines(out)
    assert run["state"] == "success", (run, states, lines)
    assert states.get(1) == "failed" and states.get(2) == "success", states
    assert [line[:2] for line in lines] == [["start", "1"], ["start", "2"], ["done", "2"]], lines
    retry_started = [t for t in tries if t["try_number"] == 2][0]["start_date"]
    with capsys.disabled():
        print("\nkilled celery@%s (SIGKILL of its process group) 2 s into try 1; try 1 -> %s, try 2 -> %s on "
              "celery@%s (started %s); run success %.0f s after the kill"
              % (pod, states[1], states[2], lines[1][2], retry_started, time.time() - killed_at))


def test_safe_scale_in_with_the_elastic_controller(af, api, tmp_path, capsys):
    """12 runs of a 30 s task in three bursts of 4, 40 s apart, while the controller scales out and in."""
    import elastic_setup
    out = str(tmp_path / "lines.txt")
    t0 = time.time()
    el = elastic_setup.Elastic(af, api, str(tmp_path))
    try:
        el.start()
        first = el.wait_first_worker()
        harness.wait_for(lambda: af.dag_known("e2e_sleep_append"), 120, "DAG parsed", stack=af.stack)
        af.api.unpause("e2e_sleep_append")
        run_ids = []
        burst_start = time.time()
        for burst in range(3):
            while time.time() < burst_start + 40 * burst:
                time.sleep(0.5)
            for i in range(4):
                run_ids.append(af.api.trigger("e2e_sleep_append", {"path": out, "seconds": 30},
                                              run_id="burst%d-%d-%s" % (burst, i, os.urandom(3).hex()))["dag_run_id"])
        harness.wait_for(lambda: all(af.api.run("e2e_sleep_append", r)["state"] in ("success", "failed")
                                     for r in run_ids), 420, "12 runs end", interval=3, stack=af.stack)
        harness.wait_for(lambda: len(el.live_pods()) == 1, 180, "scale-in to 1 worker", interval=2, stack=af.stack)
    finally:
        el.stop()
    lines = _lines(out)
    tis = [t for t in af.api.task_instances("e2e_sleep_append") if t["dag_run_id"] in run_ids]
    added = [p for p in af.fleet.started if p.startswith(el.name) and p != first]
    removed = [p for p in af.fleet.deleted if p.startswith(el.name)]
    with capsys.disabled():
        print("\nscale-in test: %d runs, %d lines; elastic workers: first %s, added %d (%s), removed %d (%s); "
              "%.0f s" % (len(run_ids), len(lines), first, len(added), " ".join(added), len(removed),
                          " ".join(removed), time.time() - t0))
        print(el.scale_events())
    assert len(lines) == 12, lines
    assert sorted(line[0] for line in lines) == sorted(run_ids)
    assert len(tis) == 12 and all(t["state"] == "success" and t["try_number"] == 1 for t in tis), \
        [(t["dag_run_id"], t["state"], t["try_number"]) for t in tis]
    # no worker was deleted while it ran a task
    for pod, gone in af.fleet.deleted.items():
        late = [line for line in lines if line[1] == pod and float(line[4]) > gone]
        assert not late, "%s deleted while running %s" % (pod, late)
    assert added, "the controller never scaled out"
    assert removed, "the controller never scaled in"
    timed("safe scale-in: 12 runs in 3 bursts", t0)
