"""Fault injection on the real node (`make test-chaos`): Airflow, the controller
(2 replicas, leader-elected) and the Celery workers in their pods, a seeded
workload of 30 Airflow task runs per fault, and one fault injected while tasks
run, as the controller scales in, or while it drains a busy worker (FAULTS).

After each fault the case asserts: no task lost (every run `success`), none
run twice (exactly one line per run in the results file), no busy worker
deleted (a deleted worker's tasks would be lost or retried: retries are 0),
and convergence (back to one worker, no drain record left, every worker
consuming its queue). It prints one row per fault, and the table at the end.

Real-node suite: faults act on real processes (pods, containers, the API
server, etcd, the kubelet, containerd) of the shared cluster.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import time

import pytest

from conftest import NAMESPACE, PREFIX, REPO, RESULTS, VARS, kubectl, results, wait_for, wait_runs, worker_pods
from local_cluster import SHARED_KUBECONFIG

DAG = "e2e_sleep_append"
TASKS = 30
SEED = 20261207  # fixed before the first measurement; a change goes into the CHANGELOG
DRAIN_ANNOTATION = "elastic-airflow.io/drain"
CLUSTER_SH = REPO / "tests" / "cluster" / "cluster.sh"
STATE = pathlib.Path(SHARED_KUBECONFIG).parent
ROWS = []


# ------------------------------------------------------------------ the faults


def leader(core):
    lease = kubectl("get", "lease", f"{PREFIX}-elastic-worker-controller", "-o", "jsonpath={.spec.holderIdentity}")
    return lease.strip()


def container_pid(core, pod_name):
    """The host pid of a pod's first container (its task in the node's containerd)."""
    pod = core.read_namespaced_pod(pod_name, NAMESPACE)
    container_id = pod.status.container_statuses[0].container_id.split("://", 1)[1]
    out = subprocess.run(["ctr", "--address", str(STATE / "containerd" / "containerd.sock"), "-n", "k8s.io",
                          "task", "ls"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines()[1:]:
        task, pid, _status = line.split()
        if task == container_id:
            return int(pid)
    raise AssertionError(f"no containerd task for {pod_name}")


def restart(component):
    proc = subprocess.run([str(CLUSTER_SH), "restart", component], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def kill_leader(core):
    """The leader controller pod, force-deleted (no grace: as a node loss would)."""
    name = leader(core)
    kubectl("delete", "pod", name, "--grace-period=0", "--force")
    return f"deleted {name}"


def freeze_leader(core):
    """SIGSTOP the leader's process past its lease (15 s), then SIGCONT: the old leader must not write."""
    name = leader(core)
    pid = container_pid(core, name)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: leader(core) not in ("", name), 60, "another replica to take the lease", interval=1)
        time.sleep(5)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.time()
    time.sleep(15)  # what the old leader does once it runs again
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resumed - 1))
    log = kubectl("logs", name, "--since-time", since)
    writes = [line for line in log.splitlines()
              if any(f" {reason}: " in line for reason in ("CreatedPods", "DeletedPod", "Scaled", "DrainTimedOut"))]
    assert not writes, f"the frozen leader {name} wrote after it was resumed: {writes}"
    return f"froze {name}; {leader(core)} took the lease; no write by {name} after SIGCONT"


def restart_api_server(core):
    restart("kube-apiserver")
    return "kube-apiserver restarted"


def restart_etcd(core):
    restart("etcd")
    return "etcd restarted"


def restart_broker(core):
    kubectl("delete", "pod", f"{PREFIX}-broker-0", "--wait=false")
    return f"deleted {PREFIX}-broker-0"


def cut_controller_from_broker(core):
    """DROP the leader's packets to the broker port inside its network namespace for 30 s, then restore."""
    name = leader(core)
    netns = ["nsenter", "-t", str(container_pid(core, name)), "-n", "iptables"]
    rule = ["OUTPUT", "-p", "tcp", "--dport", "6379", "-j", "DROP"]
    subprocess.run(netns + ["-I"] + rule, check=True)
    try:
        time.sleep(30)
    finally:
        subprocess.run(netns + ["-D"] + rule, check=True)
    return f"{name} cut off from the broker for 30 s"


def restart_kubelet(core):
    restart("kubelet")
    return "kubelet restarted"


def restart_containerd(core):
    restart("containerd")
    return "containerd restarted"


