"""Unit tests of the pod settings (plugins/module_utils/elastic/pod_settings.py) behind the filters
with_pod_settings, pod_settings_errors and pod_extension_errors. How the roles render them is
tested on the rendered objects (test_pod_settings_objects.py); their validate tasks through the
playbooks (tests/integration/bad_input)."""
import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import pod_settings as P  # noqa: E402

COMPONENTS = ["worker", "database", "scheduler"]

TEMPLATE = {
    "metadata": {"labels": {"app.kubernetes.io/component": "worker"}, "annotations": {"checksum/x": "1"}},
    "spec": {
        "securityContext": {"runAsUser": 50000, "runAsGroup": 0, "fsGroup": 0, "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [{"name": "init", "securityContext": {"runAsUser": 65533, "allowPrivilegeEscalation": False,
                                                                "capabilities": {"drop": ["ALL"]}}}],
        "containers": [{"name": "worker", "securityContext": {"allowPrivilegeEscalation": False,
                                                              "capabilities": {"drop": ["ALL"]}}}],
    },
}


def test_no_settings_change_nothing():
    assert P.with_pod_settings(TEMPLATE, "worker", {}) == TEMPLATE


def test_the_template_is_not_changed_in_place():
    before = repr(TEMPLATE)
    P.with_pod_settings(TEMPLATE, "worker", {"elastic_airflow_security_context_mode": "platform",
                                             "elastic_airflow_pod_labels": {"team": "data"}})
    assert repr(TEMPLATE) == before


def test_scheduling_field_by_field_the_component_wins():
    settings = {"elastic_airflow_scheduling": {"nodeSelector": {"pool": "all"}, "priorityClassName": "low"},
                "elastic_airflow_component_scheduling": {"worker": {"nodeSelector": {"pool": "workers"}}}}
    worker = P.with_pod_settings(TEMPLATE, "worker", settings)["spec"]
    database = P.with_pod_settings(TEMPLATE, "database", settings)["spec"]
    assert (worker["nodeSelector"], worker["priorityClassName"]) == ({"pool": "workers"}, "low")
    assert (database["nodeSelector"], database["priorityClassName"]) == ({"pool": "all"}, "low")


def test_labels_and_annotations_the_component_replaces_the_global_and_the_collection_wins():
    settings = {"elastic_airflow_pod_labels": {"team": "data", "tier": "all"},
                "elastic_airflow_component_pod_labels": {"worker": {"tier": "workers"}},
                "elastic_airflow_pod_annotations": {"checksum/x": "mine", "a": "b"}}
    worker = P.with_pod_settings(TEMPLATE, "worker", settings)["metadata"]
    database = P.with_pod_settings(TEMPLATE, "database", settings)["metadata"]
    assert worker["labels"] == {"tier": "workers", "app.kubernetes.io/component": "worker"}
    assert database["labels"] == {"team": "data", "tier": "all", "app.kubernetes.io/component": "worker"}
    assert worker["annotations"] == {"checksum/x": "1", "a": "b"}


def test_an_empty_component_entry_clears_the_global_one():
    settings = {"elastic_airflow_pod_labels": {"team": "data"},
                "elastic_airflow_component_pod_labels": {"worker": {}}}
    assert P.with_pod_settings(TEMPLATE, "worker", settings)["metadata"]["labels"] == {
        "app.kubernetes.io/component": "worker"}


