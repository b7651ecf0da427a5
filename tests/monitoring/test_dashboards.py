"""The monitoring and metrics_adapter layers agree with each other.

* Every Grafana dashboard in roles/monitoring/files/dashboards/ is valid JSON
  and queries only metrics that the monitoring layer actually produces: the
  statsd-exporter mapping's names, the metrics each scrape job keeps, `up`.
* So do the metrics adapter's rules.
* The rendered Prometheus configuration passes `promtool check config`, every
  PromQL query (dashboards and adapter rules, placeholders filled in) passes
  `promtool check rules`, and the statsd mapping loads in statsd-exporter and
  turns real Airflow statsd lines into the names the dashboards use.

The configuration is rendered by Ansible itself (the roles' tasks/render.yml),
so what is checked is what the roles deploy. `make test-monitoring` provides
promtool (Prometheus 3, with Kubernetes service discovery) and statsd_exporter;
set PROMTOOL / STATSD_EXPORTER to use others.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "roles/monitoring/files/dashboards").glob("*.json"))
MAPPING = ROOT / "roles/monitoring/files/statsd-mapping.yml"
CACHE = pathlib.Path(os.environ.get("ELASTIC_AIRFLOW_CACHE", pathlib.Path.home() / ".cache/elastic-airflow"))
NAMESPACE, CLUSTER = "airflow", "airflow"

RENDER_PLAYBOOK = """
- name: Render the monitoring and metrics_adapter configuration files
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    elastic_airflow_namespace: {ns}
    elastic_airflow_cluster_name: {c}
  tasks:
    - name: Render monitoring
      ansible.builtin.include_role:
        name: elastic_airflow.cluster.monitoring
        tasks_from: render
    - name: Render metrics_adapter
      ansible.builtin.include_role:
        name: elastic_airflow.cluster.metrics_adapter
        tasks_from: render
    - name: Write them out
      ansible.builtin.copy:
        dest: "{{{{ out }}}}/{{{{ item.key }}}}"
        content: "{{{{ item.value }}}}"
        mode: "0644"
      loop: "{{{{ {{'prometheus.yml': monitoring_prometheus_config,
                  'adapter.yaml': metrics_adapter_config}} | dict2items }}}}"
