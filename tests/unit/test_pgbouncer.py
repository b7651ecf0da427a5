"""PgBouncer in front of the metadata database (database_pgbouncer), checked on the rendered objects.

* The conftest variant `pgbouncer`: its Deployment, Service and PodDisruptionBudget; every Airflow
  container's SQLAlchemy URL and Celery result backend come from PgBouncer's Secret, but the
  migrate Job's, which stay the database's own (docs/architecture.md, PgBouncer). The Pod Security
  and NetworkPolicy checks of the variant are in test_pod_security_objects.py and
  test_network_policy_objects.py (its flows: every Airflow pod but migrate to PgBouncer, PgBouncer
  and migrate to the database).
* Rendered with a known password (this file's own render, Secrets included): the password is in
  the Secrets' userlist and URLs only, never in pgbouncer.ini, a ConfigMap, an env value or any
  other object; the URLs point at the right Service.
* An external PostgreSQL: what the filter pgbouncer_upstream reads from its URL, and the
  configuration rendered from it.

Whether PgBouncer and Airflow really work together is tests/integration/e2e_pods/test_pgbouncer.py
(`make test-pgbouncer`, the real node).
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import sys
import urllib.parse

import pytest

from conftest import LAYERS, VARIANTS, render

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "plugins", "module_utils"))

from elastic.pgbouncer import pgbouncer_upstream  # noqa: E402

POOLED, DIRECT = "airflow-database-pgbouncer", "airflow-database"
DB_ENV = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND")
PASSWORD = "Pw-0f/the:Test@x"  # characters a URL must escape
EXTERNAL = {"error": "", "host": "db.example.com", "port": 6543, "dbname": "meta", "user": "af",
            "password": PASSWORD, "sslmode": "require", "scheme": "postgresql+psycopg2", "result_backend": "as-is",
            "result_backend_url": "redis://:x@redis.example.com:6379/1", "resource_version": "4711"}


def _all(layers):
    return [o for objects in layers.values() for o in objects]


def _pod_templates(objects):
    """{kind/name: PodTemplateSpec} of every workload."""
    out = {}
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "Job", "ElasticWorker"):
            template = o["spec"]["template"] if o["kind"] != "ElasticWorker" else o["spec"]["template"]
            out[f"{o['kind']}/{o['metadata']['name']}"] = template
        elif o["kind"] == "CronJob":
            out[f"CronJob/{o['metadata']['name']}"] = o["spec"]["jobTemplate"]["spec"]["template"]
    return out


def _database_refs(template):
    """{container name: {env name: (secret, key)}} of the database URLs in every container of a pod."""
    spec = template["spec"]
    out = {}
    for c in spec.get("initContainers", []) + spec["containers"]:
        refs = {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                for e in c.get("env") or [] if e["name"] in DB_ENV}
        if refs:
            out[c["name"]] = refs
    return out


def _by_name(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


# -- the conftest variant ------------------------------------------------------------------

def test_every_airflow_container_but_migrates_connects_through_pgbouncer(rendered):
    templates = _pod_templates(_all(rendered["pgbouncer"]))
    seen = set()
    for name, template in templates.items():
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        for container, refs in _database_refs(template).items():
            seen.add(component)
            wanted = DIRECT if component == "migrate" else POOLED
            assert refs == {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (wanted, "url"),
                            "AIRFLOW__CELERY__RESULT_BACKEND": (wanted, "result-backend-url")}, (name, container)
    # Every Airflow pod, the ElasticWorker's worker template and the db-clean CronJob among them.
    assert seen == {"api-server", "scheduler", "dag-processor", "triggerer", "worker", "flower", "migrate",
                    "db-clean"}
    assert any(name.startswith("ElasticWorker/") for name in templates)


def test_without_pgbouncer_every_airflow_container_uses_the_database_secret(rendered):
    for variant in VARIANTS:
        if variant == "pgbouncer":
            continue
        secret = "db" if variant == "external-pvc-none-elasticsearch" else DIRECT
        objects = _all(rendered[variant])
        assert not [o for o in objects if "pgbouncer" in o["metadata"]["name"]], variant
        for name, template in _pod_templates(objects).items():
            for refs in _database_refs(template).values():
                assert {s for s, _key in refs.values()} == {secret}, (variant, name)


def test_the_deployment_service_and_budget(rendered):
    objects = rendered["pgbouncer"]["database"]
    deployment = _by_name(objects, "Deployment", "airflow-pgbouncer")
    service = _by_name(objects, "Service", "airflow-pgbouncer")
    budget = _by_name(objects, "PodDisruptionBudget", "airflow-pgbouncer")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "pgbouncer" and labels["tier"] == "pooler"  # the user's label
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}  # the component's scheduling
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert all(service["spec"]["selector"][k] == v for k, v in labels.items() if k in service["spec"]["selector"])
    assert service["spec"]["ports"] == [{"name": "pgbouncer", "port": 6432, "targetPort": "pgbouncer",
                                         "protocol": "TCP"}]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "docker.io/apache/airflow:airflow-pgbouncer-2025.03.05-1.23.1"
    assert container["command"] == ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
    assert container["ports"] == [{"name": "pgbouncer", "containerPort": 6432}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "pgbouncer"}
    assert "kill -INT 1" in container["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 65534
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["volumeMounts"] == [{"name": "config", "mountPath": "/etc/pgbouncer", "readOnly": True}]
    assert pod["spec"]["volumes"] == [{"name": "config", "secret": {"secretName": "airflow-pgbouncer",
                                                                    "defaultMode": 0o440}}]
    # Rolled by a new configuration: the checksum of pgbouncer.ini, no secret in it.
    assert len(pod["metadata"]["annotations"]["checksum/pgbouncer-config"]) == 64
    assert "env" not in container


def test_no_budget_for_the_default_variant(rendered):
    budgets = [o["metadata"]["name"] for o in _all(rendered["defaults"]) if o["kind"] == "PodDisruptionBudget"]
    assert "airflow-pgbouncer" not in budgets


# -- with a known password: Secrets rendered too --------------------------------------------

SECRET_LAYERS = dict(LAYERS, database=(
    "['secret.yaml.j2', 'service.yaml.j2', 'statefulset.yaml.j2', 'pgbouncer-secrets.yaml.j2', 'pgbouncer.yaml.j2']"
    " if database_engine != 'external' else ['pgbouncer-secrets.yaml.j2', 'pgbouncer.yaml.j2']",
    LAYERS["database"][1]))


@pytest.fixture(scope="module")
def with_secrets():
    """The pgbouncer variant (and two more) with the Secrets rendered from a known password."""
    base = dict(VARIANTS["pgbouncer"], database_password=PASSWORD, database_pgbouncer_password=PASSWORD)
    return render({
        "internal": base,
        "one-replica-old-pgbouncer": dict(base, database_pgbouncer_replicas=1,
                                          database_pgbouncer_max_prepared_statements=0,
                                          database_pgbouncer_pool_size=7, database_pgbouncer_max_client_conn=70),
        "external": dict(base, database_engine="external", database_external_secret="db",
                         database_pgbouncer_external=EXTERNAL,
                         database_pgbouncer_external_result_backend_url=EXTERNAL["result_backend_url"]),
    }, SECRET_LAYERS)


def _secret(objects, name):
    return {k: base64.b64decode(v).decode() for k, v in _by_name(objects, "Secret", name)["data"].items()}


def _ini(text):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_the_password_is_in_the_secrets_only(with_secrets):
    for variant, layers in with_secrets.items():
        objects = _all(layers)
        others = [o for o in objects if o["kind"] != "Secret"]
        assert others and PASSWORD not in json.dumps(others), variant
        assert urllib.parse.quote(PASSWORD, safe="") not in json.dumps(others), variant
        for o in objects:  # never in a ConfigMap, an env value or an annotation
            if o["kind"] == "ConfigMap":
                assert PASSWORD not in json.dumps(o["data"]), o["metadata"]["name"]
        config = _secret(objects, "airflow-pgbouncer")
        assert PASSWORD not in config["pgbouncer.ini"]
        user = "af" if variant == "external" else "airflow"
        assert config["userlist.txt"] == f'"{user}" "{PASSWORD}"\n'


def test_pgbouncer_ini(with_secrets):
    ini = _ini(_secret(_all(with_secrets["internal"]), "airflow-pgbouncer")["pgbouncer.ini"])
    assert dict(ini["databases"]) == {
        "airflow": "host=airflow-database.airflow.svc.cluster.local port=5432 dbname=airflow"}
    settings = dict(ini["pgbouncer"])
    assert settings == {
        "listen_addr": "*", "listen_port": "6432", "unix_socket_dir": "", "auth_type": "scram-sha-256",
        "auth_file": "/etc/pgbouncer/userlist.txt", "stats_users": "airflow", "pool_mode": "transaction",
        "default_pool_size": "20", "max_client_conn": "500", "max_prepared_statements": "200",
        "ignore_startup_parameters": "extra_float_digits", "server_tls_sslmode": "prefer",
        "log_connections": "0", "log_disconnections": "0"}
    old = dict(_ini(_secret(_all(with_secrets["one-replica-old-pgbouncer"]), "airflow-pgbouncer")["pgbouncer.ini"])
               ["pgbouncer"])
    assert "max_prepared_statements" not in old  # 0: left out, for PgBouncer before 1.21
    assert (old["default_pool_size"], old["max_client_conn"]) == ("7", "70")


def test_one_replica_has_no_budget(with_secrets):
    objects = _all(with_secrets["one-replica-old-pgbouncer"])
    assert _by_name(objects, "Deployment", "airflow-pgbouncer")["spec"]["replicas"] == 1
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget" and "pgbouncer" in o["metadata"]["name"]]


def test_the_urls_point_at_pgbouncer_and_the_database(with_secrets):
    objects = _all(with_secrets["internal"])
    pooled, direct = _secret(objects, POOLED), _secret(objects, DIRECT)
    for key, scheme in (("url", "postgresql+psycopg2"), ("result-backend-url", "db+postgresql")):
        via, to = urllib.parse.urlsplit(pooled[key]), urllib.parse.urlsplit(direct[key])
        assert (via.scheme, via.hostname, via.port, via.path) == (
            scheme, "airflow-pgbouncer.airflow.svc.cluster.local", 6432, "/airflow"), key
        assert (to.scheme, to.hostname, to.port, to.path) == (
            scheme, "airflow-database.airflow.svc.cluster.local", 5432, "/airflow"), key
        assert via.username == to.username == "airflow"
        assert urllib.parse.unquote(via.password) == urllib.parse.unquote(to.password) == PASSWORD


def test_an_external_database(with_secrets):
    objects = _all(with_secrets["external"])
    ini = _ini(_secret(objects, "airflow-pgbouncer")["pgbouncer.ini"])
    assert dict(ini["databases"]) == {"meta": "host=db.example.com port=6543 dbname=meta"}
    assert ini["pgbouncer"]["server_tls_sslmode"] == "require"
    assert ini["pgbouncer"]["stats_users"] == "af"
    urls = _secret(objects, POOLED)
    url = urllib.parse.urlsplit(urls["url"])
    assert (url.scheme, url.hostname, url.port, url.path, url.username) == (
        "postgresql+psycopg2", "airflow-pgbouncer.airflow.svc.cluster.local", 6432, "/meta", "af")
    assert url.query == ""  # sslmode is PgBouncer's to the server; Airflow to PgBouncer has no TLS
    # A result backend elsewhere (Redis here) is kept as the user gave it.
    assert urls["result-backend-url"] == EXTERNAL["result_backend_url"]
    assert not [o for o in with_secrets["external"]["database"] if o["kind"] == "StatefulSet"]
    # The external Secret's version rolls the pods when the password changes there.
    pods = {json.dumps(_by_name(_all(v), "Deployment", "airflow-pgbouncer")["spec"]["template"]["metadata"]
                       ["annotations"]) for v in with_secrets.values()}
    assert len(pods) == 3
    # The flows: PgBouncer and the migrate Job to the external database's peers (any address here).
    egress = _by_name(objects, "NetworkPolicy", "airflow-database-egress")
    components = egress["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(components) == ["migrate", "pgbouncer"]


# -- the filter pgbouncer_upstream ----------------------------------------------------------

def test_the_filter_reads_an_external_url():
    got = pgbouncer_upstream("postgresql+psycopg2://af:p%40ss%2Fw@DB.example.com:6543/meta?sslmode=require",
                             "db+postgresql://af:p%40ss%2Fw@db.example.com:6543/meta")
    assert got == {"error": "", "host": "db.example.com", "port": 6543, "dbname": "meta", "user": "af",
                   "password": "p@ss/w", "sslmode": "require", "scheme": "postgresql+psycopg2",
                   "result_backend": "pgbouncer"}
    assert pgbouncer_upstream("postgresql://af:pw@db/meta")["port"] == 5432
    assert pgbouncer_upstream("postgresql://af:pw@db/meta")["sslmode"] == "prefer"


@pytest.mark.parametrize("backend", [
    "", "redis://:pw@redis:6379/0", "db+postgresql://af:pw@other:5432/meta", "db+postgresql://af:pw@db:5433/meta",
    "db+postgresql://af:pw@db/other", "db+postgresql://someone:pw@db/meta", "db+mysql://af:pw@db/meta"])
def test_a_result_backend_elsewhere_is_kept_as_is(backend):
    assert pgbouncer_upstream("postgresql://af:pw@db/meta", backend)["result_backend"] == "as-is"


@pytest.mark.parametrize(("url", "expect"), [
    ("mysql+mysqldb://af:s3cret@db/meta", "PgBouncer serves PostgreSQL only, and its url is a 'mysql+mysqldb' URL"),
    ("not a url", "its url is not a URL"),
    ("", "its url is not a URL"),
    ("postgresql://af@db/meta", "no a password"),
    ("postgresql://:s3cret@db/meta", "no a user"),
    ("postgresql://af:s3cret@db/", "no a database name"),
    ("postgresql://af:s3cret@db:99999/meta", "its url is not a URL"),
    ("postgresql://af:s3cret@db/me%20ta", "the database name of its url may hold only"),
    ("postgresql://af:s3cret@db/meta?sslmode=verify-full", "sslmode must be one of disable, allow, prefer, require"),
])
def test_the_filter_says_what_is_wrong_without_the_secret(url, expect):
    got = pgbouncer_upstream(url)
    assert expect in got["error"]
    assert "s3cret" not in got["error"] and "af" not in got["error"].replace("after", "")
