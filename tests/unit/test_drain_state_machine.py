"""Unit tests of the drain state machine (plugins/module_utils/elastic/drain.py), no servers."""
import json
import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import drain as d  # noqa: E402
from elastic.celery_control import BrokerUnreachable, NoReply, QueueRef, WorkerLoad  # noqa: E402

H = "celery@w-0"
Q = [QueueRef("default", "default", "direct", "default")]


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


class FakeControl:
    """Scripted Celery control: `loads` is a list consumed one per workload() call."""

    timeout = 1.0

    def __init__(self, loads=None, alive=True, queues=None):
        self.alive = alive
        self.consuming = list(queues if queues is not None else Q)
        self.loads = list(loads or [])
        self.calls = []
        self.fail = {}  # method -> exception to raise (once per entry)

    def _maybe_fail(self, name):
        errs = self.fail.get(name)
        if errs:
            raise errs.pop(0)

    def ping(self, hosts):
        self.calls.append("ping")
        self._maybe_fail("ping")
        return {h: self.alive for h in hosts}

    def queues(self, host):
        self.calls.append("queues")
        self._maybe_fail("queues")
        if not self.alive:
            raise NoReply(host, "active_queues", 1.0)
        return list(self.consuming)

    def workload(self, hosts):
        self.calls.append("workload")
        self._maybe_fail("workload")
        load = self.loads.pop(0) if self.loads else WorkerLoad()
        return {} if load is None else {hosts[0]: load}

    def cancel_consumer(self, host, queues):
        self.calls.append("cancel")
        self._maybe_fail("cancel")
        names = {QueueRef.from_any(q).name for q in queues}
        self.consuming = [q for q in self.consuming if q.name not in names]

    def add_consumer(self, host, queues):
        self.calls.append("add")
        self._maybe_fail("add")
        for q in queues:
            ref = QueueRef.from_any(q)
            if ref.name not in [c.name for c in self.consuming]:
                self.consuming.append(ref)


class RecordingStore(d.MemoryStore):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.phases = []

    def put(self, worker, record):
        super().put(worker, record)
        self.phases.append(record["phase"])


def make(loads=None, timeout=10, store=None, **kw):
    clock = Clock()
    ctl = FakeControl(loads=loads, **{k: v for k, v in kw.items() if k in ("alive", "queues")})
    store = store if store is not None else RecordingStore()
    dr = d.Drain(ctl, store, "w-0", hostname=H, timeout=timeout, poll_interval=1, clock=clock, sleep=clock.sleep,
                 **{k: v for k, v in kw.items() if k in ("settle_polls", "settle_interval", "max_restore_attempts")})
    return dr, ctl, store, clock


def busy(*ids):
    return WorkerLoad(active=tuple(ids))


# --- happy path -----------------------------------------------------------------------


def test_idle_worker_drains_through_every_phase():
    dr, ctl, store, clock = make()
    st = dr.run()
    assert st.phase == "drained" and st.done
    assert store.phases == ["cancelling", "draining", "drained"]
    assert ctl.consuming == []
    assert st.queues == ["default"]
    assert st.tasks_finished == 0
    assert store.get("w-0")["phase"] == "drained"
    assert st.seconds == pytest.approx(0.1)  # two idle polls, settle_interval apart


def test_idle_polls_come_settle_interval_apart_busy_ones_poll_interval_apart():
    sleeps = []
    loads = [busy("a"), WorkerLoad(), busy("b"), WorkerLoad(), WorkerLoad()]
    dr, ctl, _unused, clock = make(loads=loads, settle_interval=0.2)
    dr.sleep = lambda s: (sleeps.append(s), clock.sleep(s))
    st = dr.run()
    assert st.phase == "drained"
    # busy -> 1 s; idle (1 of 2) -> 0.2 s; busy again: the streak restarts -> 1 s; idle -> 0.2 s; idle: drained
    assert sleeps == [1.0, 0.2, 1.0, 0.2]
    # the settle polls are the same polls, and the final check still asks what it consumes
    assert ctl.calls.count("workload") == 5 and ctl.calls[-1] == "queues"


