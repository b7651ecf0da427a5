"""The celery_worker_drain module's run (plugins/module_utils/elastic/drain_job.py), with a fake pod API.

The broker side is the scripted FakeControl of the state machine tests; the
real Redis/RabbitMQ runs are in tests/integration/drain (make test-drain).
"""
import json
import os
import sys
from types import SimpleNamespace

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import drain_job as job  # noqa: E402
from elastic.celery_control import WorkerLoad  # noqa: E402
from elastic.k8s_store import ANNOTATION  # noqa: E402
from test_drain_state_machine import FakeControl as ScriptedControl  # noqa: E402

NS = "airflow"


class FakeControl(ScriptedControl):
    """The scripted control with the connection calls a run makes."""

    def connect(self):
        self.calls.append("connect")

    def close(self):
        self.calls.append("close")

    def check_result_backend(self):
        self.calls.append("check_result_backend")
        if getattr(self, "backend_error", None):
            raise self.backend_error


class ApiError(Exception):
    def __init__(self, status):
        super().__init__("HTTP %d" % status)
        self.status = status


class FakeCoreV1:
    """Pods of one namespace: read, list by `key=value` selector, annotation patch, delete with uid precondition."""

    def __init__(self, *names, labels=None):
        self.pods = {}
        self.deleted = []
        self.delete_errors = {}  # pod -> HTTP status to fail its delete with
        for i, name in enumerate(names):
            self.add(name, "uid-%d" % i, labels or {"app": "worker"})

    def add(self, name, uid, labels, terminating=False):
        meta = SimpleNamespace(name=name, uid=uid, labels=dict(labels), annotations={}, resource_version="1",
                               deletion_timestamp="2026-12-07T00:00:00Z" if terminating else None)
        self.pods[name] = SimpleNamespace(metadata=meta)

    def read_namespaced_pod(self, name, namespace):
        if name not in self.pods:
            raise ApiError(404)
        return self.pods[name]

    def list_namespaced_pod(self, namespace, label_selector):
        key, value = label_selector.split("=")
        return SimpleNamespace(items=[p for p in self.pods.values() if p.metadata.labels.get(key) == value])

    def patch_namespaced_pod(self, name, namespace, body):
        meta = self.read_namespaced_pod(name, namespace).metadata
        sent = body["metadata"]
        if sent.get("resourceVersion") and sent["resourceVersion"] != meta.resource_version:
            raise ApiError(409)
        for key, value in sent["annotations"].items():
            if value is None:
                meta.annotations.pop(key, None)
            else:
                meta.annotations[key] = value
        meta.resource_version = str(int(meta.resource_version) + 1)
        return self.pods[name]

    def delete_namespaced_pod(self, name, namespace, body):
        if name in self.delete_errors:
            raise ApiError(self.delete_errors[name])
        pod = self.read_namespaced_pod(name, namespace)
        if body.preconditions.uid != pod.metadata.uid:
            raise ApiError(409)
        del self.pods[name]
        self.deleted.append(name)


def params(**overrides):
    p = dict(broker_url="redis://127.0.0.1:6379/0", workers=[], label_selectors=[], celery_hostnames=[],
             namespace=NS, hostname_template="celery@{pod}", state="drained", delete_pod=False, timeout=5.0,
             poll_interval=0.01, control_timeout=1.0, state_file=None, kubeconfig=None, context=None)
    p.update(overrides)
    return p


@pytest.mark.parametrize("overrides, named", [
    (dict(broker_url=None), "broker_url is required"),
    (dict(workers=["w-0"], timeout=0), "timeout must be a number of seconds > 0"),
    (dict(workers=["w-0"], poll_interval=-1), "poll_interval must be"),
    (dict(), "nothing to drain"),
    (dict(workers=["w-0"], namespace=None), "namespace is required"),
    (dict(workers=["w-0"], hostname_template="celery@w"), "hostname_template must contain {pod}"),
    (dict(celery_hostnames=["celery@a", " "]), "celery_hostnames must not contain empty names"),
])
def test_bad_input_names_the_option_before_any_call(overrides, named):
    api = FakeCoreV1("w-0")
    control = FakeControl()
    with pytest.raises(job.DrainJobFailed) as err:
        job.run(params(**overrides), False, api, control)
    assert named in err.value.msg
    assert control.calls == [] and api.pods["w-0"].metadata.resource_version == "1"
    assert "127.0.0.1:6379" not in err.value.msg  # the broker URL (it may hold a password) is never echoed


def test_targets_keep_the_given_order_without_duplicates_and_a_missing_or_terminating_pod_is_gone():
    api = FakeCoreV1("w-2", "w-0", "w-1")
    api.add("w-9", "uid-9", {"app": "worker"}, terminating=True)
    targets = job.find_targets(params(workers=["w-1", "absent", "w-9"], label_selectors=["app=worker"],
                                      celery_hostnames=["celery@w-1", "celery@other"]), api)
    assert [(t.key, t.hostname, t.exists) for t in targets] == [
        ("w-1", "celery@w-1", True), ("absent", "celery@absent", False), ("w-9", "celery@w-9", False),
        ("w-0", "celery@w-0", True), ("w-2", "celery@w-2", True),
        ("celery@w-1", "celery@w-1", True), ("celery@other", "celery@other", True)]
    assert targets[0].uid == "uid-2"