# (fault, when it strikes, the fault). When:
#   "busy"     while tasks run;
#   "scale-in" once the first burst is done, 1 s before the autoscaler's scale-in back-off ends: on the
#              scale-in decision, its drains of idle workers and their deletion (an idle worker's drain
#              takes about 0.2 s, too short to aim a fault at);
#   "drain"    while the controller drains a busy worker: a rolling change of the worker template under
#              load (the same drain state machine and records as a scale-in, lasting as long as the
#              worker's task).
FAULTS = [
    ("leader controller pod killed", "drain", kill_leader),
    ("leader frozen past its lease", "drain", freeze_leader),
    ("API server restarted", "scale-in", restart_api_server),
    ("etcd restarted", "busy", restart_etcd),
    ("controller cut off from the broker", "busy", cut_controller_from_broker),
    ("kubelet restarted", "busy", restart_kubelet),
    ("containerd restarted", "busy", restart_containerd),
    # Under running tasks, Celery 5.5 workers then list the tasks that end while they reconnect as active
    # for good (celery/celery#8541): it converges because the controller asks the result backend too.
    ("broker restarted", "drain", restart_broker),
]


# ------------------------------------------------------------------ the workload and its checks


def draining_pod(core):
    for pod in worker_pods(core):
        if DRAIN_ANNOTATION in (pod.metadata.annotations or {}):
            return pod.metadata.name
    return None


def roll_worker_template(round_id):
    """A change of the ElasticWorker's pod template: the controller replaces every worker, draining each first."""
    patch = {"spec": {"template": {"metadata": {"annotations": {"chaos.elastic-airflow.io/round": round_id}}}}}
    kubectl("patch", "elasticworker", f"{PREFIX}-worker", "--type", "merge", "-p", json.dumps(patch))


def busy_drain_waiter(core):
    """A predicate: the name of a worker whose drain record has said `draining` for at least a second
    (its worker still runs a task), else None."""
    first_seen = {}

    def busy_drain():
        now = time.time()
        draining = {}
        for pod in worker_pods(core):
            raw = (pod.metadata.annotations or {}).get(DRAIN_ANNOTATION)
            if raw and json.loads(raw).get("phase") == "draining":
                draining[pod.metadata.uid] = pod.metadata.name
        for uid in list(first_seen):
            if uid not in draining:
                del first_seen[uid]
        for uid, name in draining.items():
            if now - first_seen.setdefault(uid, now) >= 1.0:
                return name
        return None
    return busy_drain


def scale_in_due_in(seconds):
    """A predicate: true from ``seconds`` before the autoscaler's scale-in back-off ends."""
    def due():
        ewa = json.loads(kubectl("get", "elasticworkerautoscaler", f"{PREFIX}-worker", "-o", "json"))
        since = (ewa.get("status") or {}).get("lowLoadSince")
        backoff = float(ewa["spec"].get("scaleInBackOffSeconds", 30))
        return since is not None and time.time() >= float(since) + backoff - seconds
    return due


def consuming(core):
    """{worker pod: queues it consumes}, asked from a worker with Celery's own inspect."""
    pod = wait_for(lambda: [p for p in worker_pods(core) if p.status.phase == "Running"], 120, "a running worker")[0]
    script = ("import json; from airflow.providers.celery.executors.celery_executor import app; "
              "print(json.dumps(app.control.inspect(timeout=5).active_queues() or {}))")
    out = kubectl("exec", pod.metadata.name, "-c", "worker", "--", "python", "-c", script)
    replies = json.loads(out.strip().splitlines()[-1])
    return dict((host.split("@", 1)[1], sorted(q["name"] for q in queues)) for host, queues in replies.items())


class Workload:
    """TASKS runs of DAG in two bursts; durations drawn from a seeded generator."""

    def __init__(self, airflow, name, index):
        self.airflow = airflow
        self.rng = random.Random(SEED + index)
        self.path = f"{RESULTS}/chaos-{index}-{os.urandom(3).hex()}.txt"
        self.run_ids = []

    def burst(self, count):
        for _i in range(count):
            seconds = round(self.rng.uniform(5, 20), 1)
            run_id = f"chaos-{len(self.run_ids)}-{os.urandom(3).hex()}"
            self.airflow.trigger(DAG, {"path": self.path, "seconds": seconds}, run_id)
            self.run_ids.append(run_id)

    def states(self):
        return [self.airflow.run(DAG, r)["state"] for r in self.run_ids]

    def wait(self, timeout):
        return wait_runs(self.airflow, DAG, self.run_ids, timeout)


