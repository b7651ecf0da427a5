"""Unit tests of the apply_manifests engine (plugins/module_utils/elastic/manifests.py).

The rules (change detection, readiness, redaction) are tested on plain dicts;
ManifestRun against a small in-memory API that behaves like the dynamic
client: server-side apply merges, resourceVersion moves only on a change,
dry runs persist nothing. The real API server is exercised by
tests/integration/playbooks (site.yml converges, re-runs with changed=0,
--check --diff).
"""
import copy
import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import manifests as M  # noqa: E402


class NotFound(Exception):
    status = 404
    reason = "Not Found"


class NoSuchKind(Exception):
    pass


class Conflict(Exception):
    status = 422
    reason = "Unprocessable Entity"
    body = '{"message": "data[password]: Invalid value: \\"s3cret\\""}'


NAMESPACED = {"Deployment", "StatefulSet", "Job", "Secret", "ConfigMap", "Service"}
KNOWN = NAMESPACED | {"Namespace", "CustomResourceDefinition", "APIService"}


class Instance:
    def __init__(self, obj):
        self.obj = obj

    def to_dict(self):
        return copy.deepcopy(self.obj)


def respond(instance, serializer):
    """What the client returns: a ResourceInstance, or what the given serializer makes of the JSON."""
    return serializer(None, instance.to_dict()) if serializer else instance


class Resource:
    def __init__(self, api, api_version, kind):
        self.api, self.api_version, self.kind = api, api_version, kind
        self.namespaced = kind in NAMESPACED

    def get(self, name=None, namespace=None, label_selector=None, serializer=None):
        self.api.reads += 1
        return respond(self._get(name, namespace, label_selector), serializer)

    def _get(self, name, namespace, label_selector):
        if name is None:
            wanted = dict(req.split("=") for req in label_selector.split(","))
            items = [o for (k, ns, _n), o in sorted(self.api.objects.items())
                     if k == self.kind and ns == namespace
                     and all(o["metadata"].get("labels", {}).get(a) == b for a, b in wanted.items())]
            return Instance({"items": [{key: val for key, val in o.items() if key not in ("apiVersion", "kind")}
                                       for o in items]})
        key = (self.kind, namespace, name)
        if key not in self.api.objects:
            raise NotFound()
        self.api.on_read(key)
        return Instance(self.api.objects[key])

    def delete(self, name=None, namespace=None, body=None):
        self.api.deleted.append((self.kind, namespace, name, body["propagationPolicy"]))
        if self.api.objects.pop((self.kind, namespace, name), None) is None:
            raise NotFound()


class Resources:
    def __init__(self, api):
        self.api = api

    def get(self, api_version, kind):
        if kind not in KNOWN or kind in self.api.unserved:
            raise NoSuchKind(kind)
        return Resource(self.api, api_version, kind)


class FakeApi:
    """Just enough of kubernetes' DynamicClient for ManifestRun."""

    def __init__(self):
        self.objects = {}
        self.resources = Resources(self)
        self.rv = 100
        self.reads = 0
        self.deleted = []
        self.applied = []
        self.unserved = set()
        self.progress = {}  # key -> list of status dicts handed out by successive reads
        self.fail_apply = None

    def on_read(self, key):
        if self.progress.get(key):
            self.objects[key]["status"] = self.progress[key].pop(0)

    def server_side_apply(self, resource, body=None, name=None, namespace=None, field_manager=None,
                          force_conflicts=None, dry_run=None, serializer=None):
        if self.fail_apply:
            raise self.fail_apply
        self.applied.append((resource.kind, name, field_manager, force_conflicts, dry_run))
        key = (resource.kind, namespace, name)
        existing = copy.deepcopy(self.objects.get(key))
        merged = copy.deepcopy(existing) if existing else {"status": {}}
        for field, value in body.items():
            if field == "metadata":
                merged.setdefault("metadata", {}).update(copy.deepcopy(value))
            else:
                merged[field] = copy.deepcopy(value)
        if existing is None or M.differs(existing, merged):
            self.rv += 1
            merged["metadata"]["resourceVersion"] = str(self.rv)
            merged["metadata"]["generation"] = merged["metadata"].get("generation", 0) + 1
        if not dry_run:
            self.objects[key] = merged
        return respond(Instance(merged), serializer)


def run_of(api, **kwargs):
    sleeps = []
    now = [0.0]

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    run = M.ManifestRun(api, NotFound, NoSuchKind, "elastic-airflow", sleep=sleep, clock=lambda: now[0], **kwargs)
    run.sleeps = sleeps
    return run


