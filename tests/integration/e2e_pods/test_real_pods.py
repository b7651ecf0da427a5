"""Airflow end to end in real pods: the controller scales Celery workers out
on load and in only through drained, idle workers, and no task is lost or
run twice; a user deleting a busy worker loses no task either.

Real-node suite (see conftest.py): Airflow, the controller and the workers
run in containers of the local images.
"""

from __future__ import annotations

import os
import threading
import time

from conftest import RESULTS, kubectl, results, wait_for, worker_pods

DAG = "e2e_sleep_append"


def _wait_runs(airflow, run_ids, timeout):
    def done():
        states = [airflow.run(DAG, r)["state"] for r in run_ids]
        return states if all(s in ("success", "failed") for s in states) else None
    return wait_for(done, timeout, f"{len(run_ids)} runs of {DAG} to finish", interval=3)


def test_bursts_scale_out_and_in_through_drained_idle_workers(deployed, airflow, capsys):
    """Seed 004's scenario: 12 runs of a 30 s task in three bursts of 4, 40 s apart."""
    core = deployed
    path = f"{RESULTS}/bursts-{os.urandom(3).hex()}.txt"
    first = wait_for(lambda: worker_pods(core), 180, "the first worker")
    seen, stop = {p.metadata.name for p in first}, threading.Event()
    peak = [len(first)]

    def watch_workers():
        while not stop.is_set():
            pods = worker_pods(core)
            seen.update(p.metadata.name for p in pods)
            peak[0] = max(peak[0], len(pods))
            time.sleep(1)
    watcher = threading.Thread(target=watch_workers, daemon=True)
    watcher.start()
    airflow.unpause(DAG)
    t0 = time.time()
    run_ids = []
    for burst in range(3):
        while time.time() < t0 + 40 * burst:
            time.sleep(0.5)
        for i in range(4):
            run_ids.append(airflow.trigger(DAG, {"path": path, "seconds": 30},
                                           f"burst{burst}-{i}-{os.urandom(3).hex()}")["dag_run_id"])
    states = _wait_runs(airflow, run_ids, 900)
    finished = time.time()
    lines = results(core, path)
    # Scale-in: back to one worker once the load is gone (back-off 20 s).
    wait_for(lambda: len(worker_pods(core)) == 1, 300, "scale-in back to one worker", interval=2)
    stop.set()
    watcher.join(5)
    scaled_in = time.time() - finished

    assert states == ["success"] * 12, states
    assert sorted(line[0] for line in lines) == sorted(run_ids), "each run wrote exactly one line"
    assert all(line[2] == "1" for line in lines), "every task succeeded on its first try"
    tries = [t["try_number"] for r in run_ids for t in airflow.tries(DAG, r)]
    assert tries == [1] * 12, tries
    assert peak[0] >= 2, "workers were added on load"
    removed = seen - {p.metadata.name for p in worker_pods(core)}
    assert removed, "idle workers were removed"
    # Each removed pod went through a drain: the controller's DeletedPod event says so.
    events = kubectl("get", "events", "--field-selector", "reason=DeletedPod",
                     "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}")
    for pod in removed:
        said = [e for e in events.splitlines() if f"deleted {pod}:" in e]
        assert said and all("drain" in e.lower() for e in said), (pod, events)
    with capsys.disabled():
        print(f"\n12 runs in 3 bursts: peak {peak[0]} workers, {len(removed)} removed after drains; "
              f"back to one worker {scaled_in:.0f} s after the last run finished")


def test_deleted_busy_worker_finishes_its_task_or_retries_it(deployed, airflow, capsys):
    """`kubectl delete pod` of a busy worker: warm shutdown within the grace period, no task lost."""
    core = deployed
    path = f"{RESULTS}/delete-{os.urandom(3).hex()}.txt"
    airflow.unpause(DAG)
    run_id = airflow.trigger(DAG, {"path": path, "seconds": 20}, f"delete-{os.urandom(3).hex()}")["dag_run_id"]

    def busy_pod():
        tis = airflow.tries(DAG, run_id)
        return tis and tis[0]["state"] == "running" and tis[0].get("hostname")
    host = wait_for(busy_pod, 300, "the task running on a worker", interval=1)
    pod = host.split(".")[0]
    t0 = time.time()
    kubectl("delete", "pod", pod, "--wait=false")
    state = _wait_runs(airflow, [run_id], 600)[0]
    gone = wait_for(lambda: pod not in {p.metadata.name for p in worker_pods(core)}, 120, f"{pod} gone")
    lines = results(core, path)
    assert state == "success", state
    assert len(lines) == 1 and lines[0][0] == run_id, lines
    with capsys.disabled():
        print(f"\ndeleted busy worker {pod}: the task ended as {state} (try {lines[0][2]}) "
              f"{time.time() - t0:.0f} s later, pod gone: {bool(gone)}")