@pytest.mark.parametrize(("index", "fault"), list(enumerate(FAULTS)), ids=[f[0] for f in FAULTS])
def test_fault_loses_no_task_runs_none_twice_and_converges(deployed, airflow, capsys, index, fault):
    name, when, inject = fault
    core = deployed
    airflow.unpause(DAG)
    wait_for(lambda: len(worker_pods(core)) == 1 and not draining_pod(core), 600, "a quiet start: one idle worker")
    work = Workload(airflow, name, index)
    work.burst(TASKS // 2)
    if when == "scale-in":
        work.wait(900)  # the first burst done: load gone, the autoscaler's back-off runs
        wait_for(scale_in_due_in(1.0), 300, "the scale-in back-off about to end", interval=0.2)
    else:
        wait_for(lambda: sum(s == "running" for s in work.states()) >= 2, 300, "tasks running", interval=2)
    if when == "drain":
        roll_worker_template(f"{index}-{os.urandom(3).hex()}")
        work.burst(TASKS - TASKS // 2)  # keeps the old workers busy while they are replaced
        drained = wait_for(busy_drain_waiter(core), 600, "a busy worker's drain in progress", interval=0.2)
    t_fault = time.time()
    what = inject(core)
    fault_done = time.time()
    if when == "drain":
        what += f", during {drained}'s drain"
    else:
        work.burst(TASKS - TASKS // 2)
    states = work.wait(1200)
    lines = results(core, work.path)

    per_run = dict((r, [line for line in lines if line[0] == r]) for r in work.run_ids)
    tries = dict((r, max(t["try_number"] for t in airflow.tries(DAG, r))) for r in work.run_ids)
    row = {"fault": name, "submitted": len(work.run_ids), "succeeded": states.count("success"),
           "retried": sum(1 for r in work.run_ids if tries[r] > 1),
           "lost": sum(1 for r, s in zip(work.run_ids, states, strict=True) if s != "success" or not per_run[r]),
           "duplicate": sum(1 for r in work.run_ids if len(per_run[r]) > 1), "converge_s": None}
    ROWS.append(row)

    def converged():
        pods = worker_pods(core)
        if len(pods) != 1 or draining_pod(core) or pods[0].status.phase != "Running":
            return None
        return consuming(core) or None
    queues, not_converged = None, None
    try:
        queues = wait_for(converged, 600, "one worker, no drain left, consuming", interval=5)
        row["converge_s"] = time.time() - fault_done
    except AssertionError as exc:
        not_converged = str(exc)
    with capsys.disabled():
        print(f"\n{name} ({what}, {fault_done - t_fault:.0f} s): {row}")
    # The DAG has retries=0: a task whose worker was deleted or died under it ends `failed`,
    # so lost == 0 also says that no busy worker was deleted.
    assert row["lost"] == 0 and row["duplicate"] == 0, row
    assert queues is not None, not_converged
    assert all(q == ["default"] for q in queues.values()), f"a worker without its consumers: {queues}"


def test_fault_table(capsys):
    """The summary; each fault's own test asserts its row."""
    if not ROWS:
        pytest.skip("no fault ran")
    header = (f"{'fault':40} {'submitted':>9} {'succeeded':>9} {'retried':>7} {'lost':>4} {'duplicate':>9} "
              f"{'converge':>9}")
    with capsys.disabled():
        print("\n" + header)
        for r in ROWS:
            print(f"{r['fault']:40} {r['submitted']:9} {r['succeeded']:9} {r['retried']:7} {r['lost']:4} "
                  f"{r['duplicate']:9} " + (f"{r['converge_s']:8.0f}s" if r["converge_s"] is not None else "    never"))
    assert all(r["lost"] == 0 and r["duplicate"] == 0 for r in ROWS)


def test_api_server_restart_during_a_converge_then_rerun_converges(deployed):
    """site.yml while the API server restarts under it; the re-run converges and a third changes nothing."""
    cmd = ["ansible-playbook", "-i", str(REPO / "inventories" / "local"), str(REPO / "playbooks" / "site.yml"),
           "-e", "@" + str(VARS), "-e", json.dumps({"airflow_config": {"AIRFLOW__CORE__PARALLELISM": "33"}})]
    converge = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(15)
    restart("kube-apiserver")
    converge.communicate(timeout=1500)  # may fail: the API server went away under it
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500, check=False)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0 and " changed=0 " in again.stdout, again.stdout[-3000:]
    # back to the suite's own settings for whatever runs next
    restore = subprocess.run(cmd[:-2], cwd=REPO, capture_output=True, text=True, timeout=1500, check=False)
    assert restore.returncode == 0, restore.stdout[-4000:]
