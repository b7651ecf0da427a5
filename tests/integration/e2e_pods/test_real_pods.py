"""Airflow end to end in real pods: the controller scales Celery workers out
on load and in only through drained, idle workers, and no task is lost or
run twice; a user deleting a busy worker loses no task either; a task
process killed with SIGKILL fails its try and the retry succeeds; a rolling
change of the worker template drains each old worker before it goes; the
pool, variables and connection declared in vars/postgresql-redis.yml are in
Airflow, with the values of their Secret, which nothing printed.

Real-node suite (see conftest.py): Airflow, the controller and the workers
run in containers of the local images.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from conftest import (
    NAMESPACE,
    OBJECTS_PASSWORD,
    OBJECTS_VARIABLE,
    REPO,
    RESULTS,
    SITE_OUTPUTS,
    VARS,
    kubectl,
    results,
    wait_for,
    wait_runs,
    worker_pods,
)

DAG = "e2e_sleep_append"


def assert_deleted_through_drains(pods):
    """Each of these pods was deleted after its drain: the controller's DeletedPod events say so."""
    events = kubectl("get", "events", "--field-selector", "reason=DeletedPod",
                     "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}")
    for pod in pods:
        said = [e for e in events.splitlines() if f"deleted {pod}:" in e]
        assert said and all("drain" in e.lower() for e in said), (pod, events)


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
    states = wait_runs(airflow, DAG, run_ids, 900)
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
    assert_deleted_through_drains(removed)
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
    state = wait_runs(airflow, DAG, [run_id], 600)[0]
    gone = wait_for(lambda: pod not in {p.metadata.name for p in worker_pods(core)}, 120, f"{pod} gone")
    lines = results(core, path)
    assert state == "success", state
    assert len(lines) == 1 and lines[0][0] == run_id, lines
    with capsys.disabled():
        print(f"\ndeleted busy worker {pod}: the task ended as {state} (try {lines[0][2]}) "
              f"{time.time() - t0:.0f} s later, pod gone: {bool(gone)}")


def test_sigkilled_task_process_fails_its_try_and_the_retry_succeeds(deployed, airflow, capsys):
    """SIGKILL of the task's own process inside its worker container: try 1 fails, try 2 succeeds."""
    core = deployed
    path = f"{RESULTS}/kill-{os.urandom(3).hex()}.txt"
    airflow.unpause("e2e_kill")
    run_id = airflow.trigger("e2e_kill", {"path": path}, f"kill-{os.urandom(3).hex()}")["dag_run_id"]
    # the victim writes "start <try> <pod> <pid>" and then sleeps on its first try
    started = wait_for(lambda: [line for line in results(core, path) if line[:2] == ["start", "1"]], 300,
                       "the victim's first try running", interval=2)[0]
    pod, pid = started[2], started[3]
    kubectl("exec", pod, "-c", "worker", "--", "kill", "-KILL", pid)
    t0 = time.time()
    state = wait_for(lambda: airflow.run("e2e_kill", run_id)["state"] in ("success", "failed")
                     and airflow.run("e2e_kill", run_id)["state"], 300, "the e2e_kill run to end", interval=2)
    lines = [" ".join(line[:2]) for line in results(core, path)]
    tries = airflow.tries("e2e_kill", run_id)
    assert state == "success", (state, lines)
    assert lines == ["start 1", "start 2", "done 2"], lines  # try 1 never finished, try 2 did
    assert tries[0]["try_number"] == 2, tries
    with capsys.disabled():
        print(f"\nSIGKILL of task pid {pid} in {pod}: try 1 failed, try 2 succeeded {time.time() - t0:.0f} s later")


