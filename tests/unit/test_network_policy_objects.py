"""NetworkPolicies, checked on the rendered objects (not enforced: no packet is sent).

The local cluster's bridge CNI enforces no NetworkPolicy, so the policies are
checked here by a small model of their semantics (Cluster.allowed, written
from the NetworkPolicy API: a pod selected by a policy of a type is isolated
for that direction; a connection needs the sender's egress and the receiver's
ingress; empty `from`/`to` or `ports` match everything; podSelector alone is
the policy's namespace; ipBlock is matched against pod addresses too, the
stricter reading). The pods are those of the rendered workloads, with their
real labels and named ports, plus a few endpoints around them: the cluster
DNS, the API server (an address, not a pod), the internet, a pod of another
Airflow cluster in the same namespace and one in another namespace.

For each variant of conftest.VARIANTS, every flow the components need is
allowed and flows nobody needs are denied. Whether a network plugin enforces
the policies the same way is not tested here.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress

import pytest

from conftest import VARIANTS

NAMESPACE = "airflow"


@dataclasses.dataclass
class Endpoint:
    ip: str
    namespace: str | None = None  # None: an address, not a pod
    labels: dict = dataclasses.field(default_factory=dict)
    ports: list = dataclasses.field(default_factory=list)  # the containers' ports (named ports resolve here)


def selects(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector; an empty one selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


class Cluster:
    def __init__(self, endpoints: dict[str, Endpoint], policies: list[dict]):
        self.endpoints, self.policies = endpoints, policies

    def allowed(self, src: str, dst: str, port: int, protocol: str = "TCP") -> bool:
        s, d = self.endpoints[src], self.endpoints[dst]
        return self._permits(s, d, d, port, protocol, "Egress") and self._permits(d, s, d, port, protocol, "Ingress")

    def _permits(self, pod, peer, destination, port, protocol, direction) -> bool:
        if pod.namespace is None:
            return True  # no policy applies to an address
        applying = [p for p in self.policies if p["metadata"]["namespace"] == pod.namespace
                    and selects(p["spec"]["podSelector"], pod.labels) and direction in policy_types(p)]
        if not applying:
            return True  # not isolated in this direction
        rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        return any(self._peer_matches(rule.get(peers_key), peer, p["metadata"]["namespace"])
                   and ports_match(rule.get("ports"), port, protocol, destination)
                   for p in applying for rule in p["spec"].get(rules_key) or [])

    @staticmethod
    def _peer_matches(peers, endpoint, policy_namespace) -> bool:
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                ip = ipaddress.ip_address(endpoint.ip)
                if ip in ipaddress.ip_network(peer["ipBlock"]["cidr"]) and not any(
                        ip in ipaddress.ip_network(e) for e in peer["ipBlock"].get("except") or []):
                    return True
                continue
            if endpoint.namespace is None:
                continue  # selectors select pods only
            if "namespaceSelector" in peer:
                ns_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": endpoint.namespace})
            else:
                ns_ok = endpoint.namespace == policy_namespace
            if ns_ok and ("podSelector" not in peer or selects(peer["podSelector"], endpoint.labels)):
                return True
        return False


def policy_types(policy: dict) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def ports_match(ports, port, protocol, destination) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        wanted = p["port"]
        if isinstance(wanted, str):  # a named port of the destination pod
            wanted = next((c["containerPort"] for c in destination.ports
                           if c.get("name") == wanted and c.get("protocol", "TCP") == protocol), None)
        if wanted is not None and (wanted == port or wanted <= port <= p.get("endPort", wanted)):
            return True
    return False


# -- the model itself ------------------------------------------------------------------

def _np(selector, types, ingress=None, egress=None, namespace="ns"):
    spec = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"metadata": {"namespace": namespace}, "spec": spec}


def test_the_model_follows_the_networkpolicy_semantics():
    endpoints = {"a": Endpoint("10.1.0.1", "ns", {"app": "a"}, [{"name": "http", "containerPort": 80}]),
                 "b": Endpoint("10.1.0.2", "ns", {"app": "b"}, [{"name": "http", "containerPort": 8080}]),
                 "c": Endpoint("10.1.0.3", "other", {"app": "b"}),
                 "out": Endpoint("192.0.2.1")}
    assert Cluster(endpoints, []).allowed("a", "b", 1)  # nothing isolated
    deny = _np({}, ["Ingress", "Egress"])
    assert not Cluster(endpoints, [deny]).allowed("a", "b", 80)
    assert Cluster(endpoints, [deny]).allowed("out", "c", 80)  # c's namespace has no policy
    to_b = {"to": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "http"}]}
    allow = [deny, _np({"matchLabels": {"app": "a"}}, ["Egress"], egress=[to_b]),
             _np({"matchLabels": {"app": "b"}}, ["Ingress"], ingress=[{"from": [{"podSelector": {}}]}])]
    assert Cluster(endpoints, allow).allowed("a", "b", 8080)  # b's named port
    assert not Cluster(endpoints, allow).allowed("a", "b", 80)
    assert not Cluster(endpoints, allow).allowed("b", "a", 80)  # b may not send, a may not receive
    assert not Cluster(endpoints, allow).allowed("a", "c", 8080)  # a podSelector alone: the policy's namespace
    anywhere = [deny, _np({}, ["Egress"], egress=[{"ports": [{"port": 443}]}])]
    assert Cluster(endpoints, anywhere).allowed("a", "out", 443)
    assert not Cluster(endpoints, anywhere).allowed("a", "out", 444)
    assert not Cluster(endpoints, anywhere).allowed("a", "out", 443, "UDP")
    but_out = {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.1/32"]}}
    block = [deny, _np({}, ["Egress"], egress=[{"to": [but_out]}])]
    assert not Cluster(endpoints, block).allowed("a", "out", 443)
    other = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}
    ns = [_np({}, ["Ingress"], ingress=[{"from": [other]}], namespace="ns")]
    assert Cluster(endpoints, ns).allowed("c", "a", 1)
    assert not Cluster(endpoints, ns).allowed("b", "a", 1)


# -- the cluster of a variant ----------------------------------------------------------

def cluster_of(objects: list[dict]) -> Cluster:
    """Our pods (one per component, from the rendered pod templates) and the endpoints around them."""
    endpoints = {}
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job", "CronJob", "ElasticWorker"):
            continue
        spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
        template = spec["template"]
        labels = template["metadata"]["labels"]
        ports = [p for c in template["spec"]["containers"] for p in c.get("ports") or []]
        ip = f"198.18.0.{len(endpoints) + 10}"
        endpoints[labels["app.kubernetes.io/component"]] = Endpoint(ip, obj["metadata"]["namespace"], labels, ports)
    scheduler = endpoints["scheduler"]
    endpoints.update({
        # another Airflow cluster in this namespace, and this one's labels in another namespace
        "other-instance": Endpoint("198.18.0.100", NAMESPACE,
                                   dict(scheduler.labels, **{"app.kubernetes.io/instance": "other"})),
        "elsewhere": Endpoint("198.18.0.101", "elsewhere", copy.deepcopy(scheduler.labels)),
        "kube-dns": Endpoint("198.18.0.102", "kube-system", {"k8s-app": "kube-dns"}),
        "ingress-nginx": Endpoint("198.18.0.103", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
        "monitoring-pod": Endpoint("198.18.0.104", "monitoring", {"app": "prometheus"}),
        "kube-apiserver": Endpoint("198.18.0.1"),  # the local cluster's: an address of the node, not a pod
        "internet": Endpoint("203.0.113.10"),
        "elsewhere-address": Endpoint("198.51.100.7"),
        "external-database": Endpoint("10.0.5.10"),
        "another-address": Endpoint("10.0.5.99"),
    })
    return Cluster(endpoints, [o for o in objects if o["kind"] == "NetworkPolicy"])


@pytest.fixture(scope="module")
def clusters(rendered):
    return {variant: cluster_of([o for objects in layers.values() for o in objects])
            for variant, layers in rendered.items()}


AIRFLOW = ["api-server", "scheduler", "dag-processor", "triggerer", "worker", "flower", "migrate"]
STATSD_SENDERS = ["api-server", "scheduler", "dag-processor", "triggerer", "worker"]
RESOLVERS = AIRFLOW + ["prometheus", "grafana", "metrics-adapter", "elastic-worker-controller"]
API_CALLERS = ["prometheus", "kube-state-metrics", "metrics-adapter", "elastic-worker-controller"]

# (from, to, port[, protocol]): what the components need in the default settings.
NEEDED = (
    [(c, "database", 5432) for c in AIRFLOW + ["elastic-worker-controller"]]  # its: the Celery result backend
    + [(c, "broker", 6379) for c in ["scheduler", "worker", "flower", "elastic-worker-controller"]]
    + [(c, "api-server", 8080) for c in ["worker", "triggerer", "dag-processor"]]  # Airflow 3's execution API
    + [("api-server", "worker", 8793), ("api-server", "triggerer", 8794)]  # task and trigger logs
    + [(c, "statsd-exporter", 9125, "UDP") for c in STATSD_SENDERS]
    + [("prometheus", "statsd-exporter", 9102), ("prometheus", "kube-state-metrics", 8080)]
    + [(c, "prometheus", 9090) for c in ["grafana", "metrics-adapter", "elastic-worker-controller"]]
    + [("internet", "api-server", 8080), ("internet", "flower", 5555), ("internet", "grafana", 3000)]
    + [("kube-apiserver", "metrics-adapter", 6443)]
    + [(c, "kube-apiserver", 6443) for c in API_CALLERS + ["worker", "triggerer"]]  # + KubernetesPodOperator
    + [(c, "kube-dns", 53, proto) for c in RESOLVERS for proto in ("UDP", "TCP")]
)

# What nobody needs, in the default settings.
DENIED = [
    ("worker", "grafana", 3000), ("worker", "prometheus", 9090), ("worker", "worker", 8793),
    ("flower", "api-server", 8080), ("scheduler", "api-server", 8080), ("dag-processor", "worker", 8793),
    ("api-server", "broker", 6379), ("migrate", "broker", 6379), ("dag-processor", "broker", 6379),
    ("grafana", "database", 5432), ("prometheus", "database", 5432),
    ("worker", "database", 3306),
    ("other-instance", "database", 5432), ("other-instance", "broker", 6379), ("elsewhere", "database", 5432),
    ("internet", "database", 5432), ("internet", "broker", 6379), ("internet", "prometheus", 9090),
    ("internet", "statsd-exporter", 9125, "UDP"), ("internet", "worker", 8793),
    ("database", "broker", 6379), ("database", "internet", 443), ("broker", "internet", 443),
    ("statsd-exporter", "database", 5432), ("statsd-exporter", "internet", 443),
    ("statsd-exporter", "kube-dns", 53, "UDP"),
    ("kube-state-metrics", "kube-dns", 53, "UDP"), ("database", "kube-dns", 53, "UDP"),
    # Not ("worker", "internet", 443): the Kubernetes API's address is any by default (README, Isolation).
    ("worker", "internet", 80), ("scheduler", "internet", 443),
    ("scheduler", "kube-apiserver", 6443), ("api-server", "kube-apiserver", 6443),
    ("grafana", "internet", 443), ("prometheus", "internet", 80),
]

# Per variant: (needed, denied) besides, or instead of, the default ones.
CHANGES = {
    "mysql-rabbitmq-git-ssh-hpa-s3": (
        [(c, "database", 3306) for c in AIRFLOW if c != "flower"]
        + [(c, "broker", 5672) for c in ["scheduler", "worker", "elastic-worker-controller"]]
        + [(c, "internet", 22) for c in ["dag-processor", "triggerer", "worker"]]  # git over SSH
        + [(c, "internet", 443) for c in ["api-server", "dag-processor", "triggerer", "worker"]],  # S3 logs
        [("worker", "database", 5432), ("worker", "broker", 6379), ("api-server", "internet", 22),
         ("scheduler", "internet", 22), ("scheduler", "internet", 443), ("migrate", "internet", 443)]),
    "external-pvc-none-elasticsearch": (
        [(c, "external-database", 5432) for c in AIRFLOW]
        + [(c, "internet", 5672) for c in ["scheduler", "worker", "flower", "elastic-worker-controller"]]
        # Elasticsearch (direct): written by what writes task logs, read by the api-server
        + [(c, "internet", 9243) for c in ["api-server", "dag-processor", "triggerer", "worker"]]
        + [("metrics-adapter", "internet", 9090)],
        [("worker", "another-address", 5432), ("grafana", "external-database", 5432),
         ("api-server", "internet", 5672), ("scheduler", "internet", 9243), ("flower", "internet", 9243),
         ("worker", "internet", 22)]),
    "elasticsearch-stdout-shipper": (
        [("api-server", "internet", 9200)],  # it only reads: the user's shipper writes
        [(c, "internet", 9200) for c in ["worker", "triggerer", "dag-processor", "scheduler"]]),
    "git-https-prometheus-allow-lists": (
        [(c, "internet", 8443) for c in ["dag-processor", "triggerer", "worker"]]  # git over HTTPS, the URL's port
        + [("worker", "internet", 443),  # the user's flow tasks-https, 203.0.113.0/24
           ("ingress-nginx", "api-server", 8080), ("ingress-nginx", "grafana", 3000), ("ingress-nginx", "flower", 5555),
           ("monitoring-pod", "flower", 5555),  # the user's policy scrape-flower
           ("elastic-worker-controller", "internet", 9091),  # elastic_worker_prometheus_url
           ("prometheus", "kube-apiserver", 6443), ("kube-apiserver", "metrics-adapter", 6443)],
        [("worker", "elsewhere-address", 443), ("internet", "api-server", 8080), ("internet", "grafana", 3000),
         ("elastic-worker-controller", "database", 5432),  # elastic_worker_result_backend_check: false
         ("internet", "metrics-adapter", 6443), ("prometheus", "internet", 6443),
         ("worker", "kube-apiserver", 6443), ("triggerer", "kube-apiserver", 6443),  # no pod launcher RBAC
         ("scheduler", "internet", 8443), ("monitoring-pod", "api-server", 8080)]),
    # The db-clean CronJob's pods reach the database and DNS, nothing else; the UIs behind their
    # Ingresses (Flower's and Grafana's like the api-server's) only from the Ingress controller.
    "ingresses-worker-logs-db-clean": (
        [("db-clean", "database", 5432), ("db-clean", "kube-dns", 53, "UDP"), ("db-clean", "kube-dns", 53, "TCP"),
         ("ingress-nginx", "api-server", 8080), ("ingress-nginx", "flower", 5555), ("ingress-nginx", "grafana", 3000)],
        [("db-clean", "broker", 6379), ("db-clean", "internet", 443), ("db-clean", "api-server", 8080),
         ("db-clean", "statsd-exporter", 9125, "UDP"), ("other-instance", "db-clean", 8080),
         ("internet", "api-server", 8080), ("internet", "flower", 5555), ("internet", "grafana", 3000),
         ("monitoring-pod", "flower", 5555), ("monitoring-pod", "grafana", 3000)]),
    # The objects Job's pods (declared pools, variables and connections) reach the database and DNS only.
    "declared-objects": (
        [("objects", "database", 5432), ("objects", "kube-dns", 53, "UDP"), ("objects", "kube-dns", 53, "TCP")],
        [("objects", "broker", 6379), ("objects", "api-server", 8080), ("objects", "internet", 443),
         ("objects", "statsd-exporter", 9125, "UDP"), ("objects", "kube-apiserver", 6443),
         ("other-instance", "objects", 8080), ("worker", "objects", 8080)]),
    # Every Airflow pod but the migrate Job goes through PgBouncer, which alone (with the migrate Job)
    # reaches the database; PgBouncer resolves the database's name and has no other egress.
    "pgbouncer": (
        [(c, "pgbouncer", 6432) for c in AIRFLOW + ["db-clean", "elastic-worker-controller"] if c != "migrate"]
        + [("pgbouncer", "database", 5432), ("migrate", "database", 5432),
           ("pgbouncer", "kube-dns", 53, "UDP"), ("pgbouncer", "kube-dns", 53, "TCP")],
        [(c, "database", 5432) for c in AIRFLOW + ["db-clean", "elastic-worker-controller"] if c != "migrate"]
        + [("migrate", "pgbouncer", 6432), ("grafana", "pgbouncer", 6432), ("prometheus", "pgbouncer", 6432),
           ("other-instance", "pgbouncer", 6432),
           ("elsewhere", "pgbouncer", 6432), ("internet", "pgbouncer", 6432), ("pgbouncer", "internet", 443),
           ("pgbouncer", "broker", 6379), ("pgbouncer", "api-server", 8080), ("pgbouncer", "database", 3306),
           ("database", "pgbouncer", 6432)]),
}
REMOVED = {  # default needs that the variant's settings take away
    "mysql-rabbitmq-git-ssh-hpa-s3": {"database", "broker", "flower"},
    "external-pvc-none-elasticsearch": {"database", "broker"},
    "git-https-prometheus-allow-lists": {("elastic-worker-controller", "database"),
                                         ("internet", "api-server"), ("internet", "flower"), ("internet", "grafana"),
                                         ("worker", "kube-apiserver"), ("triggerer", "kube-apiserver")},
    "ingresses-worker-logs-db-clean": {("internet", "api-server"), ("internet", "flower"), ("internet", "grafana")},
    "pgbouncer": {(c, "database") for c in AIRFLOW + ["elastic-worker-controller"] if c != "migrate"},
}


def _cases(variant, endpoints):
    """The variant's (needed, denied) flows between the endpoints it has (hpa and none run no controller)."""
    needed, denied = CHANGES.get(variant, ([], []))
    removed = REMOVED.get(variant, set())

    def there(flow):
        return flow[0] in endpoints and flow[1] in endpoints

    def keep(flow):
        return there(flow) and not {flow[0], flow[1], flow[:2]} & removed
    return ([f for f in NEEDED if keep(f)] + [f for f in needed if there(f)],
            [f for f in DENIED if keep(f)] + [f for f in denied if there(f)])


