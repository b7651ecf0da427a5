"""Worker pools (airflow_worker_pools) in real pods: a task with queue= runs
on a worker of the pool that lists the queue, a task without one on the main
workers, and a burst on one pool's queue scales that pool out (its own
ElasticWorker and autoscaler) while the other pool and the main workers stay
at their floor; afterwards the pool scales in again through drained workers.

Real-node suite (see conftest.py), namespace e2e-pods-pools, PostgreSQL +
Redis, mode elastic, pools `fast` and `slow` (vars/worker-pools.yml). Not
part of `make test`: `make test-worker-pools` runs it, alone on the node.
"""

from __future__ import annotations

import os
import threading
import time

from conftest import DAGS, HERE, RESULTS, kubectl, results, variant_fixtures, wait_for, wait_runs, worker_pods

NAMESPACE = "e2e-pods-pools"
VARS = HERE / "vars" / "worker-pools.yml"
POOL_DAGS = HERE / "dags" / "e2e_pool_dags.py"
API_PORT = int(os.environ.get("ELASTIC_AIRFLOW_E2E_POOLS_API_PORT", "18182"))
POOL_LABEL = "elastic-airflow.io/worker-pool"
SETS = {"main": "e2e-worker", "fast": "e2e-worker-fast", "slow": "e2e-worker-slow"}


deployed_pools, airflow_pools = variant_fixtures("pools", NAMESPACE, VARS, API_PORT, dag_files=(DAGS, POOL_DAGS),
                                                 dag_ids=("e2e_pool_queues", "e2e_pool_burst"))


def pools_of(core):
    """{pool ('main' for the main workers): [pod name, ...]} of the live worker pods."""
    found = {name: [] for name in SETS}
    for pod in worker_pods(core, NAMESPACE):
        found[(pod.metadata.labels or {}).get(POOL_LABEL, "main")].append(pod.metadata.name)
    return found


def _pod(host):
    return (host or "").split(".")[0]


def test_every_pool_runs_its_elastic_worker(deployed_pools):
    names = kubectl("get", "elasticworkers", "-o", "jsonpath={.items[*].metadata.name}", namespace=NAMESPACE).split()
    assert sorted(names) == sorted(SETS.values()), names
    scalers = kubectl("get", "elasticworkerautoscalers", "-o", "jsonpath={.items[*].metadata.name}",
                      namespace=NAMESPACE).split()
    assert sorted(scalers) == sorted(SETS.values()), scalers

    # each set starts at its floor of one worker, named after its ElasticWorker
    def at_floor():
        pools = pools_of(deployed_pools)
        return pools if all(len(pods) == 1 for pods in pools.values()) else None
    pods = wait_for(at_floor, 300, "one worker of each set")
    for pool, workload in SETS.items():
        assert pods[pool][0].startswith(workload + "-"), pods


def test_a_task_runs_on_the_pool_of_its_queue(deployed_pools, airflow_pools, capsys):
    core, af = deployed_pools, airflow_pools
    path = f"{RESULTS}/pools-{os.urandom(3).hex()}.txt"
    af.unpause("e2e_pool_queues")
    run_id = af.trigger("e2e_pool_queues", {"path": path}, f"queues-{os.urandom(3).hex()}")["dag_run_id"]
    assert wait_runs(af, "e2e_pool_queues", [run_id], 600) == ["success"]
    hosts = {t["task_id"]: _pod(t.get("hostname")) for t in af.tries("e2e_pool_queues", run_id)}
    pools = pools_of(core)
    assert hosts["on_fast"] in pools["fast"], (hosts, pools)
    assert hosts["on_slow"] in pools["slow"], (hosts, pools)
    assert hosts["on_default"] in pools["main"], (hosts, pools)
    # what each task wrote itself: its own hostname, the same pod
    written = {line[1]: line[2] for line in results(core, path, NAMESPACE)}
    assert written == {"default": hosts["on_default"], "fast": hosts["on_fast"], "slow": hosts["on_slow"]}, written
    with capsys.disabled():
        print(f"\nqueue default -> {hosts['on_default']}, fast -> {hosts['on_fast']}, slow -> {hosts['on_slow']}")


def test_a_burst_on_one_pool_scales_only_that_pool(deployed_pools, airflow_pools, capsys):
    """Four 30 s tasks on queue fast (one slot per worker): the pool fast grows to its
    maximum of 3, the pool slow and the main workers stay at one worker each."""
    core, af = deployed_pools, airflow_pools
    wait_for(lambda: all(len(v) == 1 for v in pools_of(core).values()), 300, "every set at its floor", interval=2)
    path = f"{RESULTS}/burst-{os.urandom(3).hex()}.txt"
    peaks = {name: 1 for name in SETS}
    seen_fast = set(pools_of(core)["fast"])
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            pools = pools_of(core)
            for name, pods in pools.items():
                peaks[name] = max(peaks[name], len(pods))
            seen_fast.update(pools["fast"])
            time.sleep(1)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    af.unpause("e2e_pool_burst")
    run_ids = [af.trigger("e2e_pool_burst", {"path": path, "seconds": 30}, f"burst-{i}-{os.urandom(3).hex()}")
               ["dag_run_id"] for i in range(4)]
    try:
        states = wait_runs(af, "e2e_pool_burst", run_ids, 900)
        lines = results(core, path, NAMESPACE)
        # scale-in: the pool fast back to its floor through drained workers (back-off 20 s)
        wait_for(lambda: len(pools_of(core)["fast"]) == 1, 300, "the pool fast back to one worker", interval=2)
    finally:
        stop.set()
        watcher.join(5)
    assert states == ["success"] * 4, states
    assert sorted(line[0] for line in lines) == sorted(run_ids), "each run wrote exactly one line"
    assert {line[1] for line in lines} <= seen_fast, "every burst task ran on a worker of the pool fast"
    assert all(line[2] == "1" for line in lines), "every task succeeded on its first try"
    assert peaks["fast"] >= 2, peaks
    assert peaks["fast"] <= 3, peaks  # its max_replicas
    assert peaks["slow"] == 1 and peaks["main"] == 1, peaks
    with capsys.disabled():
        print(f"\n4 tasks on queue fast: peak workers {peaks} (fast scaled out, the others stayed at their floor)")
