"""Unit tests of the Celery control client (plugins/module_utils/elastic/celery_control.py), no broker."""
import datetime
import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import celery_control as cc  # noqa: E402
from elastic import k8s_store as ks  # noqa: E402
from elastic.drain import DrainError, WorkerGone  # noqa: E402


class ConnErr(Exception):
    pass


class FakeConn:
    connection_errors = (ConnErr,)

    def __init__(self, fail=None):
        self.fail = fail
        self.released = 0

    def ensure_connection(self, **kw):
        if self.fail:
            raise self.fail

    def release(self):
        self.released += 1

    def as_uri(self, include_password=True):
        return "redis://:**@broker:6379/0"


class FakeInspect:
    def __init__(self, data):
        self.data = data

    def __getattr__(self, name):
        if name in ("active", "reserved", "scheduled", "active_queues", "stats"):
            return lambda: self.data.get(name)
        raise AttributeError(name)


class FakeControl:
    def __init__(self):
        self.inspect_data = {}
        self.replies = {}
        self.sent = []
        self.raise_on = {}

    def _r(self, name, args, kw):
        self.sent.append((name, args, kw))
        if name in self.raise_on:
            raise self.raise_on[name]
        return self.replies.get(name)

    def ping(self, **kw):
        return self._r("ping", (), kw)

    def inspect(self, **kw):
        self.sent.append(("inspect", (), kw))
        if "inspect" in self.raise_on:
            raise self.raise_on["inspect"]
        return FakeInspect(self.inspect_data)

    def cancel_consumer(self, queue, **kw):
        return self._r("cancel_consumer", (queue,), kw)

    def add_consumer(self, queue, **kw):
        return self._r("add_consumer", (queue,), kw)

    def shutdown(self, **kw):
        return self._r("shutdown", (), kw)


class FakeBackend:
    """A result backend: {task id: (state, date_done epoch)}; a task it does not know is PENDING, as in Celery."""

    def __init__(self, records=None, fail=None):
        self.records = dict(records or {})
        self.fail = fail
        self.asked = []

    def get_task_meta(self, task_id):
        self.asked.append(task_id)
        if self.fail:
            raise self.fail
        state, done = self.records.get(task_id, ("PENDING", None))
        return {"task_id": task_id, "status": state,
                "date_done": None if done is None else datetime.datetime.fromtimestamp(done, datetime.timezone.utc)
                .isoformat()}


class FakeApp:
    def __init__(self, conn=None, backend=None):
        self.control = FakeControl()
        self.conn = conn or FakeConn()
        self.conf = {}
        self.backend = backend

    def connection_for_write(self):
        return self.conn


NOW = 1_800_000_000.0


def client(result_backend=None, **kw):
    app = FakeApp(**kw)
    c = cc.CeleryControl(None, timeout=0.5, app=app, result_backend=result_backend)
    c.clock = lambda: NOW
    return c, app


H = "celery@w-0"


def test_requires_positive_timeout_and_url():
    with pytest.raises(ValueError, match="timeout must be > 0"):
        cc.CeleryControl("redis://x", timeout=0)
    with pytest.raises(ValueError, match="broker_url is required"):
        cc.CeleryControl("", timeout=1)


def test_builds_a_real_app_from_url():
    c = cc.CeleryControl("redis://127.0.0.1:1/0", timeout=0.3, transport_options={"visibility_timeout": 10})
    assert c.app.conf.broker_connection_timeout == 0.3
    assert c.app.conf.broker_transport_options == {"visibility_timeout": 10}
    assert "127.0.0.1:1" in c.safe_broker_url
    with pytest.raises(cc.BrokerUnreachable, match="cannot reach the Celery broker"):
        c.connect()


def test_ping_maps_replies():
    c, app = client()
    app.control.replies["ping"] = [{H: {"ok": "pong"}}]
    assert c.ping([H, "celery@w-1", H]) == {H: True, "celery@w-1": False}
    _unused, _unused, kw = app.control.sent[-1]
    assert kw["destination"] == [H, "celery@w-1"] and kw["limit"] == 2 and kw["timeout"] == 0.5
    app.control.replies["ping"] = None
    assert c.ping(H) == {H: False}
    with pytest.raises(ValueError):
        c.ping([])