ENFORCED = [v for v in VARIANTS if v != "policies-off-baseline-budgets"]


def test_the_default_settings_have_every_endpoint(clusters):
    assert {name for f in NEEDED + DENIED for name in f[:2]} <= set(clusters["defaults"].endpoints)
    # A variant's own flows may name components only it renders (the db-clean CronJob's pods).
    flows = [f for needed, denied in CHANGES.values() for f in needed + denied]
    assert {name for f in flows for name in f[:2]} <= {name for c in clusters.values() for name in c.endpoints}


@pytest.mark.parametrize("variant", ENFORCED)
def test_every_needed_flow_is_allowed(clusters, variant):
    cluster = clusters[variant]
    needed, _denied = _cases(variant, cluster.endpoints)
    assert [f for f in needed if not cluster.allowed(*f)] == []


@pytest.mark.parametrize("variant", ENFORCED)
def test_flows_nobody_needs_are_denied(clusters, variant):
    cluster = clusters[variant]
    _needed, denied = _cases(variant, cluster.endpoints)
    assert [f for f in denied if cluster.allowed(*f)] == []


@pytest.mark.parametrize("variant", ENFORCED)
def test_every_pod_is_isolated_both_ways(clusters, variant):
    cluster = clusters[variant]
    ours = {name: e for name, e in cluster.endpoints.items()
            if e.namespace == NAMESPACE and e.labels.get("app.kubernetes.io/instance") == "airflow"}
    assert len(ours) >= 12
    deny = [p for p in cluster.policies if p["metadata"]["name"] == "airflow-default-deny"]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny[0]["spec"]
    assert [n for n, e in ours.items() if not selects(deny[0]["spec"]["podSelector"], e.labels)] == []
    assert not selects(deny[0]["spec"]["podSelector"], cluster.endpoints["other-instance"].labels)


