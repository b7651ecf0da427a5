"""Unit tests of the shared input checks (plugins/module_utils/elastic/validation.py)
behind the filter resource_errors and the tests k8s_quantity, dns_label,
dns_subdomain, image_reference and pinned_image. The roles' use of them is
tested through the playbooks (tests/integration/bad_input)."""
import os
import sys
from decimal import Decimal

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic import validation as V  # noqa: E402


@pytest.mark.parametrize(("text", "value"), [
    ("250m", Decimal("0.25")), ("1", 1), (2, 2), (0.5, Decimal("0.5")), ("1.5", Decimal("1.5")),
    (".5", Decimal("0.5")), ("512Mi", 512 * 2 ** 20), ("2Gi", 2 * 2 ** 30), ("1k", 1000),
    ("1e3", 1000), ("1E-3", Decimal("0.001")), ("0", 0), ("100n", Decimal("1e-7")),
])
def test_quantities_have_the_api_servers_value(text, value):
    assert V.quantity_value(text) == Decimal(value)


@pytest.mark.parametrize("text", ["-1", "-256Mi", "2GB", "lots", "", "1 Gi", "Mi", "1.2.3", "1mi", True, None, [], -1])
def test_what_is_not_a_non_negative_quantity(text):
    assert V.quantity_value(text) is None
    assert not V.is_quantity(text)


def test_positive_refuses_zero():
    assert V.is_quantity("0Gi")
    assert not V.is_quantity("0Gi", positive=True)
    assert not V.is_quantity("0.0", positive=True)
    assert V.is_quantity("1Mi", positive=True)


def test_valid_resources_have_no_errors():
    assert V.resource_errors({
        "a": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "b": {}, "c": {"requests": None}, "d": {"limits": {"cpu": 2}},
    }) == []


def test_each_problem_names_the_variable_and_key():
    errors = V.resource_errors({
        "x_resources": {"requests": {"cpu": "-1", "memory": "2GB"}},
        "y_resources": {"request": {"cpu": 1}},
        "z_resources": ["cpu"],
        "w_resources": {"limits": "1Gi"},
    })
    assert errors == [
        "x_resources.requests.cpu must be a non-negative Kubernetes quantity such as 250m, 1 or 512Mi (got '-1').",
        "x_resources.requests.memory must be a non-negative Kubernetes quantity such as 250m, 1 or 512Mi (got '2GB').",
        "y_resources must be a mapping with only 'requests' and 'limits' (got 'request').",
        "z_resources must be a mapping with 'requests' and/or 'limits' (got ['cpu']).",
        "w_resources.limits must map resource names to quantities such as 250m, 1 or 512Mi (got '1Gi').",
    ]


def test_a_request_above_its_limit_is_refused():
    errors = V.resource_errors({"r": {"requests": {"memory": "2Gi", "cpu": "500m"},
                                      "limits": {"memory": "1024Mi", "cpu": 1}}})
    assert errors == ["r.requests.memory (2Gi) must not exceed r.limits.memory (1024Mi)."]
    # Equal is fine, and units are compared by value.
    assert V.resource_errors({"r": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1024Mi"}}}) == []


@pytest.mark.parametrize(("value", "label", "subdomain"), [
    ("airflow", True, True), ("a-1", True, True), ("my.secret", False, True), ("My_Secret", False, False),
    ("-a", False, False), ("a-", False, False), ("", False, False), ("a" * 63, True, True), ("a" * 64, False, True),
    ("a..b", False, False), (None, False, False), ("fast ssd", False, False),
])
def test_dns_names(value, label, subdomain):
    assert V.is_dns_label(value) is label
    assert V.is_dns_subdomain(value) is subdomain


@pytest.mark.parametrize(("image", "reference", "pinned"), [
    ("docker.io/library/postgres:16.9", True, True),
    ("registry.k8s.io/git-sync/git-sync:v4.4.0", True, True),
    ("localhost:5000/team/airflow:3.3.2", True, True),
    ("apache/airflow@sha256:" + "a" * 64, True, True),
    ("apache/airflow:3.3.2@sha256:" + "0" * 64, True, True),
    ("grafana/grafana", True, False),
    ("prom/prometheus:latest", True, False),
    ("localhost:5000/airflow", True, False),
    ("postgres 16", False, False),
    ("Apache/Airflow:3", False, False),
    ("apache/airflow:-latest", False, False),
    ("apache/airflow@sha256:abc", False, False),
    ("", False, False),
    (None, False, False),
])
def test_image_references(image, reference, pinned):
    assert (V.image_parts(image) is not None) is reference
    assert V.is_pinned_image(image) is pinned


@pytest.mark.parametrize(("text", "shown", "hidden"), [
    ("https://elastic:s3cr3tPW@es.example.com:9200", "https://<redacted>@es.example.com:9200", "s3cr3tPW"),
    ("https://ghp_T0KENvalue@github.com/org/repo.git", "https://<redacted>@github.com/org/repo.git", "ghp_T0KENvalue"),
    ("http://prom:9090/api?access_token=abc123XYZ&x=1", "http://prom:9090/api?access_token=<redacted>&x=1",
     "abc123XYZ"),
    ("s3://bucket/prefix?AWSAccessKeyId=AKIAxyz&Signature=sig123", "Signature=<redacted>", "sig123"),
    ("git@github.com:org/repo.git", "git@github.com:org/repo.git", None),
    ("not a url with password=hunter2 inside", "password=<redacted>", "hunter2"),
])
def test_redact_url_hides_credentials_and_keeps_the_rest(text, shown, hidden):
    out = V.redact_url(text)
    assert shown in out
    if hidden:
        assert hidden not in out


def _sc(name, default=False, beta=False):
    key = "storageclass.beta.kubernetes.io/is-default-class" if beta else "storageclass.kubernetes.io/is-default-class"
    return {"metadata": {"name": name, "annotations": {key: "true"} if default else {}}}


def test_storage_classes_fine_with_a_default_or_a_named_class():
    classes = [_sc("standard", default=True), _sc("nfs")]
    claims = [{"var": "broker_storage_class", "class": ""},
              {"var": "git_sync_pvc_storage_class", "class": "nfs", "access_modes": ["ReadWriteMany"]}]
    assert V.storage_class_errors(claims, classes) == []
    assert V.storage_class_errors([{"var": "a", "class": ""}], [_sc("gp2", default=True, beta=True)]) == []


def test_an_empty_class_without_a_default_class_names_the_variable():
    # EKS 1.30+: gp2 exists but is not the default.
    errors = V.storage_class_errors([{"var": "database_storage_class", "class": ""}], [_sc("gp2")])
    assert len(errors) == 1
    assert errors[0].startswith("database_storage_class is empty") and "has none" in errors[0] and "gp2" in errors[0]


def test_a_named_class_must_exist():
    errors = V.storage_class_errors([{"var": "broker_storage_class", "class": "fast"}], [_sc("standard", default=True)])
    assert errors == ["broker_storage_class: StorageClass 'fast' does not exist "
                      "(StorageClasses of this cluster: standard)."]


def test_read_write_many_needs_a_named_class():
    errors = V.storage_class_errors(
        [{"var": "git_sync_pvc_storage_class", "class": "", "access_modes": ["ReadWriteMany"]}],
        [_sc("standard", default=True)])
    assert len(errors) == 1
    assert errors[0].startswith("git_sync_pvc_storage_class is empty, but the claim asks for ReadWriteMany")