def test_workload_collects_ids_and_skips_silent_workers():
    c, app = client()
    app.control.inspect_data = {
        "active": {H: [{"id": "a"}], "celery@w-1": []},
        "reserved": {H: [{"id": "r"}, {"no": "id"}], "celery@w-1": []},
        "scheduled": {H: [{"eta": "x", "request": {"id": "s"}}, "junk"]},  # w-1 did not answer this one
    }
    out = c.workload([H, "celery@w-1"])
    assert set(out) == {H}
    load = out[H]
    assert load.active == ("a",) and load.reserved == ("r",) and load.scheduled == ("s",)
    assert load.total == 3 and not load.idle and load.task_ids == ("a", "r", "s")
    assert load.counts() == {"active": 1, "reserved": 1, "scheduled": 1}
    assert cc.WorkerLoad().idle
    inspects = [s for s in app.control.sent if s[0] == "inspect"]
    assert all(kw["limit"] == 2 and kw["connection"] is app.conn for _unused, _unused, kw in inspects)


def _active(*entries):
    """inspect active entries: (id, seconds since it started, or None for no time_start)."""
    return [dict({"id": i}, **({} if age is None else {"time_start": NOW - age})) for i, age in entries]


def test_workload_does_not_count_an_active_task_the_result_backend_records_as_finished():
    """celery/celery#8541: after a broker reconnect a 5.5 worker lists ended tasks as active for good."""
    backend = FakeBackend({"ended": ("SUCCESS", NOW - 50), "failed": ("FAILURE", NOW - 10),
                           "revoked": ("REVOKED", NOW - 1), "running": ("STARTED", None),
                           "rerun": ("SUCCESS", NOW - 200),  # an earlier run's record: this run started after it
                           "young": ("SUCCESS", NOW - 1), "nostart": ("SUCCESS", NOW - 1)})
    c, app = client(result_backend="redis://:pw@results:6379/1", backend=backend)
    assert app.conf["result_backend"] == "redis://:pw@results:6379/1"
    app.control.inspect_data = {
        "active": {H: _active(("ended", 100), ("running", 100)),
                   "celery@w-1": _active(("failed", 60), ("revoked", 30)),
                   "celery@w-2": _active(("new", 100), ("rerun", 100)),  # new: PENDING (track_started off)
                   "celery@w-3": _active(("young", 5), ("nostart", None))},  # listed too briefly; no start time
        "reserved": {H: [{"id": "ended"}], "celery@w-1": [], "celery@w-2": [], "celery@w-3": []},
        "scheduled": {H: [], "celery@w-1": [], "celery@w-2": [], "celery@w-3": []},
    }
    out = c.workload([H, "celery@w-1", "celery@w-2", "celery@w-3"])
    assert out[H].active == ("running",) and out[H].finished == ("ended",) and out[H].reserved == ("ended",)
    assert out["celery@w-1"].idle and out["celery@w-1"].finished == ("failed", "revoked")
    assert out["celery@w-2"].active == ("new", "rerun") and not out["celery@w-2"].finished
    assert out["celery@w-3"].active == ("young", "nostart")
    assert out[H].counts() == {"active": 1, "reserved": 1, "scheduled": 0}
    assert sorted(backend.asked) == ["ended", "failed", "new", "rerun", "revoked", "running"]  # not young/nostart


def test_a_task_listed_by_two_workers_counts_from_its_later_start():
    """A redelivered copy still running elsewhere keeps the id busy on both workers until its own run is done."""
    c, app = client(result_backend="redis://r/1", backend=FakeBackend({"t": ("FAILURE", NOW - 60)}))
    app.control.inspect_data = {"active": {H: _active(("t", 300)), "celery@w-1": _active(("t", 40))},
                                "reserved": {H: [], "celery@w-1": []}, "scheduled": {H: [], "celery@w-1": []}}
    out = c.workload([H, "celery@w-1"])
    assert out[H].active == ("t",) and out["celery@w-1"].active == ("t",)


def test_workload_counts_every_task_when_the_result_backend_cannot_be_read(caplog):
    backend = FakeBackend({"ended": ("SUCCESS", NOW - 1)},
                          fail=OSError("could not connect to redis://:s3cret@results:6379/1"))
    c, app = client(result_backend="redis://:s3cret@results:6379/1", backend=backend)
    app.control.inspect_data = {"active": {H: _active(("ended", 100))}, "reserved": {H: []}, "scheduled": {H: []}}
    with caplog.at_level("WARNING"):
        out = c.workload([H])
    assert out[H].active == ("ended",) and not out[H].idle  # never idle on a guess
    assert "cannot read the Celery result backend" in caplog.text and "s3cret" not in caplog.text
    with pytest.raises(cc.CeleryControlError) as err:  # backs off: not asked again for RETRY_SECONDS
        c.check_result_backend()
    assert "retried later" in str(err.value) and "s3cret" not in str(err.value) and backend.asked == ["ended"]
    c.results._blocked_until = 0  # the back-off over
    with pytest.raises(cc.CeleryControlError, match="cannot read the Celery result backend: OSError"):
        c.check_result_backend()


