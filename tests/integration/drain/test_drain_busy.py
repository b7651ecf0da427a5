"""Drain 2 of 3 busy Celery workers on a real broker: no task is lost, duplicated or cut short.

Redis runs with acks_late (Airflow's default: a worker holds at most its
concurrency, all unacked); RabbitMQ runs with early acks so that the workers
also hold prefetched *reserved* tasks when the drain starts, which must stay on
the worker and run there before it counts as drained.
"""

import collections
import time

import pytest

from elastic.drain import Drain, MemoryStore, run_all

# 30 tasks of 3-15 s: the first six (one pair per worker) are the long ones, so
# the drained workers are busy for a while; sum 141 s of work.
DURATIONS = [15, 14, 13, 12, 9, 8] + [6] * 4 + [3] * 20


@pytest.mark.timeout(400)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_drain_two_busy_workers(broker, request, workers_factory):
    url = request.getfixturevalue(broker + "_url")
    acks_late = broker == "redis"
    w = workers_factory(url, acks_late=acks_late)
    hosts = w.start(3)
    ctl = w.control

    jobs = ["job-%02d" % i for i in range(len(DURATIONS))]
    for job, seconds in zip(jobs, DURATIONS, strict=True):
        w.send(job, seconds)

    # wait until every worker runs two tasks (and, with early acks, holds reserved ones)
    deadline = time.time() + 30
    while time.time() < deadline:
        load = ctl.workload(hosts)
        if len(load) == 3 and all(len(load[h].active) == 2 for h in hosts):
            if acks_late or all(load[h].reserved for h in hosts[:2]):
                break
        time.sleep(0.2)
    else:
        pytest.fail("workers never all busy: %r" % (ctl.workload(hosts),))
    at_start = ctl.workload(hosts[:2])
    if not acks_late:
        assert all(at_start[h].reserved for h in hosts[:2]), at_start

    store = MemoryStore()
    drains = [Drain(ctl, store, h, timeout=120, poll_interval=0.5) for h in hosts[:2]]
    cancel_time = time.time()
    statuses = run_all(drains)
    for st in statuses:
        assert st.phase == "drained", st
        # everything it held when the drain began was seen and waited for
        assert set(at_start[st.hostname].task_ids) <= set(st.tasks)
        assert st.tasks_finished >= 2
        assert store.get(st.worker)["phase"] == "drained"
        assert ctl.queues(st.hostname) == []

    events = w.events()
    for st in statuses:
        mine = [e for e in events if e[2] == st.hostname]
        started = {e[5] for e in mine if e[0] == "start"}
        ended = {e[5] for e in mine if e[0] == "end"}
        # every task that ran there was seen by the drain, and finished before it was declared drained
        assert started <= set(st.tasks), (started, st.tasks)
        assert started == ended
        assert all(e[3] <= st.finished for e in mine if e[0] == "end")
        # nothing started there after the drain began except what it already held
        held = at_start[st.hostname].task_ids
        late = [e for e in mine if e[0] == "start" and e[3] > cancel_time and e[5] not in held]
        if acks_late:
            assert late == [], late

    # "delete the pods": warm shutdown of the drained workers, nothing runs there
    for st in statuses:
        w.stop(st.hostname)
        assert w.procs[st.hostname].returncode == 0

    w.wait_ends(len(jobs), timeout=240)
    time.sleep(1.0)  # a duplicate would show up right after
    events = w.events()
    starts = collections.Counter(e[1] for e in events if e[0] == "start")
    ends = collections.Counter(e[1] for e in events if e[0] == "end")
    assert set(ends) == set(jobs)
    assert all(n == 1 for n in ends.values()), ends
    assert all(n == 1 for n in starts.values()), starts  # never redelivered or run twice
    assert sum(ends.values()) == 30
    # the kept worker is untouched
    assert [q.name for q in ctl.queues(hosts[2])] == [w.queue]
    by_host = collections.Counter(e[2] for e in events if e[0] == "end")
    print("\n%s: tasks per worker %s, drain seconds %s" % (
        broker, dict(by_host), [st.seconds for st in statuses]))
