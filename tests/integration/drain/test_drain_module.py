"""The celery_worker_drain module run through `ansible localhost`, against real workers on Redis.

Covers check mode, an idle drain, idempotence, rollback (state=restored), bad
input, and a drain process killed with SIGKILL midway that the next run
resumes or rolls back.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ansible_env, ansible_module_cmd, run_module


def base(url, hosts, state_file, **kw):
    args = {"broker_url": url, "celery_hostnames": hosts, "state_file": str(state_file), "poll_interval": 0.5,
            "control_timeout": 1}
    args.update(kw)
    return args


@pytest.mark.timeout(180)
def test_check_mode_drain_idempotence_and_restore(redis_url, workers_factory, collections_path, tmp_path):
    w = workers_factory(redis_url)
    hosts = w.start(2)
    ctl = w.control
    state = tmp_path / "drain.json"

    # check mode: reports, touches nothing
    rc, res = run_module(collections_path, base(redis_url, hosts[:1], state), check=True)
    assert rc == 0, res
    assert res["changed"] is True
    (entry,) = res["workers"]
    assert entry["state"] == "would_drain" and entry["queues"] == [w.queue]
    assert entry["load"] == {"active": 0, "reserved": 0, "scheduled": 0}
    assert not state.exists()
    assert [q.name for q in ctl.queues(hosts[0])] == [w.queue]
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" == res["invocation"]["module_args"]["broker_url"]

    # real drain of an idle worker
    t0 = time.time()
    rc, res = run_module(collections_path, base(redis_url, hosts[:1], state))
    took = time.time() - t0
    assert rc == 0, res
    (entry,) = res["workers"]
    assert res["changed"] is True and entry["state"] == "drained" and res["drained"] == [hosts[0]]
    assert entry["seconds"] < 5, entry
    assert ctl.queues(hosts[0]) == []
    assert json.loads(state.read_text())[hosts[0]]["phase"] == "drained"
    print("\nidle drain through ansible: %.2fs module, %.2fs with ansible start-up" % (entry["seconds"], took))

    # again: already drained, nothing changes
    rc, res = run_module(collections_path, base(redis_url, hosts[:1], state))
    assert rc == 0 and res["changed"] is False and res["workers"][0]["state"] == "drained", res

    # check mode of a rollback
    rc, res = run_module(collections_path, base(redis_url, hosts[:1], state, state="restored"), check=True)
    assert rc == 0 and res["changed"] is True and res["workers"][0]["state"] == "would_restore", res
    assert ctl.queues(hosts[0]) == []

    # roll back: consumes again, record gone; a second rollback changes nothing
    rc, res = run_module(collections_path, base(redis_url, hosts[:1], state, state="restored"))
    assert rc == 0 and res["changed"] is True and res["workers"][0]["state"] == "restored", res
    assert [q.name for q in ctl.queues(hosts[0])] == [w.queue]
    assert hosts[0] not in json.loads(state.read_text())
    rc, res = run_module(collections_path, base(redis_url, hosts[:1], state, state="restored"))
    assert rc == 0 and res["changed"] is False, res


BAD_INPUT = [
    ({"timeout": 0}, "timeout must be a number of seconds > 0"),
    ({"timeout": -5}, "timeout must be a number of seconds > 0"),
    ({"poll_interval": 0}, "poll_interval must be"),
    ({"control_timeout": 0}, "control_timeout must be"),
    ({"celery_hostnames": []}, "nothing to drain"),
    ({"celery_hostnames": ["celery@nobody-here"]}, "unknown worker"),
    ({"broker_url": "redis://127.0.0.1:1/0"}, "broker_url: cannot reach the Celery broker"),
    ({"workers": ["airflow-worker-0"], "celery_hostnames": []}, "namespace is required"),
    ({"hostname_template": "celery@x"}, "hostname_template must contain {pod}"),
    ({"state": "gone"}, "value of state must be one of: drained, restored"),
]


@pytest.mark.timeout(120)
def test_bad_input_is_a_clear_error(redis_url, collections_path, tmp_path):
    """Every case in one playbook run (ansible start-up dominates otherwise)."""
    tasks = []
    for i, (args, _unused) in enumerate(BAD_INPUT):
        a = base(redis_url, ["celery@nobody-here"], tmp_path / "s.json")
        a.update(args)
        tasks.append({"name": "case %d" % i, "elastic_airflow.cluster.celery_worker_drain": a, "ignore_errors": True})
    play = tmp_path / "bad.yml"
    play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.run([ansible_module_cmd({})[0] + "-playbook", str(play)], env=ansible_env(collections_path),
                          capture_output=True, text=True, timeout=100, check=False)
    results = [t["hosts"]["localhost"] for t in json.loads(proc.stdout)["plays"][0]["tasks"]]
    assert len(results) == len(BAD_INPUT)
    for (args, needle), res in zip(BAD_INPUT, results, strict=True):
        assert res.get("failed"), (args, res)
        assert needle in res["msg"], (args, res["msg"])
        assert res.get("changed") is not True
    assert not (tmp_path / "s.json").exists()  # nothing was recorded


def _wait_phase(state_file, worker, phase, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            rec = json.loads(state_file.read_text()).get(worker)
        except (OSError, ValueError):
            rec = None
        if rec and rec["phase"] == phase:
            return rec
        time.sleep(0.1)
    raise AssertionError("%s never reached phase %s" % (worker, phase))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("second_run", ["resume", "rollback"])
def test_killed_drain_is_resumed_or_rolled_back(redis_url, workers_factory, collections_path, tmp_path, second_run):
    w = workers_factory(redis_url)
    (host,) = w.start(1)
    ctl = w.control
    state = tmp_path / "drain.json"
    w.send_hold("busy")  # runs until released: the test decides when it ends
    deadline = time.time() + 15
    while not ctl.workload([host])[host].active:
        assert time.time() < deadline
        time.sleep(0.2)

    proc = subprocess.Popen(ansible_module_cmd(base(redis_url, [host], state, timeout=60)),
                            env=ansible_env(collections_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    rec = _wait_phase(state, host, "draining")
    assert ctl.queues(host) == []  # it really stopped consuming
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # ansible and the module process
    proc.wait()
    assert json.loads(state.read_text())[host]["phase"] == "draining"
    assert ctl.queues(host) == []

    if second_run == "resume":
        proc = subprocess.Popen(ansible_module_cmd(base(redis_url, [host], state, timeout=60)),
                                env=ansible_env(collections_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(3)
        assert proc.poll() is None  # waiting for the running task
        assert ctl.queues(host) == []
        w.release("busy")
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, out + err
        entry = json.loads(out)["plays"][0]["tasks"][0]["hosts"]["localhost"]["workers"][0]
        assert entry["state"] == "drained" and entry["resumed"] is True
        assert entry["tasks_finished"] == 1
        assert abs(entry["seconds"] - (time.time() - rec["started"])) < 10
        assert w.ends()["busy"] == 1
        # the task had ended before the drain was declared done
        end = [e for e in w.events() if e[0] == "end"][0]
        assert end[3] <= json.loads(state.read_text())[host]["drained_at"]
        # leave the worker as found
        rc, res = run_module(collections_path, base(redis_url, [host], state, state="restored"))
        assert rc == 0
    else:
        rc, res = run_module(collections_path, base(redis_url, [host], state, state="restored"))
        assert rc == 0 and res["workers"][0]["state"] == "restored", res
        assert res["workers"][0]["reason"] == "aborted"
        assert ctl.workload([host])[host].active  # its task kept running throughout
        w.release("busy")
        w.wait_ends(1, timeout=20)
    assert [q.name for q in ctl.queues(host)] == [w.queue]
    assert host not in json.loads(state.read_text())
    w.send("later", 3)
    w.wait_ends(2, timeout=20)
    assert sorted(w.ends()) == ["busy", "later"]