def test_platform_mode_leaves_the_ids_to_the_platform_and_keeps_the_rest():
    pod = P.with_pod_settings(TEMPLATE, "worker", {"elastic_airflow_security_context_mode": "platform"})["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["initContainers"][0]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                           "capabilities": {"drop": ["ALL"]}}
    assert pod["containers"][0]["securityContext"] == TEMPLATE["spec"]["containers"][0]["securityContext"]


def test_security_context_overrides_merge_recursively_and_the_component_replaces_the_global():
    settings = {"elastic_airflow_security_context_mode": "platform",
                "elastic_airflow_pod_security_context": {"runAsUser": 1001, "supplementalGroups": [5]},
                "elastic_airflow_component_pod_security_context": {"database": {"fsGroup": 70}},
                "elastic_airflow_container_security_context": {"capabilities": {"add": ["NET_BIND_SERVICE"]},
                                                               "readOnlyRootFilesystem": True}}
    worker = P.with_pod_settings(TEMPLATE, "worker", settings)["spec"]
    database = P.with_pod_settings(TEMPLATE, "database", settings)["spec"]
    assert worker["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                         "runAsUser": 1001, "supplementalGroups": [5]}
    assert database["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                           "fsGroup": 70}
    for container in worker["initContainers"] + worker["containers"]:
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}


# -- pod_settings_errors ---------------------------------------------------------------------

def _errors(restricted=True, **settings):
    return P.pod_settings_errors(settings, COMPONENTS, restricted)


def test_good_settings_have_no_errors():
    assert _errors(
        elastic_airflow_security_context_mode="platform",
        elastic_airflow_scheduling={"nodeSelector": {"pool": "a"}, "tolerations": [{"key": "k", "operator": "Exists"}],
                                    "affinity": {}, "topologySpreadConstraints": [], "priorityClassName": "high"},
        elastic_airflow_component_scheduling={"worker": {"nodeSelector": {"pool": "w"}}},
        elastic_airflow_pod_labels={"team": "data", "example.com/cost-center": "cc-1", "empty": ""},
        elastic_airflow_component_pod_labels={"worker": {"tier": "workers"}},
        elastic_airflow_pod_annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        elastic_airflow_pod_security_context={"runAsUser": 1001, "supplementalGroups": [5]},
        elastic_airflow_component_container_security_context={"database": {"readOnlyRootFilesystem": True}},
    ) == []


@pytest.mark.parametrize(("settings", "expected"), [
    ({"elastic_airflow_security_context_mode": "openshift"},
     "elastic_airflow_security_context_mode must be one of fixed, platform (got 'openshift')."),
    ({"elastic_airflow_scheduling": {"nodeselector": {}}},
     "elastic_airflow_scheduling takes only the pod spec fields"),
    ({"elastic_airflow_component_scheduling": {"workers": {}}},
     "elastic_airflow_component_scheduling is keyed by component, one of worker, database, scheduler "
     "(unknown: workers)."),
    ({"elastic_airflow_scheduling": {"nodeSelector": {"gpu": True}}},
     "elastic_airflow_scheduling.nodeSelector must map label keys to strings"),
    ({"elastic_airflow_component_scheduling": {"worker": {"tolerations": {"key": "k"}}}},
     "elastic_airflow_component_scheduling['worker'].tolerations must be a list of mappings"),
    ({"elastic_airflow_scheduling": {"priorityClassName": "High"}},
     "elastic_airflow_scheduling.priorityClassName must name a PriorityClass"),
    ({"elastic_airflow_pod_labels": {"app.kubernetes.io/instance": "other"}},
     "elastic_airflow_pod_labels: 'app.kubernetes.io/instance' is the collection's own label"),
    ({"elastic_airflow_component_pod_labels": {"worker": {"app.kubernetes.io/component": "x"}}},
     "elastic_airflow_component_pod_labels['worker']: 'app.kubernetes.io/component' is the collection's own label"),
    ({"elastic_airflow_pod_labels": {"elastic-airflow.io/elastic-worker": "x"}},
     "elastic_airflow_pod_labels: 'elastic-airflow.io/elastic-worker' is the collection's own label"),
    ({"elastic_airflow_pod_labels": {"team": "data team"}},
     "elastic_airflow_pod_labels: the value of 'team' is no label value"),
    ({"elastic_airflow_pod_labels": {"team": "x" * 64}},
     "elastic_airflow_pod_labels: the value of 'team' is no label value"),
    ({"elastic_airflow_pod_labels": {"version": 2}},
     "elastic_airflow_pod_labels: the value of 'version' must be a string (quote it; got 2)."),
    ({"elastic_airflow_pod_labels": {"-team": "a"}},
     "elastic_airflow_pod_labels: key '-team' is no qualified name"),
    ({"elastic_airflow_pod_labels": {"Example.com/team": "a"}},
     "elastic_airflow_pod_labels: key 'Example.com/team' is no qualified name"),
    ({"elastic_airflow_pod_labels": ["team"]}, "elastic_airflow_pod_labels must be a mapping of labels"),
    ({"elastic_airflow_pod_annotations": {"checksum/airflow-env": "x"}},
     "elastic_airflow_pod_annotations: 'checksum/airflow-env' is the collection's own annotation"),
    ({"elastic_airflow_component_pod_annotations": {"worker": {"a": True}}},
     "elastic_airflow_component_pod_annotations['worker']: the value of 'a' must be a string"),
    ({"elastic_airflow_pod_security_context": {"runAsUser": 0}},
     "elastic_airflow_pod_security_context: the namespace enforces the Pod Security Standard 'restricted' "
     "(namespace_pod_security_enforce), which refuses runAsUser 0"),
    ({"elastic_airflow_component_container_security_context": {"worker": {"privileged": True,
                                                                          "allowPrivilegeEscalation": True}}},
     "elastic_airflow_component_container_security_context['worker']: the namespace enforces the Pod Security "
     "Standard 'restricted' (namespace_pod_security_enforce), which refuses privileged, allowPrivilegeEscalation true"),
    ({"elastic_airflow_container_security_context": {"capabilities": {"add": ["SYS_ADMIN"]}}},
     "which refuses capabilities.add other than NET_BIND_SERVICE"),
    ({"elastic_airflow_container_security_context": {"runAsUsr": 5}},
     "elastic_airflow_container_security_context takes only the securityContext fields"),
    ({"elastic_airflow_pod_security_context": {"fsGroup": "root"}},
     "elastic_airflow_pod_security_context.fsGroup must be a number, 0 or more (got 'root')."),
])
def test_each_problem_names_its_variable(settings, expected):
    errors = _errors(**settings)
    assert any(expected in e for e in errors), errors


def test_without_restricted_a_root_context_is_allowed():
    assert _errors(restricted=False, elastic_airflow_pod_security_context={"runAsUser": 0, "runAsNonRoot": False}) == []


# -- pod_extension_errors --------------------------------------------------------------------

def _ext_errors(restricted=True, **extensions):
    return P.pod_extension_errors(extensions, ["logs", "dags"], ["worker", "git-sync"], restricted)


def test_good_extensions_have_no_errors():
    assert _ext_errors(
        airflow_worker_extra_env=[{"name": "A", "value": "1"},
                                  {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        airflow_worker_extra_env_from=[{"secretRef": {"name": "s"}}, {"configMapRef": {"name": "c"}, "prefix": "X_"}],
        airflow_worker_extra_volumes=[{"name": "ca", "configMap": {"name": "ca"}}],
        airflow_worker_extra_volume_mounts=[{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
        airflow_worker_extra_containers=[{"name": "proxy", "image": "envoyproxy/envoy:v1.31.0"}],
        airflow_worker_extra_init_containers=[{"name": "prep", "image": "busybox:1.36",
                                               "securityContext": {"readOnlyRootFilesystem": True}}],
    ) == []


@pytest.mark.parametrize(("extensions", "expected"), [
    ({"airflow_worker_extra_env": {"A": "1"}},
     "airflow_worker_extra_env must be a list of mappings, as in a pod spec (got a dict)."),
    ({"airflow_worker_extra_env": [{"name": "1A", "value": "x"}]},
     "airflow_worker_extra_env[0].name must be an environment variable name"),
    ({"airflow_worker_extra_env": [{"name": "A", "value": 1}]},
     "airflow_worker_extra_env[0].value must be a string (quote it; got 1)."),
    ({"airflow_scheduler_extra_env": [{"name": "A", "value": "1", "valueFrom": {}}]},
     "airflow_scheduler_extra_env[0] must have value or valueFrom, not both."),
    ({"airflow_worker_extra_env_from": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]},
     "airflow_worker_extra_env_from[0] must be {configMapRef: {name: <ConfigMap>}} or {secretRef: {name: <Secret>}}"),
    ({"airflow_worker_extra_volumes": [{"name": "host", "hostPath": {"path": "/srv"}}]},
     "airflow_worker_extra_volumes[0]: the namespace enforces the Pod Security Standard 'restricted'"),
    ({"airflow_worker_extra_volumes": [{"name": "logs", "emptyDir": {}}]},
     "airflow_worker_extra_volumes[0].name 'logs' is taken by one of the collection's own volumes"),
    ({"airflow_worker_extra_volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]},
     "airflow_worker_extra_volumes: the names must be unique (a appear more than once)."),
    ({"airflow_worker_extra_volumes": [{"name": "a"}]},
     "airflow_worker_extra_volumes[0] must have a name and one volume source (got none)."),
    ({"airflow_worker_extra_volume_mounts": [{"name": "results", "mountPath": "/results"}]},
     "airflow_worker_extra_volume_mounts[0].name must be the name of one of airflow_worker_extra_volumes"),
    ({"airflow_worker_extra_volumes": [{"name": "a", "emptyDir": {}}],
      "airflow_worker_extra_volume_mounts": [{"name": "a", "mountPath": "relative"}]},
     "airflow_worker_extra_volume_mounts[0].mountPath must be an absolute path"),
    ({"airflow_worker_extra_containers": [{"name": "git-sync", "image": "x:1"}]},
     "airflow_worker_extra_containers[0].name 'git-sync' is taken by one of the collection's own containers"),
    ({"airflow_worker_extra_containers": [{"name": "proxy"}]},
     "airflow_worker_extra_containers[0].image must be an image reference"),
    ({"airflow_worker_extra_init_containers": [{"name": "p", "image": "x:1",
                                                "securityContext": {"runAsNonRoot": False}}]},
     "airflow_worker_extra_init_containers[0].securityContext: the namespace enforces the Pod Security Standard"),
    ({"airflow_worker_extra_containers": [{"name": "p", "image": "x:1"}],
      "airflow_worker_extra_init_containers": [{"name": "p", "image": "x:1"}]},
     "need distinct names (p appear in both)"),
])
def test_each_extension_problem_names_its_variable(extensions, expected):
    errors = _ext_errors(**extensions)
    assert any(expected in e for e in errors), errors


def test_an_environment_value_is_never_printed():
    errors = _ext_errors(airflow_worker_extra_env={"TOKEN": "s3cr3t"},
                         airflow_flower_extra_env=[{"name": "TOKEN", "value": "s3cr3t", "valueFrom": {}}])
    assert errors and not any("s3cr3t" in e for e in errors), errors


def test_without_restricted_any_volume_source():
    assert _ext_errors(restricted=False, airflow_worker_extra_volumes=[{"name": "h", "hostPath": {"path": "/"}}]) == []