def deployment(name="web", replicas=2, image="nginx:1"):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}


def secret(value="s3cret"):
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "data": {"password": value}}


def job(name="migrate-abc"):
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "migrate"}}, "spec": {}}


# -- rules -------------------------------------------------------------------

def test_status_and_server_metadata_are_not_changes():
    before = {"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "1", "managedFields": [1]},
              "data": {"k": "v"}, "status": {"x": 1}}
    after = {"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "9", "generation": 3},
             "data": {"k": "v"}, "status": {"x": 2}}
    assert not M.differs(before, after)
    assert M.differs(before, dict(after, data={"k": "w"}))


@pytest.mark.parametrize("status,state", [
    ({}, M.WAITING),
    ({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 3}, M.WAITING),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, M.READY),
    ({"observedGeneration": 0, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, M.WAITING),
])
def test_deployment_ready_only_when_rolled_out(status, state):
    obj = dict(deployment(), status=status)
    obj["metadata"]["generation"] = 1
    assert M.readiness(obj)[0] == state


def test_statefulset_waits_for_the_update_revision():
    sts = {"kind": "StatefulSet", "metadata": {"generation": 2}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                      "currentRevision": "a", "updateRevision": "b"}}
    assert M.readiness(sts)[0] == M.WAITING
    sts["status"]["currentRevision"] = "b"
    assert M.readiness(sts)[0] == M.READY


def test_job_failed_is_final_and_crd_apiservice_conditions():
    failed = dict(job(), status={"conditions": [{"type": "Failed", "status": "True",
                                                 "reason": "BackoffLimitExceeded"}]})
    assert M.readiness(failed) == (M.FAILED, "failed: BackoffLimitExceeded ")
    done = dict(job(), status={"conditions": [{"type": "Complete", "status": "True"}]})
    assert M.readiness(done)[0] == M.READY
    crd = {"kind": "CustomResourceDefinition", "status": {"conditions": [{"type": "Established", "status": "True"}]}}
    assert M.readiness(crd)[0] == M.READY
    assert M.readiness({"kind": "APIService", "status": {}})[0] == M.WAITING
    assert M.readiness({"kind": "ConfigMap"}) is None


def test_a_secret_is_shown_with_its_keys_never_its_values():
    shown = M.redacted(dict(secret(), stringData={"token": "t0k3n"}))
    assert shown["data"] == {"password": M.HIDDEN} and shown["stringData"] == {"token": M.HIDDEN}
    assert "s3cret" not in repr(shown) and "t0k3n" not in repr(shown)


def test_join_label_selectors_joins_a_list_and_refuses_other_shapes():
    assert M.join_label_selectors(["a=1", "b=2"]) == "a=1,b=2"
    assert M.join_label_selectors("a=1") == "a=1"
    for bad in ({"a": "1"}, ["a=1", 2], None):
        with pytest.raises(M.ManifestError, match="label_selectors must be a list of key=value strings"):
            M.join_label_selectors(bad)


# -- ManifestRun ---------------------------------------------------------------

def test_first_apply_creates_and_a_second_changes_nothing():
    api = FakeApi()
    first = run_of(api)
    first.apply([deployment(), secret()], "ns")
    assert [o["action"] for o in first.objects()] == ["created", "created"]
    assert first.changed
    assert api.objects[("Deployment", "ns", "web")]["metadata"]["namespace"] == "ns"
    assert api.applied[0][2:] == ("elastic-airflow", True, None)
    again = run_of(api)
    again.apply([deployment(), secret()], "ns")
    assert [o["action"] for o in again.objects()] == ["unchanged", "unchanged"] and not again.changed
    third = run_of(api)
    third.apply([deployment(image="nginx:2")], "ns")
    assert third.objects()[0]["action"] == "configured"


def test_check_mode_is_a_dry_run_and_reports_what_it_cannot_dry_run():
    api = FakeApi()
    api.objects[("Namespace", None, "ns")] = {"kind": "Namespace", "metadata": {"name": "ns"}}
    api.unserved.add("Deployment")  # stands for a custom kind whose CRD is not served yet
    run = run_of(api, check_mode=True)
    run.apply([secret(), deployment(), dict(secret(), metadata={"name": "other", "namespace": "new"})], "ns")
    actions = [o["action"] for o in run.objects()]
    assert actions == ["would create", "would create (its API is not served yet)",
                       "would create (namespace new does not exist yet)"]
    assert api.applied[0][4] == "All"
    assert ("Secret", "ns", "creds") not in api.objects
    run.wait(timeout=5)  # nothing is waited for in check mode
    assert api.reads <= 3