def test_next_poll_in_is_poll_interval_outside_the_settle_polls():
    dr, _unused, _unused, _unused = make(loads=[busy("a")])
    assert dr.next_poll_in() == 1.0  # not begun
    dr.step()
    assert dr.next_poll_in() == 1.0 and dr.next_poll_in(0.05) == 0.05  # busy; an explicit interval wins
    dr, _unused, _unused, _unused = make(settle_polls=3)
    dr.step()
    assert dr.next_poll_in() == 0.1 and dr.next_poll_in(0.05) == 0.05  # never longer than the poll interval


def test_busy_worker_waits_for_active_reserved_and_scheduled():
    loads = [busy("a", "b"), WorkerLoad(active=("b",), reserved=("c",)), WorkerLoad(scheduled=("d",)),
             WorkerLoad(), WorkerLoad()]
    dr, ctl, store, clock = make(loads=loads)
    first = dr.step()
    assert first.phase == "draining" and not first.done
    assert first.load == {"active": 2, "reserved": 0, "scheduled": 0}
    st = dr.run()
    assert st.phase == "drained"
    assert st.tasks == ["a", "b", "c", "d"]
    assert st.tasks_finished == 4
    assert store.get("w-0")["tasks"] == ["a", "b", "c", "d"]
    assert st.to_dict()["tasks_finished"] == 4


def test_idle_streak_resets_when_work_appears():
    loads = [WorkerLoad(), busy("x"), WorkerLoad(), WorkerLoad()]
    dr, ctl, _unused, _unused = make(loads=loads)
    st = dr.run()
    assert st.phase == "drained"
    assert ctl.calls.count("workload") == 4


def test_settle_polls_one_drains_on_first_idle_poll():
    dr, ctl, _unused, _unused = make(settle_polls=1)
    st = dr.step()
    assert st.phase == "drained"


def test_restarted_worker_consuming_again_is_cancelled_again():
    dr, ctl, store, _unused = make()
    dr.step()  # cancelled, first idle poll
    ctl.consuming = list(Q)  # the worker restarted and consumes again
    st = dr.step()
    assert st.phase == "draining"
    assert ctl.calls.count("cancel") == 2 and ctl.consuming == []
    st = dr.run()
    assert st.phase == "drained"


def test_no_reply_to_inspect_is_never_idle():
    dr, ctl, _unused, _unused = make(loads=[None, None, None])
    for _i in range(3):
        st = dr.step()
        assert st.phase == "draining"
        assert "did not answer" in st.error
    assert dr.run().phase == "drained"


# --- timeout, abort, rollback ----------------------------------------------------------


def test_timeout_restores_consumers_and_drops_record():
    dr, ctl, store, clock = make(loads=[busy("long")] * 100, timeout=5)
    st = dr.run()
    assert st.phase == "restored" and st.reason == "timeout" and st.done
    assert store.phases[-1] == "restoring"
    assert store.get("w-0") is None
    assert [q.name for q in ctl.consuming] == ["default"]
    assert ctl.calls[-1] == "add"


def test_deadline_passed_while_cancelling_rolls_back():
    dr, ctl, store, clock = make(timeout=5)
    ctl.fail["cancel"] = [BrokerUnreachable("down")]
    st = dr.step()
    assert st.phase == "cancelling" and "down" in st.error
    clock.t += 10
    st = dr.step()
    assert st.phase == "restored" and st.reason == "timeout"


def test_abort_in_progress():
    dr, ctl, store, _unused = make(loads=[busy("a")] * 5)
    dr.step()
    st = dr.abort()
    assert st.phase == "restored" and st.reason == "aborted"
    assert store.get("w-0") is None and ctl.consuming
    assert dr.step().phase == "restored"  # done stays done


def test_abort_drained_worker_restores():
    dr, ctl, store, _unused = make()
    dr.run()
    st = d.Drain(ctl, store, "w-0", hostname=H).abort()
    assert st.phase == "restored" and [q.name for q in ctl.consuming] == ["default"]


