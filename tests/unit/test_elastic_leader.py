"""Leader election (plugins/module_utils/elastic/kube.py LeaderElector) on a fake Lease API, with skewed clocks."""
import datetime
import json
import os
import random
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import kube as K  # noqa: E402


class Response:
    def __init__(self, body):
        self.data = json.dumps(body).encode()


class FakeLeaseApi:
    """coordination/v1 Leases in memory, with resourceVersion preconditions as the API server has them."""

    def __init__(self):
        self.lease = None
        self.rv = 0

    def read_namespaced_lease(self, name, namespace, **kw):
        if self.lease is None:
            raise K.ApiException(status=404)
        return Response(self.lease)

    def create_namespaced_lease(self, namespace, body, **kw):
        if self.lease is not None:
            raise K.ApiException(status=409)
        self.rv += 1
        self.lease = json.loads(json.dumps(body))
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return Response(self.lease)

    def replace_namespaced_lease(self, name, namespace, body, **kw):
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise K.ApiException(status=409)
        self.rv += 1
        self.lease = json.loads(json.dumps(body))
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return Response(self.lease)


class FakeKube:
    def __init__(self, api):
        self.coordination = api
        self.request_timeout = 5


class Node:
    """One candidate on its own machine: wall clock = true time + skew, monotonic clock with its own origin."""

    def __init__(self, api, name, skew, origin, sim):
        self.sim, self.skew = sim, skew
        self.elector = K.LeaderElector(FakeKube(api), "ns", "lease", name, lease_duration=15, renew_deadline=10,
                                       retry_period=2, clock=lambda: sim[0] + origin, rng=random.Random(name))
        self.next_try = 0.0
        self.frozen_until = -1.0

    def wall(self):
        return datetime.datetime.fromtimestamp(1.7e9 + self.sim[0] + self.skew, datetime.timezone.utc)

    def tick(self, monkeypatch):
        if self.sim[0] < self.next_try or self.sim[0] < self.frozen_until:
            return
        # whatever wall clock the elector reads is this node's
        monkeypatch.setattr(K, "_now_micro", lambda: self.wall().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        monkeypatch.setattr(K.time, "time", lambda: self.wall().timestamp())
        try:
            self.elector.try_acquire_or_renew()
        finally:
            monkeypatch.undo()
        self.next_try = self.sim[0] + self.elector.next_wait()


@pytest.mark.parametrize("skew", [-40.0, -9.0, 9.0, 40.0])
def test_two_electors_with_skewed_clocks_never_both_lead(skew, monkeypatch):
    api = FakeLeaseApi()
    sim = [0.0]
    a = Node(api, "a", 0.0, 1000.0, sim)
    b = Node(api, "b", skew, -50.0, sim)
    leaders, both = [], []
    step = 0.25
    while sim[0] < 300:
        if abs(sim[0] - 60) < step / 2:
            a.frozen_until = 90  # the leader stops renewing for 30 s (SIGSTOP, a long GC, a lost network)
        if abs(sim[0] - 160) < step / 2:
            (a if a.elector.is_leader else b).frozen_until = 200
        for node in (a, b) if int(sim[0] / step) % 2 else (b, a):
            node.tick(monkeypatch)
        if a.elector.is_leader and b.elector.is_leader:
            both.append(sim[0])
        leaders.append("a" if a.elector.is_leader else "b" if b.elector.is_leader else "-")
        sim[0] += step
    assert not both, "two leaders at t=%s" % both[:5]
    assert "a" in leaders and "b" in leaders  # the lease did change hands (after the freezes)
    assert leaders.count("-") < len(leaders) / 3  # and someone led most of the time


def test_a_candidate_waits_a_full_lease_duration_of_its_own_clock():
    api = FakeLeaseApi()
    now = [0.0]
    a = K.LeaderElector(FakeKube(api), "ns", "lease", "a", clock=lambda: now[0])
    b = K.LeaderElector(FakeKube(api), "ns", "lease", "b", clock=lambda: now[0])
    assert a.try_acquire_or_renew() and a.is_leader and a.leader_deadline() == 10.0
    # the holder's renewTime says 1970: b must not care, it judges by when it saw the record change
    api.lease["spec"]["renewTime"] = "1970-01-01T00:00:00.000000Z"
    api.lease["metadata"]["resourceVersion"] = str(api.rv)
    now[0] = 1.0
    assert not b.try_acquire_or_renew()
    now[0] = 10.0
    assert not a.is_leader  # renew deadline passed without a renewal: a stops acting
    assert not b.try_acquire_or_renew()
    now[0] = 16.1  # 15 s after b first saw this record
    assert b.try_acquire_or_renew() and b.is_leader
    assert not a.try_acquire_or_renew() and not a.is_leader


def test_timing_parameters_are_checked_and_check_reports_a_stuck_leader():
    for bad in (dict(lease_duration=10, renew_deadline=10, retry_period=2),
                dict(lease_duration=15, renew_deadline=2.4, retry_period=2),
                dict(lease_duration=15, renew_deadline=10, retry_period=0)):
        with pytest.raises(ValueError):
            K.LeaderElector(None, "ns", "l", "a", **bad)
    api = FakeLeaseApi()
    now = [0.0]
    a = K.LeaderElector(FakeKube(api), "ns", "lease", "a", clock=lambda: now[0])
    assert a.check()[0]
    a.try_acquire_or_renew()
    now[0] = 20.0
    assert a.check(tolerance=10)[0]
    now[0] = 40.0
    assert not a.check(tolerance=10)[0]  # thought to lead, no renewal for 40 s: /healthz fails
    # jitter: a waiting candidate retries after retry_period .. 2.2 x retry_period
    waits = set(round(K.LeaderElector(FakeKube(FakeLeaseApi()), "ns", "l", "x", rng=random.Random(i)).next_wait(), 3)
                for i in range(10))
    assert len(waits) > 1 and all(2.0 <= w <= 4.4 for w in waits)