@pytest.mark.parametrize("variant", ENFORCED)
def test_every_policy_selects_a_pod_and_no_rule_allows_everything(clusters, variant):
    cluster = clusters[variant]
    pods = [e for e in cluster.endpoints.values() if e.namespace == NAMESPACE]
    for policy in cluster.policies:
        assert any(selects(policy["spec"]["podSelector"], e.labels) for e in pods), policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            assert rule.get("ports") or rule.get("from") or rule.get("to"), policy["metadata"]["name"]


def test_without_network_policies_none_is_rendered(rendered):
    kinds = {o["kind"] for objects in rendered["policies-off-baseline-budgets"].values() for o in objects}
    assert "NetworkPolicy" not in kinds


def test_policies_are_labelled_by_the_layer_that_prunes_them(rendered):
    for layer, objects in rendered["defaults"].items():
        for obj in objects:
            if obj["kind"] in ("NetworkPolicy", "PodDisruptionBudget"):
                assert obj["metadata"]["labels"]["elastic-airflow.io/layer"] == layer, obj["metadata"]["name"]
                assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "airflow"


# -- PodDisruptionBudgets ---------------------------------------------------------------

def _budgets(rendered, variant):
    return {o["metadata"]["name"]: o["spec"] for objects in rendered[variant].values() for o in objects
            if o["kind"] == "PodDisruptionBudget"}