def test_abort_without_record_is_noop():
    dr, ctl, store, _unused = make()
    st = dr.abort()
    assert st.phase == "restored" and st.reason == "nothing to roll back"
    assert ctl.calls == []


def test_abort_of_gone_worker():
    dr, ctl, store, _unused = make(store=RecordingStore(gone=["w-0"]))
    assert dr.abort().phase == "gone"


def test_abort_when_store_reports_gone_during_put():
    store = RecordingStore()
    store.put("w-0", {"phase": "draining", "queues": [], "deadline": 1e12, "started": 1})
    store.gone.add("w-0")
    dr = d.Drain(FakeControl(), store, "w-0")
    assert dr.abort().phase == "gone"


def test_abort_restore_failure_raises_and_keeps_record():
    dr, ctl, store, _unused = make(loads=[busy("a")] * 5)
    dr.step()
    ctl.fail["add"] = [NoReply(H, "add_consumer", 1)]
    with pytest.raises(NoReply):
        dr.abort()
    assert store.get("w-0")["phase"] == "restoring"


def test_restore_failures_end_in_failed_with_record_kept():
    dr, ctl, store, clock = make(loads=[busy("a")] * 100, timeout=3, max_restore_attempts=3)
    ctl.fail["add"] = [NoReply(H, "add_consumer", 1)] * 10
    st = dr.run()
    assert st.phase == "failed" and "record is kept" in st.error
    assert store.get("w-0")["phase"] == "restoring"
    # the next run retries the rollback and succeeds
    ctl.fail["add"] = []
    st = d.Drain(ctl, store, "w-0", hostname=H, clock=clock, sleep=clock.sleep).run()
    assert st.phase == "restored" and st.resumed and st.reason == "timeout"


def test_restore_failures_of_a_vanished_worker_end_gone():
    store = RecordingStore()
    dr, ctl, store, clock = make(loads=[busy("a")] * 100, timeout=3, max_restore_attempts=2, store=store)
    ctl.fail["add"] = [NoReply(H, "add_consumer", 1)] * 10
    for _i in range(4):
        dr.step()
        clock.t += 1
    store.gone.add("w-0")
    st = dr.run()
    assert st.phase == "gone"


# --- resume after a crash ----------------------------------------------------------


def _record(phase, deadline=2000.0, **kw):
    rec = {"version": 1, "phase": phase, "hostname": H, "queues": [q.to_dict() for q in Q], "started": 990.0,
           "deadline": deadline, "tasks": ["t1"]}
    rec.update(kw)
    return rec


@pytest.mark.parametrize("phase", ["cancelling", "draining"])
def test_resume_in_progress_keeps_deadline(phase):
    store = RecordingStore()
    store.put("w-0", _record(phase))
    dr, ctl, store, clock = make(store=store, timeout=1)  # own timeout ignored when resuming
    st = dr.run()
    assert st.phase == "drained" and st.resumed
    assert st.started == 990.0 and st.deadline == 2000.0
    assert "t1" in st.tasks
    assert "ping" not in ctl.calls  # resumed, not begun
    if phase == "cancelling":
        assert "cancel" in ctl.calls


@pytest.mark.parametrize("phase", ["cancelling", "draining"])
def test_resume_after_deadline_rolls_back(phase):
    store = RecordingStore()
    store.put("w-0", _record(phase, deadline=500.0))
    dr, ctl, store, clock = make(store=store, queues=[])
    st = dr.step()
    assert st.phase == "restored" and st.reason == "timeout" and st.resumed
    assert [q.name for q in ctl.consuming] == ["default"]
    assert store.get("w-0") is None


def test_resume_drained_is_idempotent():
    store = RecordingStore()
    store.put("w-0", _record("drained", drained_at=995.0))
    dr, ctl, store, _unused = make(store=store)
    st = dr.step()
    assert st.phase == "drained" and st.finished == 995.0 and st.resumed
    assert ctl.calls == []