def test_without_a_result_backend_inspect_active_is_trusted():
    c, app = client(backend=FakeBackend({"ended": ("SUCCESS", NOW - 1)}))
    app.control.inspect_data = {"active": {H: _active(("ended", 100))}, "reserved": {H: []}, "scheduled": {H: []}}
    assert c.workload([H])[H].active == ("ended",)
    assert app.backend.asked == [] and c.finished({"ended": NOW - 100}) == frozenset()
    c.check_result_backend()  # nothing to check


def test_a_database_result_backend_is_read_with_one_select(tmp_path):
    """Airflow's default backend (db+...): celery_taskmeta read directly, date_done naive UTC."""
    sa = pytest.importorskip("sqlalchemy")
    db = tmp_path / "results.db"
    engine = sa.create_engine("sqlite:///%s" % db)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE celery_taskmeta (id INTEGER PRIMARY KEY, task_id VARCHAR(155) UNIQUE, "
                             "status VARCHAR(50), result BLOB, date_done DATETIME, traceback TEXT)"))
        done = datetime.datetime.fromtimestamp(NOW - 10, datetime.timezone.utc).replace(tzinfo=None)
        for task_id, state in (("ended", "SUCCESS"), ("running", "STARTED")):
            conn.execute(sa.text("INSERT INTO celery_taskmeta (task_id, status, date_done) VALUES (:t, :s, :d)"),
                         {"t": task_id, "s": state, "d": done if state == "SUCCESS" else None})
    engine.dispose()
    c = cc.CeleryControl("redis://127.0.0.1:1/0", timeout=0.3, result_backend="db+sqlite:///%s" % db)
    c.clock = lambda: NOW
    assert c.results.records(["ended", "running", "unknown"]) == {"ended": ("SUCCESS", NOW - 10),
                                                                  "running": ("STARTED", None)}
    assert c.finished({"ended": NOW - 60, "running": NOW - 60, "unknown": NOW - 60}) == {"ended"}
    assert c.finished({"ended": NOW - 5}) == frozenset()  # listed less than FINISHED_MIN_AGE: not looked up
    c.close()


def test_workload_none_reply_is_empty():
    c, app = client()
    assert c.workload([H]) == {}


def test_queues_parse_and_no_reply():
    c, app = client()
    app.control.inspect_data = {"active_queues": {H: [
        {"name": "default", "exchange": {"name": "default", "type": "direct"}, "routing_key": "default"},
        {"name": "odd", "exchange": "ex"}]}}
    qs = c.queues(H)
    assert qs[0] == cc.QueueRef("default", "default", "direct", "default")
    assert qs[1] == cc.QueueRef("odd", "ex", None, None)
    with pytest.raises(cc.NoReply, match="did not answer 'active_queues'"):
        c.queues("celery@nobody")


def test_queue_ref_conversions():
    assert cc.QueueRef.from_any("q") == cc.QueueRef("q")
    ref = cc.QueueRef("q", "e", "topic", "rk")
    assert cc.QueueRef.from_any(ref) is ref
    assert cc.QueueRef.from_any(ref.to_dict()) == ref


def test_cancel_consumer_ok_noreply_and_error():
    c, app = client()
    app.control.replies["cancel_consumer"] = [{H: {"ok": "no longer consuming from default"}}]
    c.cancel_consumer(H, ["default", {"name": "other"}])
    calls = [s for s in app.control.sent if s[0] == "cancel_consumer"]
    assert [a[0] for _unused, a, _unused in calls] == ["default", "other"]
    assert calls[0][2]["destination"] == [H] and calls[0][2]["reply"] is True and calls[0][2]["limit"] == 1
    app.control.replies["cancel_consumer"] = [{"celery@else": {"ok": "x"}}]
    with pytest.raises(cc.NoReply):
        c.cancel_consumer(H, ["default"])
    app.control.replies["cancel_consumer"] = [{H: {"error": "boom"}}]
    with pytest.raises(cc.CommandFailed, match="boom"):
        c.cancel_consumer(H, ["default"])