"""

# PromQL words that are not metric names.
FUNCTIONS_AND_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "clamp_min", "clamp_max", "clamp", "label_replace", "label_join",
    "abs", "absent", "ceil", "floor", "round", "vector", "scalar", "time", "sort", "sort_desc",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "changes", "resets", "predict_linear",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a small lexer, enough for ours)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word in FUNCTIONS_AND_KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_name_lexer():
    expr = ('sum by (pod) (rate(a_total{x="y", z=~"b|c"}[5m])) / on (node) group_left () '
            'clamp_min(sum(b_bytes and on (namespace) up{job=~".+-statsd"}), 1) or vector(0)')
    assert metric_names(expr) == {"a_total", "b_bytes", "up"}


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    """prometheus.yml and the adapter's config.yaml as the roles render them."""
    tmp = tmp_path_factory.mktemp("render")
    collections = tmp / "collections/ansible_collections/elastic_airflow"
    collections.mkdir(parents=True)
    (collections / "cluster").symlink_to(ROOT)
    playbook = tmp / "render.yml"
    playbook.write_text(RENDER_PLAYBOOK.format(ns=NAMESPACE, c=CLUSTER))
    out = tmp / "out"
    out.mkdir()
    ansible_playbook = shutil.which("ansible-playbook") or str(pathlib.Path(sys.executable).parent / "ansible-playbook")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp / "collections"), ANSIBLE_NOCOLOR="1")
    run = subprocess.run([ansible_playbook, "-i", "localhost,", str(playbook), "-e", f"out={out}",
                          "-e", f"ansible_python_interpreter={sys.executable}"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {p.name: p.read_text() for p in out.iterdir()}


@pytest.fixture(scope="module")
def prometheus_config(rendered) -> dict:
    return yaml.safe_load(rendered["prometheus.yml"])


@pytest.fixture(scope="module")
def adapter_config(rendered) -> dict:
    return yaml.safe_load(rendered["adapter.yaml"])


@pytest.fixture(scope="module")
def mapping() -> dict:
    return yaml.safe_load(MAPPING.read_text())


@pytest.fixture(scope="module")
def produced(prometheus_config, mapping) -> dict[str, object]:
    """What each job yields: exact names (statsd mapping) or the job's keep regex."""
    statsd = set()
    for m in mapping["mappings"]:
        if m.get("action") == "drop":
            continue
        statsd.add(m["name"])
        if m.get("match_metric_type") == "observer":  # histograms (mapping defaults)
            statsd |= {m["name"] + s for s in ("_bucket", "_sum", "_count")}
    keeps = []
    for job in prometheus_config["scrape_configs"]:
        for rc in job.get("metric_relabel_configs", []):
            if rc.get("action") == "keep" and rc.get("source_labels") == ["__name__"]:
                keeps.append(re.compile(rc["regex"]))
    return {"statsd": statsd, "keeps": keeps}


def is_produced(name: str, produced) -> bool:
    return (name == "up" or name in produced["statsd"]
            or any(k.fullmatch(name) for k in produced["keeps"]))


def dashboard_queries(board: dict) -> list[str]:
    exprs = []
    for panel in board["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    for var in board.get("templating", {}).get("list", []):
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q.strip())
        assert m, f"template variable {var['name']}: unexpected query {q!r}"
        exprs.append(m.group(1))
    return exprs


# ------------------------------------------------------------------ dashboards
def test_there_are_dashboards():
    assert len(DASHBOARDS) >= 2


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_parses_and_uses_the_provisioned_datasource(path):
    board = json.loads(path.read_text())
    assert board["uid"] and board["title"] and board["panels"]
    uids = set()
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        uids.add(panel["datasource"]["uid"])
        assert panel["targets"], f"panel {panel['title']!r} has no query"
    assert uids == {"elastic-airflow-prometheus"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_only_produced_metrics(path, produced):
    board = json.loads(path.read_text())
    used = set().union(*(metric_names(e) for e in dashboard_queries(board)))
    assert used, "no metric found"
    missing = sorted(n for n in used if not is_produced(n, produced))
    assert not missing, f"{path.name} queries metrics nothing scrapes or maps: {missing}"


def test_dashboards_cover_cadvisor_statsd_and_kube_state_metrics():
    used = set()
    for path in DASHBOARDS:
        used |= set().union(*(metric_names(e) for e in dashboard_queries(json.loads(path.read_text()))))
    assert "container_cpu_usage_seconds_total" in used and "container_memory_working_set_bytes" in used
    assert {"airflow_executor_queued_tasks", "airflow_executor_running_tasks"} <= used
    assert "kube_statefulset_status_replicas_ready" in used
    assert "kube_horizontalpodautoscaler_status_desired_replicas" in used


# -------------------------------------------------------------- adapter rules
def test_adapter_rules_serve_the_contract_metrics(adapter_config):
    names = {r["name"]["as"] for r in adapter_config["rules"]}
    assert names == {"airflow_tasks_per_worker", "total_cluster_load"}
    for rule in adapter_config["rules"]:
        overrides = rule["resources"]["overrides"]
        assert overrides["namespace"] == {"resource": "namespace"}
        assert overrides["statefulset"] == {"group": "apps", "resource": "statefulset"}
        # Idle means 0, not "no metric": the expression ends in an `or` of a zero
        # built from count(up) - count(up) with the same labels.
        assert re.search(r"or \(count by \(<<\.GroupBy>>\) \(up\{.*\}\) - count by \(<<\.GroupBy>>\) \(up\{.*\}\)\)$",
                         rule["metricsQuery"]), rule["metricsQuery"]


def test_adapter_rules_query_only_produced_metrics(adapter_config, produced):
    for rule in adapter_config["rules"]:
        used = metric_names(rule["metricsQuery"]) | metric_names(rule["seriesQuery"])
        missing = sorted(n for n in used if not is_produced(n, produced))
        assert not missing, f"{rule['name']['as']}: {missing}"


# --------------------------------------------------------------------- promtool
def _tool(env_var: str, cached_glob: str, fallback: str) -> str | None:
    if os.environ.get(env_var):
        return os.environ[env_var]
    cached = sorted(CACHE.glob(cached_glob))
    return str(cached[-1]) if cached else shutil.which(fallback)


# Debian's promtool (2.42) is built without Kubernetes service discovery, so it
# rejects every kubernetes_sd_configs: the configuration check needs the
# Prometheus 3 promtool that `make test-monitoring` builds (or PROMTOOL). Any
# promtool can check PromQL.
PROMTOOL_V3 = _tool("PROMTOOL", "tools/promtool-*/promtool", "promtool-v3-not-on-path")
PROMTOOL = PROMTOOL_V3 or shutil.which("promtool")
STATSD_EXPORTER = _tool("STATSD_EXPORTER", "tools/statsd_exporter-*/statsd_exporter", "statsd_exporter")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (make test-monitoring provides it)")


@pytest.mark.skipif(PROMTOOL_V3 is None, reason="needs Prometheus 3's promtool (make test-monitoring builds it)")
def test_prometheus_config_is_valid(rendered, tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(rendered["prometheus.yml"])
    run = subprocess.run([PROMTOOL_V3, "check", "config", "--syntax-only", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, f"{PROMTOOL_V3}: {run.stdout}{run.stderr}"
    version = subprocess.run([PROMTOOL_V3, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert re.search(r"version 3\.", version.stdout + version.stderr), version.stdout + version.stderr


def _substitute_grafana(expr: str) -> str:
    return (expr.replace("$__rate_interval", "5m").replace("$namespace", NAMESPACE)
            .replace("$statefulset", CLUSTER + "-worker"))


def _substitute_adapter(expr: str) -> str:
    # What prometheus-adapter fills in for the worker StatefulSet's metric.
    return (expr.replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",statefulset="{CLUSTER}-worker"')
            .replace("<<.GroupBy>>", "namespace,statefulset")
            .replace("<<.Series>>", "up"))


@needs_promtool
def test_all_promql_is_valid(adapter_config, tmp_path):
    rules = []
    for rule in adapter_config["rules"]:
        rules.append({"record": f"adapter:{rule['name']['as']}", "expr": _substitute_adapter(rule["metricsQuery"])})
        rules.append({"record": f"adapter:{rule['name']['as']}:series", "expr": rule["seriesQuery"]})
    for path in DASHBOARDS:
        for i, expr in enumerate(dashboard_queries(json.loads(path.read_text()))):
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": _substitute_grafana(expr)})
    assert all("<<" not in r["expr"] and "$" not in r["expr"] for r in rules)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    run = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules)} rules found" in run.stdout, run.stdout


# ---------------------------------------------------------------- statsd mapping
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def test_statsd_mapping_is_well_formed(mapping):
    matches = [m["match"] for m in mapping["mappings"]]
    assert len(matches) == len(set(matches)), "duplicate match"
    assert mapping["mappings"][-1]["action"] == "drop", "the last rule drops what is not mapped"
    for m in mapping["mappings"]:
        if m.get("match_type") == "regex":
            re.compile(m["match"])
            continue
        assert m["match"].startswith("airflow."), m
        assert METRIC_NAME.fullmatch(m["name"]), m
        stars = m["match"].split(".").count("*")
        for label, value in (m.get("labels") or {}).items():
            assert LABEL_NAME.fullmatch(label), m
            refs = [int(r) for r in re.findall(r"\$(\d+)", value)]
            assert refs and max(refs) <= stars, f"{m['match']}: label {label}={value} refers past the globs"
        if m["name"].endswith("_total"):
            assert m.get("match_metric_type") == "counter", m


needs_statsd_exporter = pytest.mark.skipif(STATSD_EXPORTER is None,
                                           reason="no statsd_exporter (make test-monitoring provides it)")


@needs_statsd_exporter
def test_statsd_mapping_loads_in_statsd_exporter():
    run = subprocess.run([STATSD_EXPORTER, "--check-config", f"--statsd.mapping-config={MAPPING}"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_statsd_exporter
def test_statsd_exporter_maps_airflow_lines():
    """Real Airflow statsd lines in, the dashboards' metric names out."""
    udp, http = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen([STATSD_EXPORTER, f"--statsd.mapping-config={MAPPING}",
                             f"--statsd.listen-udp=127.0.0.1:{udp}", "--statsd.listen-tcp=",
                             f"--web.listen-address=127.0.0.1:{http}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{http}/metrics"
        for _i in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        lines = [
            "airflow.executor.queued_tasks:3|g",
            "airflow.executor.running_tasks:5|g",
            "airflow.executor.open_slots:27|g",
            "airflow.pool.open_slots.default_pool:120|g",
            "airflow.ti.finish.etl.load.success:1|c",
            "airflow.ti_failures:1|c",
            "airflow.scheduler_heartbeat:1|c",
            "airflow.dag.etl.load.duration:1500|ms",
            "airflow.dagrun.duration.success.etl:60000|ms",
            "airflow.operator_successes_BashOperator:1|c",
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for line in lines:
                s.sendto(line.encode(), ("127.0.0.1", udp))
        expected = [
            "airflow_executor_queued_tasks 3",
            "airflow_executor_running_tasks 5",
            "airflow_executor_open_slots 27",
            'airflow_pool_open_slots{pool="default_pool"} 120',
            'airflow_ti_finish_total{dag_id="etl",state="success",task_id="load"} 1',
            "airflow_ti_failures_total 1",
            "airflow_scheduler_heartbeat_total 1",
            'airflow_task_duration_seconds_sum{dag_id="etl",task_id="load"} 1.5',
            'airflow_dagrun_duration_seconds_count{dag_id="etl",state="success"} 1',
        ]
        text = ""
        for _i in range(50):
            text = urllib.request.urlopen(url, timeout=2).read().decode()
            if all(e in text for e in expected):
                break
            time.sleep(0.1)
        missing = [e for e in expected if e not in text]
        assert not missing, missing
        assert "operator_successes" not in text, "unmapped names must be dropped"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