def test_a_pod_api_error_other_than_404_fails_the_run():
    api = FakeCoreV1()
    api.read_namespaced_pod = lambda name, ns: (_unused for _unused in ()).throw(ApiError(403))
    with pytest.raises(job.DrainJobFailed, match="cannot read pod airflow/w-0: HTTP 403"):
        job.run(params(workers=["w-0"]), False, api, FakeControl())


def test_a_result_backend_that_cannot_be_read_fails_the_run_before_anything_changes():
    from elastic.celery_control import CeleryControlError

    api = FakeCoreV1("w-0")
    control = FakeControl()
    control.backend_error = CeleryControlError("cannot read the Celery result backend: OperationalError: refused")
    with pytest.raises(job.DrainJobFailed, match="^result_backend: cannot read the Celery result backend") as err:
        job.run(params(workers=["w-0"]), False, api, control)
    assert err.value.result["changed"] is False and "cancel" not in control.calls
    assert api.pods["w-0"].metadata.annotations == {}


def test_check_mode_reports_and_changes_nothing():
    api = FakeCoreV1("w-0", "w-1")
    control = FakeControl(loads=[WorkerLoad(active=("t1",))])
    result = job.run(params(workers=["w-0", "gone"]), True, api, control)
    assert result["changed"] is True and result["drained"] == []
    states = [(w["worker"], w["state"]) for w in result["workers"]]
    assert states == [("w-0", "would_drain"), ("gone", "gone")]
    assert result["workers"][0]["load"]["active"] == 1 and result["workers"][0]["queues"] == ["default"]
    assert "cancel" not in control.calls and control.calls[-1] == "close" and api.pods["w-0"].metadata.annotations == {}


def test_drain_and_delete_deletes_only_the_pod_whose_uid_was_read():
    api = FakeCoreV1("w-0", "w-1")
    control = FakeControl()
    result = job.run(params(workers=["w-0", "w-1"], delete_pod=True), False, api, control)
    assert result["changed"] and result["drained"] == ["w-0", "w-1"]
    assert [w["state"] for w in result["workers"]] == ["deleted", "deleted"]
    assert api.deleted == ["w-0", "w-1"]


def test_a_pod_replaced_during_the_drain_is_reported_gone_and_not_deleted():
    api = FakeCoreV1("w-0")
    control = FakeControl()
    targets_of = job.find_targets

    def replace_after_reading(p, core_v1):
        targets = targets_of(p, core_v1)
        api.add("w-0", "uid-new", {"app": "worker"})  # same name, another pod
        return targets

    job_find, job.find_targets = job.find_targets, replace_after_reading
    try:
        result = job.run(params(workers=["w-0"], delete_pod=True), False, api, control)
    finally:
        job.find_targets = job_find
    assert [w["state"] for w in result["workers"]] == ["gone"]
    assert api.deleted == [] and "w-0" in api.pods


def test_a_failed_delete_fails_the_run_naming_the_worker_and_keeps_the_others_result():
    api = FakeCoreV1("w-0", "w-1")
    api.delete_errors["w-1"] = 500
    with pytest.raises(job.DrainJobFailed) as err:
        job.run(params(workers=["w-0", "w-1"], delete_pod=True), False, api, FakeControl())
    assert err.value.msg == "w-1: drained, but deleting pod w-1 failed: HTTP 500"
    assert [w["state"] for w in err.value.result["workers"]] == ["deleted", "failed"]
    assert err.value.result["changed"] is True


def test_a_busy_worker_past_the_timeout_is_restored_and_the_run_fails():
    busy = WorkerLoad(active=("t1",))
    control = FakeControl(loads=[busy] * 1000)
    with pytest.raises(job.DrainJobFailed) as err:
        job.run(params(celery_hostnames=["celery@w-0"], timeout=0.05), False, None, control)
    assert "1 worker(s) not idle within timeout=0.05s, kept and consuming again: celery@w-0" in err.value.msg
    assert err.value.result["workers"][0]["state"] == "restored"
    assert [q.name for q in control.consuming] == ["default"]


def test_a_corrupt_drain_record_stops_the_run_with_what_to_do():
    api = FakeCoreV1("w-0")
    api.pods["w-0"].metadata.annotations[ANNOTATION] = "{not json"
    with pytest.raises(job.DrainJobFailed, match="fix or remove the drain record"):
        job.run(params(workers=["w-0"]), False, api, FakeControl())


def test_restore_rolls_back_a_recorded_drain(tmp_path):
    state_file = tmp_path / "drains.json"
    control = FakeControl()
    job.run(params(celery_hostnames=["celery@w-0"], state_file=str(state_file)), False, None, control)
    assert control.consuming == [] and json.loads(state_file.read_text())
    result = job.run(params(celery_hostnames=["celery@w-0"], state_file=str(state_file), state="restored"),
                     False, None, control)
    assert result["changed"] and [q.name for q in control.consuming] == ["default"]
    again = job.run(params(celery_hostnames=["celery@w-0"], state_file=str(state_file), state="restored"),
                    False, None, control)
    assert again["changed"] is False