def test_add_consumer_passes_exchange_details():
    c, app = client()
    app.control.replies["add_consumer"] = [{H: {"ok": "already consuming from default"}}]
    c.add_consumer(H, [cc.QueueRef("default", "default", "direct", "default"), "plain"])
    calls = [s for s in app.control.sent if s[0] == "add_consumer"]
    assert calls[0][2]["exchange"] == "default" and calls[0][2]["routing_key"] == "default"
    assert "exchange" not in calls[1][2]


def test_shutdown_sends_without_reply():
    c, app = client()
    c.shutdown(H)
    assert app.control.sent[-1][0] == "shutdown" and app.control.sent[-1][2]["destination"] == [H]


def test_broker_unreachable_on_connect():
    c, app = client(conn=FakeConn(fail=OSError("refused")))
    with pytest.raises(cc.BrokerUnreachable, match="refused"):
        c.ping([H])
    assert app.conn.released == 1


@pytest.mark.parametrize("exc", [OSError("reset"), ConnErr("lost")])
def test_connection_lost_during_command(exc):
    c, app = client()
    app.control.raise_on["ping"] = exc
    with pytest.raises(cc.BrokerUnreachable, match="lost the Celery broker"):
        c.ping([H])
    assert c._conn is None  # reconnects next time


def test_other_errors_propagate():
    c, app = client()
    app.control.raise_on["ping"] = KeyError("x")
    with pytest.raises(KeyError):
        c.ping([H])


def test_context_manager_closes():
    c, app = client()
    with c:
        c.connect()
    assert app.conn.released == 1
    c.close()


# --- the pod annotation store ---------------------------------------------------------


class ApiExc(Exception):
    def __init__(self, status):
        super().__init__("status %s" % status)
        self.status = status


class Meta:
    def __init__(self, annotations=None, deleting=False, uid="u1"):
        self.annotations = annotations
        self.deletion_timestamp = "now" if deleting else None
        self.uid = uid


class Pod:
    def __init__(self, **kw):
        self.metadata = Meta(**kw)


class FakeCore:
    def __init__(self):
        self.pods = {}
        self.patches = []

    def read_namespaced_pod(self, name, namespace):
        if name not in self.pods:
            raise ApiExc(404)
        return self.pods[name]

    def patch_namespaced_pod(self, name, namespace, body, **kw):
        if name not in self.pods:
            raise ApiExc(404)
        self.patches.append((name, body, kw))
        ann = dict(self.pods[name].metadata.annotations or {})
        for k, v in body["metadata"]["annotations"].items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v
        self.pods[name].metadata.annotations = ann


def test_pod_annotation_store():
    api = FakeCore()
    api.pods["w-0"] = Pod()
    store = ks.PodAnnotationStore(api, "airflow")
    assert store.get("w-0") is None and store.exists("w-0")
    store.put("w-0", {"phase": "draining"})
    assert api.pods["w-0"].metadata.annotations[ks.ANNOTATION] == '{"phase":"draining"}'
    assert api.patches[-1][2] == {}  # a dict body: the client sends a strategic merge patch
    assert store.get("w-0") == {"phase": "draining"}
    store.delete("w-0")
    assert store.get("w-0") is None
    # gone pods
    assert not store.exists("w-9")
    with pytest.raises(WorkerGone):
        store.get("w-9")
    with pytest.raises(WorkerGone):
        store.put("w-9", {})
    store.delete("w-9")  # no error
    # terminating pods count as gone
    api.pods["w-1"] = Pod(deleting=True)
    assert not store.exists("w-1")
    assert ks.pod_uid(api, "airflow", "w-0") == "u1" and ks.pod_uid(api, "airflow", "w-9") is None


def test_pod_annotation_store_errors():
    api = FakeCore()
    api.pods["w-0"] = Pod(annotations={ks.ANNOTATION: "{nope"})
    store = ks.PodAnnotationStore(api, "airflow")
    with pytest.raises(DrainError, match="not JSON"):
        store.get("w-0")
    with pytest.raises(DrainError):
        ks.PodAnnotationStore(api, "")

    class Broken(FakeCore):
        def read_namespaced_pod(self, name, namespace):
            raise ApiExc(500)

        def patch_namespaced_pod(self, *a, **kw):
            raise ApiExc(403)

    with pytest.raises(ApiExc):
        ks.PodAnnotationStore(Broken(), "ns").get("w")
    with pytest.raises(ApiExc):
        ks.PodAnnotationStore(Broken(), "ns").put("w", {})
    with pytest.raises(ApiExc):
        ks.pod_uid(Broken(), "ns", "w")


