"""The celery_worker_drain module's argument handling, run as Ansible runs a module (JSON args in, JSON out)."""
import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(_ROOT, "plugins", "modules", "celery_worker_drain.py")


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collections")
    ns = tmp / "ansible_collections" / "elastic_airflow"
    ns.mkdir(parents=True)
    (ns / "cluster").symlink_to(_ROOT)
    return str(tmp)


def run(collections, args, env_extra=None, tmp_path=None):
    path = os.path.join(str(tmp_path), "args.json")
    with open(path, "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
    env = dict((k, v) for k, v in os.environ.items() if k != "ELASTIC_AIRFLOW_BROKER_URL")
    env.update(env_extra or {}, PYTHONPATH=collections)
    proc = subprocess.run([sys.executable, MODULE, path], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError(
            "the module did not answer JSON:\n%s\n%s" % (proc.stdout[-2000:], proc.stderr[-2000:])) from exc


def test_without_broker_url_nor_its_environment_variable_the_module_fails_cleanly(collections, tmp_path):
    result = run(collections, {"celery_hostnames": ["celery@w-0"]}, tmp_path=tmp_path)
    assert result["failed"] and "broker_url is required" in result["msg"]


def test_broker_url_falls_back_to_the_environment_variable(collections, tmp_path):
    # nothing listens on 127.0.0.1:1: the module got the URL from the environment and tried it
    result = run(collections, {"celery_hostnames": ["celery@w-0"], "control_timeout": 0.5},
                 {"ELASTIC_AIRFLOW_BROKER_URL": "redis://127.0.0.1:1/0"}, tmp_path=tmp_path)
    assert result["failed"] and result["msg"].startswith("broker_url:"), result["msg"]
    assert "redis://127.0.0.1:1/0" not in json.dumps(result)  # no_log