def test_rolling_change_of_the_worker_template_drains_every_old_worker(deployed, airflow, capsys):
    """A change of the worker pod template (site.yml with another grace period) while tasks run:
    each old worker is drained before it goes, no task is killed."""
    core = deployed
    old = {p.metadata.name for p in worker_pods(core)}
    path = f"{RESULTS}/rollout-{os.urandom(3).hex()}.txt"
    airflow.unpause(DAG)
    run_ids = [airflow.trigger(DAG, {"path": path, "seconds": 40}, f"rollout-{i}-{os.urandom(3).hex()}")["dag_run_id"]
               for i in range(4)]
    wait_for(lambda: sum(t["state"] == "running" for r in run_ids for t in airflow.tries(DAG, r)) >= 2, 300,
             "tasks running on the old workers", interval=2)
    grace = {"airflow_worker_termination_grace_period_seconds": 91}
    proc = subprocess.run(["ansible-playbook", "-i", str(REPO / "inventories" / "local"),
                           str(REPO / "playbooks" / "site.yml"), "-e", "@" + str(VARS), "-e", json.dumps(grace)],
                          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    states = wait_runs(airflow, DAG, run_ids, 900)

    def rolled():
        pods = worker_pods(core)
        return (pods and not old & {p.metadata.name for p in pods}
                and all(p.spec.termination_grace_period_seconds == 91 for p in pods))
    wait_for(rolled, 600, "every old worker replaced by one of the new template", interval=3)
    lines = results(core, path)
    tries = [t["try_number"] for r in run_ids for t in airflow.tries(DAG, r)]
    assert states == ["success"] * 4, states
    assert sorted(line[0] for line in lines) == sorted(run_ids) and tries == [1] * 4, (lines, tries)
    assert_deleted_through_drains(old)
    with capsys.disabled():
        print(f"\nrolling change under 4 running tasks: {len(old)} old worker(s) drained and replaced, "
              "every task succeeded on its first try")


def test_declared_pool_variables_and_connection_are_in_airflow(deployed, airflow, capsys):
    """airflow_pools, airflow_variables and airflow_connections of vars/postgresql-redis.yml, imported by the
    objects Job: read back through the REST API. The Secret's values (a variable, and the connection as a
    URI with a password) are in Airflow but in neither run of site.yml's output nor the Job's log; the
    re-run's changed=0 (conftest.deploy) covers the Job too."""
    pool = airflow.get("/api/v2/pools/e2e_pool")
    assert (pool["name"], pool["slots"], pool["description"], pool["include_deferred"]) == (
        "e2e_pool", 3, "declared in the e2e vars", True), pool
    plain = airflow.get("/api/v2/variables/e2e_plain")
    assert (plain["value"], plain["description"]) == ("plain value", "declared in the e2e vars"), plain
    assert airflow.get("/api/v2/variables/e2e_from_kube")["value"] == OBJECTS_VARIABLE
    conn = airflow.get("/api/v2/connections/e2e_conn")
    assert {k: conn[k] for k in ("conn_type", "host", "port", "login", "schema", "description")} == {
        "conn_type": "postgres", "host": "warehouse.e2e.example", "port": 5432, "login": "e2e_user",
        "schema": "e2e_db", "description": "from the Secret e2e-objects"}, conn
    assert json.loads(conn["extra"]) == {"sslmode": "disable"}
    assert conn["password"] and conn["password"] != OBJECTS_PASSWORD  # set, and redacted by the API
    # One objects Job (superseded ones are pruned), Complete; its log holds no value either.
    jobs = json.loads(kubectl("get", "jobs", "-l", "app.kubernetes.io/component=objects", "-o", "json"))["items"]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in jobs[0]["status"].get("conditions", []))
    log = kubectl("logs", f"job/{jobs[0]['metadata']['name']}", "-c", "objects")
    assert "objects: imported 1 pools, 2 variables, 1 connections" in log, log[-2000:]
    for value in (OBJECTS_PASSWORD, OBJECTS_VARIABLE):
        assert value not in SITE_OUTPUTS[NAMESPACE], "a Secret value was printed by site.yml"
        assert value not in log, "a Secret value was printed by the objects Job"
    with capsys.disabled():
        print(f"\ndeclared objects: pool, 2 variables, connection read back; Job {jobs[0]['metadata']['name']}")
