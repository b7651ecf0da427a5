"""Fixtures of the unit tests: the collection's manifests as its roles render
them, without a cluster.

Ansible renders them, one inventory host per variant of settings: a playbook
loads every role's defaults/ and vars/ and then the variant's settings over
them (include_vars: the later file wins), runs the entry points that only
set facts (git_sync `pod`, monitoring and metrics_adapter `render`, airflow
`worker_pod_template`), and templates each layer's manifests with role_path
set to that role, as apply_manifests does. Rendered: each layer's objects but
the Secrets (which need values read from the cluster), and each layer's
NetworkPolicies and PodDisruptionBudgets (the base role's isolation.yaml.j2
with the `elastic_airflow_isolation` its apply task passes; LAYERS repeats
those tasks' template lists and vars).

These are the objects the roles would apply. Whether a cluster admits or
enforces them is for tests/integration/playbooks and the real node.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"

# Layer -> (templates, the elastic_airflow_isolation its apply task passes), as in roles/<layer>/tasks/main.yml.
LAYERS = {
    "namespace": ("['namespace.yaml.j2', 'serviceaccounts.yaml.j2']"
                  " + (['network-policies.yaml.j2'] if elastic_airflow_network_policies else [])",
                  "{'layer': 'namespace', 'flows': namespace_network_flows, 'budgets': {}}"),
    "database": ("([] if database_engine == 'external' else ['service.yaml.j2', 'statefulset.yaml.j2'])"
                 " + (['pgbouncer.yaml.j2'] if database_pgbouncer | bool else [])",
                 "{'layer': 'database', 'flows': database_network_flows,"
                 " 'budgets': ({} if database_engine == 'external' else {'database': database_disruption_budget})"
                 " | combine({'pgbouncer': database_pgbouncer_disruption_budget}"
                 " if database_pgbouncer | bool and database_pgbouncer_replicas | int > 1 else {})}"),
    "broker": ("[] if broker_engine == 'external' else ['service.yaml.j2', 'statefulset.yaml.j2']"
               " + (['configmap.yaml.j2'] if broker_engine == 'rabbitmq' else [])",
               "{'layer': 'broker', 'flows': broker_network_flows, 'budgets': {}}"),
    "airflow": ("['airflow-env.yaml.j2'] + airflow_named_jobs.values() | list + airflow_component_templates",
                "{'layer': 'airflow', 'flows': airflow_network_flows, 'budgets': airflow_disruption_budgets}"),
    "monitoring": ("['rbac.yaml.j2', 'prometheus.yaml.j2', 'statsd-exporter.yaml.j2', 'kube-state-metrics.yaml.j2',"
                   " 'grafana.yaml.j2']",
                   "{'layer': 'monitoring', 'flows': monitoring_network_flows, 'budgets': {}}"),
    "metrics_adapter": ("['rbac.yaml.j2', 'adapter.yaml.j2']",
                        "{'layer': 'metrics_adapter', 'flows': metrics_adapter_network_flows, 'budgets': {}}"),
    "elastic_worker": ("['controller-rbac.yaml.j2', 'controller.yaml.j2'] + elastic_worker_cr_templates"
                       " if elastic_airflow_worker_autoscaling == 'elastic' else []",
                       "{'layer': 'elastic_worker', 'flows': elastic_worker_network_flows, 'budgets': {}}"),
}


def _playbook(out: pathlib.Path, layers: dict) -> str:
    var_files = [str(p) for role in sorted(ROLES.iterdir())
                 for p in (role / "defaults/main.yml", role / "vars/main.yml") if p.exists()]
    variant_file = f"{out}/{{{{ inventory_hostname }}}}.json"
    tasks = [
        {"name": "Load every role's defaults and vars, then the variant's settings",
         "ansible.builtin.include_vars": "{{ item }}", "loop": var_files + [variant_file]},
        {"name": "Set git_sync_pod",
         "ansible.builtin.include_role": {"name": "elastic_airflow.cluster.git_sync", "tasks_from": "pod"},
         "vars": {"elastic_airflow_validated_layers": ["git_sync"]}},
        {"name": "Render the monitoring configuration",
         "ansible.builtin.include_role": {"name": "elastic_airflow.cluster.monitoring", "tasks_from": "render"}},
        {"name": "Render the metrics adapter configuration",
         "ansible.builtin.include_role": {"name": "elastic_airflow.cluster.metrics_adapter", "tasks_from": "render"}},
        {"name": "Set airflow_worker_pod_template",
         "ansible.builtin.include_role": {"name": "elastic_airflow.cluster.airflow",
                                          "tasks_from": "worker_pod_template"}},
    ]
    for layer, (templates, isolation) in layers.items():
        role = str(ROLES / layer)
        paths = f"({templates}) | map('regex_replace', '^', '{role}/templates/') | list"
        paths += f" + ['{ROLES}/elastic_airflow/templates/isolation.yaml.j2']"
        tasks.append({
            "name": f"Render the {layer} layer",
            "ansible.builtin.set_fact": {
                "rendered": "{{ rendered | default({}) | combine({'" + layer + "': content}) }}"},
            "vars": {"airflow_job_names": {"migrate": "airflow-migrate-rendered",
                                           "objects": "airflow-objects-rendered"},
                     "content": "{% for path in " + paths + " %}---\n{{ lookup('ansible.builtin.template', path,"
                                " template_vars={'role_path': '" + role + "', 'ansible_search_path': ['" + role + "'],"
                                " 'elastic_airflow_isolation': " + isolation + "}) }}\n{% endfor %}"},
        })
    # One module call per host: a copy for each layer would cost a second each.
    tasks.append({"name": "Write them out", "ansible.builtin.copy": {
        "dest": f"{out}/{{{{ inventory_hostname }}}}.rendered.json", "content": "{{ rendered | to_json }}",
        "mode": "0600"}})
    return json.dumps([{"name": "Render the manifests", "hosts": "all", "connection": "local",
                        "gather_facts": False, "tasks": tasks}])


def render(variants: dict[str, dict], layers: dict | None = None) -> dict[str, dict[str, list[dict]]]:
    """{variant: {layer: [object, ...]}}: what the roles render with each variant's settings (`layers`:
    LAYERS, or other templates in the same form). One ansible-playbook per CPU, side by side (a run
    templates mostly in one process)."""
    processes = min(len(variants), os.cpu_count() or 1)
    groups = [dict(list(variants.items())[i::processes]) for i in range(processes)]
    with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
        results = pool.map(lambda group: _render(group, layers or LAYERS), groups)
        return {name: rendered for result in results for name, rendered in result.items()}


def _render(variants: dict[str, dict], layers: dict) -> dict[str, dict[str, list[dict]]]:
    with tempfile.TemporaryDirectory(prefix="elastic-airflow-render-") as tmp:
        tmp = pathlib.Path(tmp)
        collection = tmp / "collections/ansible_collections/elastic_airflow"
        collection.mkdir(parents=True)
        (collection / "cluster").symlink_to(ROOT)
        out = tmp / "out"
        out.mkdir()
        for name, settings in variants.items():
            (out / f"{name}.json").write_text(json.dumps(settings))
        (tmp / "render.yml").write_text(_playbook(out, layers))
        ansible_playbook = (shutil.which("ansible-playbook")
                            or str(pathlib.Path(sys.executable).parent / "ansible-playbook"))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp / "collections"), ANSIBLE_NOCOLOR="1")
        run = subprocess.run([ansible_playbook, "-i", ",".join(variants) + ",", "--forks", str(len(variants)),
                              str(tmp / "render.yml"), "-e", f"ansible_python_interpreter={sys.executable}"],
                             env=env, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        texts = {name: json.loads((out / f"{name}.rendered.json").read_text()) for name in variants}
        return {name: {layer: [doc for doc in yaml.safe_load_all(text) if doc] for layer, text in layers.items()}
                for name, layers in texts.items()}


SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----"

# Settings that between them render every kind of pod and every flow: each
# engine and broker, each git_sync mode, each autoscaling mode, remote logs,
# the adapter's and the controller's Prometheus elsewhere, the allow lists,
# PgBouncer.
VARIANTS = {
    # postgresql, redis, DAGs in the image, elastic workers, monitoring, Flower
    "defaults": {},
    "mysql-rabbitmq-git-ssh-hpa-s3": {
        "database_engine": "mysql", "broker_engine": "rabbitmq",
        "git_sync_mode": "git", "git_sync_repo": "git@github.com:example/dags.git", "git_sync_auth": "ssh",
        "git_sync_ssh_private_key": SSH_KEY, "git_sync_ssh_known_hosts": "github.com ssh-ed25519 AAAAC3Nz",
        "elastic_airflow_worker_autoscaling": "hpa", "airflow_flower_enabled": False,
        "airflow_remote_logging": "s3", "airflow_remote_logging_s3_folder": "s3://logs/airflow",
        "airflow_ingress_enabled": True, "airflow_ingress_host": "airflow.example.com",
        "airflow_image_pull_secrets": ["regcred"],
        "airflow_worker_extra_volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": "out"}}],
        "airflow_worker_extra_volume_mounts": [{"name": "out", "mountPath": "/out"}],
    },
    "external-pvc-none-elasticsearch": {
        "database_engine": "external", "database_external_secret": "db",
        "database_external_peers": [{"ipBlock": {"cidr": "10.0.5.10/32"}}],
        "broker_engine": "external", "broker_external_secret": "broker", "broker_external_port": 5672,
        "git_sync_mode": "pvc", "elastic_airflow_worker_autoscaling": "none",
        # one worker: its logs claim may be ReadWriteOnce (then the api-server does not mount it)
        "airflow_worker_logs_persistence": True, "airflow_worker_logs_access_mode": "ReadWriteOnce",
        # Elasticsearch in its default mode, direct: Airflow writes the task logs itself.
        "airflow_remote_logging": "elasticsearch", "airflow_remote_logging_elasticsearch_host": "https://es.example.com:9243",
        "metrics_adapter_prometheus_url": "http://prometheus.monitoring.svc:9090",
    },
    # Elasticsearch fed by the user's log shipper: Airflow only reads it.
    "elasticsearch-stdout-shipper": {
        "airflow_remote_logging": "elasticsearch", "airflow_remote_logging_elasticsearch_host": "http://es.logging.svc:9200",
        "airflow_remote_logging_elasticsearch_mode": "stdout", "airflow_remote_logging_elasticsearch_shipper": True,
        "airflow_remote_logging_elasticsearch_index": "filebeat-*,airflow-logs",
    },
    # Declared pools, variables and connections (the objects Job), values from Secrets among them.
    "declared-objects": {
        "airflow_pools": [{"name": "etl", "slots": 8, "description": "ETL jobs"},
                          {"name": "unlimited", "slots": -1, "include_deferred": True}],
        "airflow_variables": [{"key": "environment", "value": "production", "description": "where this runs"},
                              {"key": "settings", "value": {"retries": 3, "regions": ["eu", "us"]}},
                              {"key": "partner_token", "secret": {"name": "partner", "key": "token"}}],
        "airflow_connections": [
            {"conn_id": "warehouse", "secret": {"name": "warehouse-conn", "key": "uri"}, "description": "the DWH"},
            {"conn_id": "partner_api", "conn_type": "http", "host": "api.example.com", "port": 443, "schema": "https",
             "login": "airflow", "extra": {"timeout": 30}, "password_secret": {"name": "partner", "key": "password"}},
            {"conn_id": "public_api", "conn_type": "http", "host": "public.example.com"}],
        # what tasks/main.yml computes from the Secrets' values
        "airflow_objects_secrets_checksum": "0123456789abcdef",
        "elastic_airflow_component_scheduling": {"objects": {"nodeSelector": {"pool": "jobs"}}},
    },
    "git-https-prometheus-allow-lists": {
        "git_sync_mode": "git", "git_sync_repo": "https://git.example.com:8443/org/dags.git", "git_sync_auth": "https",
        "git_sync_https_username": "bot", "git_sync_https_token": "t0ken",
        "elastic_worker_metric": "prometheus", "elastic_worker_prometheus_url": "http://prometheus.example.com:9091",
        "elastic_worker_prometheus_query": "sum(airflow_executor_running_tasks)",
        "elastic_worker_result_backend_check": False,  # the controller keeps away from the database
        "namespace_pod_launcher_rbac": False,
        "elastic_airflow_network_ui_peers": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        "elastic_airflow_network_kubernetes_api_peers": [{"ipBlock": {"cidr": "198.18.0.1/32"}}],
        "elastic_airflow_network_extra_flows": [
            {"name": "tasks-https", "from": ["worker"], "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
             "ports": [{"port": 443}]}],
        "elastic_airflow_network_extra_policies": [
            {"name": "scrape-flower", "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "flower"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                    "ports": [{"port": 5555}]}]}}],
    },
    # The pod settings of every pod (elastic_airflow_*: scheduling, labels, annotations, security
    # contexts in platform mode) and the Airflow components' extension points.
    "platform-pod-settings-extensions": {
        "elastic_airflow_security_context_mode": "platform",
        "git_sync_mode": "git", "git_sync_repo": "https://git.example.com/org/dags.git", "git_sync_auth": "https",
        "git_sync_https_username": "bot", "git_sync_https_token": "t0ken",
        "elastic_airflow_scheduling": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "airflow",
                                                        "effect": "NoSchedule"}],
                                       "priorityClassName": "airflow"},
        "elastic_airflow_component_scheduling": {"worker": {"nodeSelector": {"pool": "workers"}}},
        "elastic_airflow_pod_labels": {"team": "data"},
        "elastic_airflow_component_pod_labels": {"database": {"team": "dba", "backup": "daily"}},
        "elastic_airflow_pod_annotations": {"example.com/owner": "data-platform"},
        "elastic_airflow_component_pod_annotations": {
            "worker": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
        "elastic_airflow_pod_security_context": {"supplementalGroups": [1001]},
        "elastic_airflow_component_pod_security_context": {"database": {"runAsUser": 70, "fsGroup": 70}},
        "elastic_airflow_container_security_context": {"readOnlyRootFilesystem": False},
        "elastic_airflow_component_container_security_context": {"controller": {"readOnlyRootFilesystem": True}},
        "airflow_worker_extra_env": [{"name": "REQUESTS_CA_BUNDLE", "value": "/etc/ca/ca.crt"}],
        "airflow_worker_extra_env_from": [{"secretRef": {"name": "worker-env"}}],
        "airflow_worker_extra_volumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "airflow_worker_extra_volume_mounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
        "airflow_worker_extra_containers": [{"name": "proxy", "image": "envoyproxy/envoy:v1.31.0"}],
        "airflow_worker_extra_init_containers": [{"name": "prepare", "image": "busybox:1.36",
                                                  "command": ["true"]}],
        "airflow_api_server_extra_env_from": [{"configMapRef": {"name": "api-env"}, "prefix": "API_"}],
        "airflow_scheduler_extra_containers": [{"name": "log-shipper", "image": "fluent/fluent-bit:3.1",
                                                "securityContext": {"readOnlyRootFilesystem": True}}],
        "airflow_dag_processor_extra_env": [{"name": "DAG_ENV", "value": "prod"}],
        "airflow_triggerer_extra_init_containers": [{"name": "wait", "image": "busybox:1.36"}],
        "airflow_flower_extra_env": [{"name": "FLOWER_PURGE_OFFLINE_WORKERS", "value": "60"}],
        "airflow_db_clean": True,
    },
    # Ingress for Flower (auth at the Ingress) and Grafana, the workers' logs on a shared claim,
    # the log cleanup sidecars with another retention, and the db clean CronJob.
    "ingresses-worker-logs-db-clean": {
        "airflow_flower_ingress_enabled": True, "airflow_flower_ingress_host": "flower.example.com",
        "airflow_flower_ingress_class_name": "nginx", "airflow_flower_ingress_tls_secret": "flower-tls",
        "airflow_flower_ingress_annotations": {
            "nginx.ingress.kubernetes.io/auth-url": "https://auth.example.com/validate"},
        "monitoring_grafana_ingress_enabled": True, "monitoring_grafana_ingress_host": "grafana.example.com",
        "monitoring_grafana_ingress_tls_secret": "grafana-tls",
        "monitoring_grafana_ingress_annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        "elastic_airflow_network_ui_peers": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        "airflow_worker_logs_persistence": True, "airflow_worker_logs_storage_class": "nfs",
        "airflow_worker_logs_storage_size": "50Gi",
        "airflow_log_cleanup_retention_days": 7, "airflow_log_cleanup_interval_minutes": 5,
        "airflow_db_clean": True, "airflow_db_clean_retention_days": 30, "airflow_db_clean_skip_archive": True,
        "airflow_db_clean_schedule": "@daily",
    },
    # PgBouncer in front of the internal PostgreSQL (three replicas, so a budget), the db-clean
    # CronJob and Flower through it; and the pod settings of the pgbouncer component.
    "pgbouncer": {
        "database_pgbouncer": True, "database_pgbouncer_replicas": 3, "airflow_db_clean": True,
        "elastic_airflow_component_pod_labels": {"pgbouncer": {"tier": "pooler"}},
        "elastic_airflow_component_scheduling": {"pgbouncer": {"nodeSelector": {"pool": "system"}}},
    },
    "policies-off-baseline-budgets": {
        "elastic_airflow_network_policies": False,
        "namespace_pod_security_enforce": "baseline", "namespace_pod_security_warn": "",
        "airflow_api_server_disruption_budget": {"minAvailable": "50%"}, "airflow_scheduler_disruption_budget": {},
        "database_disruption_budget": {"maxUnavailable": 0},
        "airflow_log_cleanup": False,
    },
    # Two extra worker pools with queues of their own (ElasticWorkers, mode elastic): one with its own
    # size, scaling and node, one that inherits the main workers' settings.
    "worker-pools": {
        "airflow_worker_pools": [
            {"name": "heavy", "queues": ["heavy", "ml"], "concurrency": 2, "min_replicas": 0, "max_replicas": 4,
             "target": 60, "termination_grace_period_seconds": 1800,
             "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
             "scheduling": {"nodeSelector": {"node-pool": "highmem"}}},
            {"name": "light", "queues": ["light"]},
        ],
        "elastic_airflow_scheduling": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
        "elastic_airflow_component_scheduling": {"worker": {"nodeSelector": {"pool": "workers"}}},
        "airflow_worker_extra_env": [{"name": "REQUESTS_CA_BUNDLE", "value": "/etc/ca/ca.crt"}],
    },
}


@pytest.fixture(scope="session")
def rendered() -> dict[str, dict[str, list[dict]]]:
    """{variant: {layer: [object, ...]}} for every variant of VARIANTS."""
    return render(VARIANTS)