def test_check_mode_with_an_existing_namespace_in_the_batch_changes_nothing():
    api = FakeApi()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}
    run_of(api).apply([namespace, secret()], "ns")
    dry = run_of(api, check_mode=True)
    dry.apply([namespace, secret()], "ns")
    assert [o["action"] for o in dry.objects()] == ["unchanged", "unchanged"] and not dry.changed


def test_wait_covers_all_objects_at_once_and_speeds_up_reads():
    api = FakeApi()
    run = run_of(api)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    run.apply([deployment("a", 1), deployment("b", 1), config_map], "ns")
    ready = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    api.progress[("Deployment", "ns", "a")] = [{}, ready]
    api.progress[("Deployment", "ns", "b")] = [{}, {}, ready]
    run.wait(timeout=60)
    assert run.sleeps == pytest.approx([0.1, 0.2, 0.3])  # b needs three reads; a is done after two


def test_wait_fails_at_once_on_a_failed_job_and_names_it():
    api = FakeApi()
    run = run_of(api)
    run.apply([job()], "ns")
    api.progress[("Job", "ns", "migrate-abc")] = [
        {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "1 failed"}]}]
    with pytest.raises(M.ManifestError, match="Job ns/migrate-abc failed: BackoffLimitExceeded"):
        run.wait(timeout=600)
    assert len(run.sleeps) == 1


def test_wait_times_out_with_what_is_missing():
    api = FakeApi()
    run = run_of(api)
    run.apply([deployment("slow", 3)], "ns")
    with pytest.raises(M.ManifestError,
                       match=r"timed out after 2 s waiting for Deployment ns/slow "
                             r"\(the controller has not seen generation 1"):
        run.wait(timeout=2)


def test_watch_waits_for_existing_objects_by_selector_or_name():
    api = FakeApi()
    run_of(api).apply([deployment("a", 1)], "ns")
    api.progress[("Deployment", "ns", "a")] = [
        {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}]
    run = run_of(api)
    run.watch([{"api_version": "apps/v1", "kind": "Deployment", "label_selectors": ["app=a"]}], "ns")
    run.wait(timeout=10, applied=False)
    assert len(run.sleeps) == 1
    with pytest.raises(M.ManifestError, match="does not exist"):
        run_of(api).watch([{"api_version": "apps/v1", "kind": "Deployment", "name": "nope"}], "ns")


def test_absent_deletes_only_what_exists_and_prune_keeps_what_was_applied():
    api = FakeApi()
    run_of(api).apply([job("migrate-old"), job("migrate-new"), deployment("flower")], "ns")
    run = run_of(api)
    run.apply([job("migrate-new")], "ns")
    run.delete([{"api_version": "apps/v1", "kind": "Deployment", "name": "flower"},
                {"api_version": "v1", "kind": "Service", "name": "flower"}], "ns")
    run.prune([{"api_version": "batch/v1", "kind": "Job",
                "label_selectors": ["app.kubernetes.io/component=migrate"]}], "ns")
    assert api.deleted == [("Deployment", "ns", "flower", "Background"), ("Job", "ns", "migrate-old", "Background")]
    assert [o["action"] for o in run.objects()] == ["unchanged", "deleted", "deleted"]
    assert run.changed


def test_an_api_error_about_a_secret_never_carries_its_body():
    api = FakeApi()
    api.fail_apply = Conflict()
    with pytest.raises(M.ManifestError) as err:
        run_of(api).apply([secret()], "ns")
    assert "s3cret" not in str(err.value) and "422" in str(err.value)
    with pytest.raises(M.ManifestError, match="s3cret"):  # other kinds keep the API's explanation
        run_of(api).apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}], "ns")


def test_diffs_list_changes_with_secret_values_hidden():
    api = FakeApi()
    run = run_of(api)
    run.apply([secret(), deployment()], "ns")
    diffs = run.diffs()
    assert len(diffs) == 2 and diffs[0]["after"]["data"] == {"password": M.HIDDEN}
    assert "s3cret" not in repr(diffs)


def test_a_manifest_without_a_name_is_refused():
    with pytest.raises(M.ManifestError, match="apiVersion, kind and metadata.name"):
        run_of(FakeApi()).apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}], "ns")
