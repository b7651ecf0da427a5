"""The controller's informer against a real local API server (tests/unit/fake_apiserver.py, 127.0.0.1 only):
stop() while a watch is open, 410 and ERROR events, stale events after a write-through, a half-open
watch, backoff, and the controller process exiting on SIGTERM."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from kubernetes import client as k8s_client

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from elastic import kube as K  # noqa: E402
from fake_apiserver import FakeApiServer  # noqa: E402

DRAIN = "elastic-airflow.io/drain"


def pod(name, rv, annotations=None, uid=None):
    meta = {"name": name, "namespace": "ns", "uid": uid or "u-" + name, "resourceVersion": rv}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": {"phase": "Running"}}


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s" % what)


@pytest.fixture(params=["http", "https"])
def server(request):
    srv = FakeApiServer(tls=request.param == "https")
    yield srv
    srv.close()


def pods_informer(srv, **kw):
    core = k8s_client.CoreV1Api(srv.api_client())
    kw.setdefault("backoff", K.Backoff(initial=0.05, cap=0.2, jitter=0))
    return K.Informer("pods", lambda **a: core.list_namespaced_pod("ns", **a), **kw)


def test_stop_returns_within_a_second_while_a_watch_is_open(server):
    informer = pods_informer(server).start()
    server.watch_started.get(timeout=5)
    time.sleep(0.2)  # the informer thread is now blocked reading the open watch
    started = time.monotonic()
    stopper = threading.Thread(target=informer.stop, daemon=True)
    stopper.start()
    stopper.join(3)
    assert not stopper.is_alive(), "stop() still blocked after 3 s"
    assert time.monotonic() - started < 1.0
    wait_for(lambda: not informer._thread.is_alive(), 1.0, "the informer thread to end")


@pytest.mark.parametrize("code", [410, 500])
def test_a_410_or_error_event_mid_watch_relists(code):
    srv = FakeApiServer()
    try:
        srv.objects["pods"]["a"] = pod("a", "7")
        informer = pods_informer(srv).start()
        srv.watch_started.get(timeout=5)
        assert [p["metadata"]["name"] for p in informer.items()] == ["a"]
        # while the watch was down, a was deleted and b created; the server says the version is too old
        srv.objects["pods"] = {"b": pod("b", "9")}
        srv.send("pods", {"type": "ERROR", "object": {"kind": "Status", "code": code, "message": "too old"}})
        wait_for(lambda: informer.lists == 2, what="a re-list")
        assert [p["metadata"]["name"] for p in informer.items()] == ["b"]
        _unused, query = srv.watch_started.get(timeout=5)  # watching again, from the new list's version
        assert query["resourceVersion"] != "" and informer.watches == 2
        srv.send("pods", {"type": "ADDED", "object": pod("c", "11")})
        wait_for(lambda: informer.get("ns", "c") is not None, what="an event after the re-list")
        informer.stop()
    finally:
        srv.close()


def test_a_stale_event_after_a_write_through_is_dropped():
    # resourceVersions are opaque: "x9" < "x10" as etcd counts, but not as strings or integers
    srv = FakeApiServer()
    try:
        srv.objects["pods"]["a"] = pod("a", "x8")
        informer = pods_informer(srv).start()
        srv.watch_started.get(timeout=5)
        # our patch answered x10 (with the drain record); the watch still has to deliver x9, then x10
        assert informer.update(pod("a", "x10", {DRAIN: '{"phase":"draining"}'}))
        srv.send("pods", {"type": "MODIFIED", "object": pod("a", "x9")})  # older than what we wrote
        srv.send("pods", {"type": "ADDED", "object": pod("z", "x9")})
        wait_for(lambda: informer.get("ns", "z") is not None, what="the events")
        assert informer.get("ns", "a")["metadata"]["resourceVersion"] == "x10"
        assert informer.get("ns", "a")["metadata"]["annotations"]
        draining, drained = {DRAIN: '{"phase":"draining"}'}, {DRAIN: '{"phase":"drained"}'}
        srv.send("pods", {"type": "MODIFIED", "object": pod("a", "x10", draining)})
        srv.send("pods", {"type": "MODIFIED", "object": pod("a", "x11", drained)})
        wait_for(lambda: informer.get("ns", "a")["metadata"]["resourceVersion"] == "x11", what="x11")
        # a late write-through of a version the watch already delivered does not go back
        assert not informer.update(pod("a", "x10"))
        assert informer.get("ns", "a")["metadata"]["resourceVersion"] == "x11"
        # nor does one of a pod the watch saw deleted
        srv.send("pods", {"type": "DELETED", "object": pod("a", "x12")})
        wait_for(lambda: informer.get("ns", "a") is None, what="the delete")
        assert not informer.update(pod("a", "x13")) and informer.get("ns", "a") is None
        informer.stop()
    finally:
        srv.close()


def test_a_half_open_watch_is_noticed_and_readyz_sees_no_progress():
    srv = FakeApiServer()
    try:
        # the server's watch timeout is 1 s but the connection never ends (half-open): the client's read
        # timeout (1 s + 0.5 s) ends it and it watches again
        informer = pods_informer(srv, watch_timeout=1, read_margin=0.5, progress_timeout=2.5).start()
        srv.watch_started.get(timeout=5)
        _unused, query = srv.watch_started.get(timeout=4)
        assert informer.watches >= 2 and query["timeoutSeconds"] == "1"
        assert informer.progressing()
        srv.close()  # nothing answers any more: no list, no watch, no event
        wait_for(lambda: not informer.progressing(), 8, "progressing() to turn False")
        assert informer.errors >= 1
        informer.stop()
    finally:
        srv.close()


def test_every_request_has_a_timeout_and_watches_a_random_one_of_5_to_10_minutes():
    calls = []

    class Stop(Exception):
        pass

    def list_call(**kw):
        calls.append(kw)
        raise Stop()

    informer = K.Informer("pods", list_call)
    with pytest.raises(Stop):
        informer._list()
    assert calls[-1]["_request_timeout"] == K.REQUEST_TIMEOUT
    seconds = set()
    for _i in range(20):
        with pytest.raises(Stop):
            informer._watch("5")
        seconds.add(calls[-1]["timeout_seconds"])
        connect, read = calls[-1]["_request_timeout"]
        assert read > calls[-1]["timeout_seconds"]  # the client waits longer than the server
    assert len(seconds) > 1 and all(300 <= s < 600 for s in seconds)


def test_backoff_doubles_from_0_8_to_30_seconds_and_resets_after_a_healthy_period():
    now = [0.0]
    backoff = K.Backoff(jitter=0, clock=lambda: now[0])
    delays = []
    for _i in range(8):
        delays.append(backoff.next())
        now[0] += 1
    assert delays == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    now[0] += 121
    assert backoff.next() == 0.8


def test_the_controller_process_exits_within_seconds_of_sigterm():
    srv = FakeApiServer()
    try:
        env = dict(os.environ, PYTHONPATH=os.path.join(_ROOT, "plugins", "module_utils"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "elastic.controller", "--kubeconfig", srv.kubeconfig(), "--namespace", "ns",
             "--health-port", "0", "--identity", "c-1", "--lease-duration", "3", "--renew-deadline", "2",
             "--retry-period", "0.5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for _i in range(3):
                srv.watch_started.get(timeout=20)  # three informers watching
            wait_for(lambda: srv.leases.get("elastic-worker-controller"), 20, "the lease")
            time.sleep(0.3)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            took = time.monotonic() - started
            assert proc.returncode == 0, proc.stdout.read().decode()[-2000:]
            assert took < 3.0, "exit took %.1fs" % took
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        srv.close()