def test_pod_annotation_store_sends_no_content_type_argument():
    # kubernetes client 33 rejects unknown keywords such as _content_type
    # (ApiTypeError, a TypeError): the store must not pass one.
    class Strict(FakeCore):
        def patch_namespaced_pod(self, name, namespace, body, **kw):
            if kw:
                raise TypeError("Got an unexpected keyword argument %r" % sorted(kw))
            return super().patch_namespaced_pod(name, namespace, body)

    api = Strict()
    api.pods["w"] = Pod(annotations={"keep": "me"})
    store = ks.PodAnnotationStore(api, "ns")
    store.put("w", {"phase": "drained"})
    assert api.pods["w"].metadata.annotations == {"keep": "me", ks.ANNOTATION: '{"phase":"drained"}'}
    store.delete("w")
    assert api.pods["w"].metadata.annotations == {"keep": "me"}


def test_concurrency_reads_pool_size_of_answering_workers():
    c, app = client()
    app.control.inspect_data = {"stats": {H: {"pool": {"max-concurrency": 16}}, "celery@w-1": {"pool": {}},
                                          "celery@w-2": "junk"}}
    assert c.concurrency([H, "celery@w-1", "celery@w-2", "celery@w-3"]) == {H: 16}
    _unused, _unused, kw = [s for s in app.control.sent if s[0] == "inspect"][-1]
    assert kw["destination"] == [H, "celery@w-1", "celery@w-2", "celery@w-3"] and kw["limit"] == 4
    app.control.inspect_data = {}
    assert c.concurrency(H) == {}


class ChanErr(Exception):
    pass


class FakeChannel:
    def __init__(self, conn):
        self.conn = conn
        self.closed = False

    def queue_declare(self, queue, passive):
        assert passive
        if self.conn.declare_error:
            raise self.conn.declare_error
        if queue not in self.conn.queues:
            raise ChanErr("NOT_FOUND - no queue %r" % queue)
        return type("Ok", (), {"message_count": self.conn.queues[queue]})()

    def close(self):
        self.closed = True


class QueueConn(FakeConn):
    channel_errors = (ChanErr,)

    def __init__(self, queues, declare_error=None):
        super().__init__()
        self.queues = queues
        self.declare_error = declare_error
        self.channels = []

    def channel(self):
        self.channels.append(FakeChannel(self))
        return self.channels[-1]


def test_queue_length_sums_known_queues_and_counts_missing_ones_as_empty():
    conn = QueueConn({"default": 3, "high": 2})
    c, _unused = client(conn=conn)
    assert c.queue_length(["default", "missing", "high", "default"]) == 5
    # one channel per queue (AMQP closes the channel of a failed passive declare), all closed
    assert len(conn.channels) == 3 and all(ch.closed for ch in conn.channels)
    with pytest.raises(ValueError):
        c.queue_length([])


def test_queue_length_maps_a_lost_broker_and_keeps_other_errors():
    conn = QueueConn({}, declare_error=ConnErr("reset"))
    c, _unused = client(conn=conn)
    with pytest.raises(cc.BrokerUnreachable, match="lost the Celery broker"):
        c.queue_length(["default"])
    assert conn.released == 1  # the connection is dropped and made again next time
    c, _unused = client(conn=QueueConn({}, declare_error=KeyError("bug")))
    with pytest.raises(KeyError):
        c.queue_length(["default"])
    c, _unused = client(conn=FakeConn(fail=ConnErr("refused")))
    with pytest.raises(cc.BrokerUnreachable, match="cannot reach"):
        c.queue_length(["default"])


def test_finished_reads_a_real_celery_result_backend(tmp_path):
    """Celery's own backend API (the file backend: no server), as a worker's task leaves it."""
    c = cc.CeleryControl("redis://127.0.0.1:1/0", timeout=0.3, result_backend="file://" + str(tmp_path))
    c.app.backend.store_result("done", 42, "SUCCESS")
    c.app.backend.store_result("failed", ValueError("x"), "FAILURE")
    c.app.backend.store_result("running", {"pid": 1}, "STARTED")
    stored = c.clock()
    c.clock = lambda: stored + 100
    assert c.finished(dict.fromkeys(["done", "failed", "running", "unknown"], stored - 1)) == {"done", "failed"}
    assert c.finished({"done": stored + 50}) == frozenset()  # a run that started after the record (a re-run) counts