def test_resume_restoring_finishes_rollback():
    store = RecordingStore()
    store.put("w-0", _record("restoring", reason="aborted"))
    dr, ctl, store, _unused = make(store=store, queues=[])
    st = dr.step()
    assert st.phase == "restored" and st.reason == "aborted"
    assert ctl.calls == ["add"]


def test_record_removed_by_another_run():
    dr, ctl, store, _unused = make(loads=[busy("a")] * 5)
    dr.step()
    store.delete("w-0")
    st = dr.step()
    assert st.phase == "restored" and "another run" in st.reason


def test_record_removed_because_pod_replaced_is_gone():
    dr, ctl, store, _unused = make(loads=[busy("a")] * 5)
    dr.step()
    store.delete("w-0")
    store.gone.add("w-0")
    assert dr.step().phase == "gone"


def test_unreadable_record_is_an_error():
    store = RecordingStore()
    store.records["w-0"] = {"phase": "bogus"}
    dr, *_unused = make(store=store)
    with pytest.raises(d.DrainError, match="not understood"):
        dr.step()


# --- errors before anything changes --------------------------------------------------


def test_unknown_worker_fails_without_change():
    dr, ctl, store, _unused = make(alive=False)
    st = dr.step()
    assert st.phase == "failed" and "unknown worker" in st.error and st.done
    assert store.get("w-0") is None and "cancel" not in ctl.calls


def test_broker_unreachable_at_start_fails_without_change():
    dr, ctl, store, _unused = make()
    ctl.fail["ping"] = [BrokerUnreachable("cannot reach the Celery broker")]
    st = dr.step()
    assert st.phase == "failed" and "nothing was changed" in st.error
    assert store.phases == []


def test_queues_no_reply_at_start_fails():
    dr, ctl, store, _unused = make()
    ctl.fail["queues"] = [NoReply(H, "active_queues", 1)]
    assert dr.step().phase == "failed"


def test_gone_worker_is_a_noop():
    dr, ctl, store, _unused = make(store=RecordingStore(gone=["w-0"]))
    st = dr.step()
    assert st.phase == "gone" and ctl.calls == []


def test_worker_gone_while_draining():
    store = RecordingStore()
    dr, ctl, store, _unused = make(loads=[busy("a"), None], store=store)
    dr.step()
    store.gone.add("w-0")
    assert dr.step().phase == "gone"


def test_put_raising_worker_gone_at_begin():
    class Vanishing(RecordingStore):
        def exists(self, worker):
            return True

        def put(self, worker, record):
            raise d.WorkerGone(worker)

    dr, ctl, store, _unused = make(store=Vanishing())
    assert dr.step().phase == "gone"


def test_put_raising_worker_gone_mid_drain():
    store = RecordingStore()
    dr, ctl, store, _unused = make(loads=[busy("a"), busy("a", "b")], store=store)
    dr.step()
    store.gone.add("w-0")
    assert dr.step().phase == "gone"


def test_transient_cancel_error_is_retried():
    dr, ctl, store, _unused = make()
    ctl.fail["cancel"] = [NoReply(H, "cancel_consumer", 1)]
    st = dr.step()
    assert st.phase == "cancelling" and st.error
    assert store.get("w-0")["phase"] == "cancelling"
    assert dr.run().phase == "drained"


@pytest.mark.parametrize("kw,msg", [
    ({"timeout": 0}, "timeout must be"),
    ({"timeout": -1}, "timeout must be"),
    ({"timeout": True}, "timeout must be"),
    ({"poll_interval": 0}, "poll_interval must be"),
    ({"settle_interval": 0}, "settle_interval must be"),
    ({"settle_polls": 0}, "settle_polls"),
])
def test_invalid_arguments(kw, msg):
    with pytest.raises(d.DrainError, match=msg):
        d.Drain(FakeControl(), d.MemoryStore(), "w-0", **kw)


def test_empty_worker_name():
    with pytest.raises(d.DrainError):
        d.Drain(FakeControl(), d.MemoryStore(), "")


