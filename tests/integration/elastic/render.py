"""Render the elastic_worker role's manifest templates without Ansible (tests, benchmarks)."""
import json
import os

import jinja2
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TEMPLATES = os.path.join(ROOT, "roles", "elastic_worker", "templates")


def _combine(*dicts):
    out = {}
    for d in dicts:
        out.update(d or {})
    return out


def render(name, **variables):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    env.filters["combine"] = _combine
    variables.setdefault("elastic_airflow_labels", {"app.kubernetes.io/part-of": "elastic-airflow"})
    # roles/elastic_worker/vars/main.yml: the CRDs' labels, without a cluster's instance label
    variables.setdefault("elastic_worker_crd_labels", {"app.kubernetes.io/part-of": "elastic-airflow",
                                                       "app.kubernetes.io/component": "elastic-worker"})
    return [d for d in yaml.safe_load_all(env.get_template(name).render(**variables)) if d]
