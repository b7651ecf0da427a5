"""A drain whose timeout is shorter than the running task keeps the worker, which consumes again."""

import time

import pytest

from elastic.drain import Drain, MemoryStore


@pytest.mark.timeout(120)
def test_timeout_keeps_worker_and_its_task(redis_url, workers_factory):
    w = workers_factory(redis_url)
    (host,) = w.start(1)
    ctl = w.control
    w.send_hold("long")  # runs until released
    deadline = time.time() + 15
    while not ctl.workload([host])[host].active:
        assert time.time() < deadline, "task never started"
        time.sleep(0.2)

    store = MemoryStore()
    st = Drain(ctl, store, host, timeout=2, poll_interval=0.5).run()
    assert st.phase == "restored" and st.reason == "timeout"
    assert 2 <= st.seconds < 6
    assert store.get(host) is None
    # consuming again right away, and the running task was not disturbed
    assert [q.name for q in ctl.queues(host)] == [w.queue]
    assert ctl.workload([host])[host].active
    time.sleep(1)
    assert ctl.workload([host])[host].active  # still running, undisturbed
    w.release("long")
    w.wait_ends(1, timeout=20)
    # and it takes new work
    w.send("after", 3)
    w.wait_ends(2, timeout=20)
    ev = w.events()
    assert [e[1] for e in ev if e[0] == "end"] == ["long", "after"]
    assert {e[2] for e in ev} == {host}
    assert w.procs[host].poll() is None