# --- run_all -------------------------------------------------------------------------------


def test_run_all_drives_drains_concurrently():
    clock = Clock()
    store = d.MemoryStore()
    c1, c2 = FakeControl(loads=[busy("a")] * 3), FakeControl(loads=[busy("b")] * 100)
    d1 = d.Drain(c1, store, "w-1", timeout=30, poll_interval=1, clock=clock, sleep=clock.sleep)
    d2 = d.Drain(c2, store, "w-2", timeout=10, poll_interval=1, clock=clock, sleep=clock.sleep)
    seen = []
    out = d.run_all([d1, d2], sleep=clock.sleep, on_step=lambda dr: seen.append(dr.worker))
    assert [s.phase for s in out] == ["drained", "restored"]
    assert clock.t - 1000 <= 12
    assert set(seen) == {"w-1", "w-2"}
    assert d.run_all([]) == []


def test_run_all_waits_the_shortest_next_poll_of_the_drains_still_going():
    clock, sleeps = Clock(), []
    store = d.MemoryStore()
    idle = d.Drain(FakeControl(), store, "w-1", timeout=30, poll_interval=1, clock=clock, sleep=clock.sleep)
    busy_one = d.Drain(FakeControl(loads=[busy("b")] * 2), store, "w-2", timeout=30, poll_interval=1, clock=clock,
                       sleep=clock.sleep)
    out = d.run_all([idle, busy_one], sleep=lambda s: (sleeps.append(s), clock.sleep(s)))
    assert [s.phase for s in out] == ["drained", "drained"]
    assert sleeps[0] == pytest.approx(0.1)  # w-1 is settling, w-2 is busy
    assert sleeps[1:] == [1.0, 0.1]  # then w-2 alone: busy, idle once, drained


# --- stores --------------------------------------------------------------------------------


def test_file_store_round_trip(tmp_path):
    path = tmp_path / "sub" / "state.json"
    st = d.FileStore(str(path))
    assert st.get("w") is None and st.exists("w")
    st.put("w", {"phase": "draining"})
    st.put("v", {"phase": "drained"})
    assert json.loads(path.read_text())["w"]["phase"] == "draining"
    assert d.FileStore(str(path)).get("v") == {"phase": "drained"}
    st.delete("w")
    st.delete("w")
    assert st.get("w") is None and st.get("v")


def test_file_store_rejects_garbage(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("not json")
    with pytest.raises(d.DrainError, match="not valid JSON"):
        d.FileStore(str(path)).get("w")
    path.write_text("[1]")
    with pytest.raises(d.DrainError, match="JSON object"):
        d.FileStore(str(path)).get("w")
    path.write_text("  ")
    assert d.FileStore(str(path)).get("w") is None


def test_file_store_drain_resumes_across_objects(tmp_path):
    clock = Clock()
    path = str(tmp_path / "s.json")
    ctl = FakeControl(loads=[busy("a")] * 3)
    first = d.Drain(ctl, d.FileStore(path), "w-0", timeout=60, clock=clock, sleep=clock.sleep)
    first.step()  # "crash" here
    assert ctl.consuming == []
    second = d.Drain(ctl, d.FileStore(path), "w-0", timeout=60, clock=clock, sleep=clock.sleep)
    st = second.run()
    assert st.phase == "drained" and st.resumed and st.tasks == ["a"]


def test_memory_store_copies():
    st = d.MemoryStore()
    rec = {"phase": "draining", "tasks": []}
    st.put("w", rec)
    rec["tasks"].append("x")
    assert st.get("w")["tasks"] == []
    with pytest.raises(d.WorkerGone):
        d.MemoryStore(gone=["w"]).put("w", rec)


def test_status_dict_and_seconds():
    s = d.DrainStatus(worker="w", hostname="h")
    assert s.seconds is None and not s.done
    s.started, s.finished, s.phase = 10.0, 12.5, "drained"
    out = s.to_dict()
    assert out["seconds"] == 2.5 and out["done"] and out["tasks_finished"] == 0