def test_each_budgeted_component_has_max_unavailable_1_by_default(rendered):
    budgets = _budgets(rendered, "defaults")
    assert sorted(budgets) == ["airflow-api-server", "airflow-dag-processor", "airflow-database", "airflow-scheduler",
                               "airflow-triggerer"]
    for name, spec in budgets.items():
        component = name.removeprefix("airflow-")
        assert spec == {"selector": {"matchLabels": {"app.kubernetes.io/instance": "airflow",
                                                     "app.kubernetes.io/component": component}},
                        "maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}


def test_budgets_follow_their_settings(rendered):
    budgets = _budgets(rendered, "policies-off-baseline-budgets")
    assert "airflow-scheduler" not in budgets  # {}: none
    assert budgets["airflow-api-server"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in budgets["airflow-api-server"]
    assert budgets["airflow-database"]["maxUnavailable"] == 0
    assert "airflow-database" not in _budgets(rendered, "external-pvc-none-elasticsearch")


def test_every_budget_selects_the_pods_of_its_workload(rendered):
    for variant in VARIANTS:
        objects = [o for objects in rendered[variant].values() for o in objects]
        workloads = {o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: o
                     for o in objects if o["kind"] in ("Deployment", "StatefulSet")}
        for name, spec in _budgets(rendered, variant).items():
            component = spec["selector"]["matchLabels"]["app.kubernetes.io/component"]
            assert selects(spec["selector"], workloads[component]["spec"]["template"]["metadata"]["labels"]), name
