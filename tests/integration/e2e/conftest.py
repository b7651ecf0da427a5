"""Fixtures of the end-to-end tests: deploy with playbooks/site.yml, read the
configuration back from the API server, run real Airflow 3 locally with it.

Environment:
  ELASTIC_AIRFLOW_E2E_KUBECONFIG  the cluster (default: the shared local one,
                                  $ELASTIC_AIRFLOW_CACHE/run/cluster/kubeconfig)
  ELASTIC_AIRFLOW_E2E_KEEP=1      keep the namespaces (default: deleted at the end)
"""
import os
import subprocess
import sys
import time
import urllib.parse

import pytest
from kubernetes import client, config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
sys.path.append(os.path.dirname(HERE))

import harness  # noqa: E402
from local_cluster import CACHE, SHARED_KUBECONFIG, api_fixture  # noqa: E402

KUBECONFIG = os.environ.get("ELASTIC_AIRFLOW_E2E_KUBECONFIG", SHARED_KUBECONFIG)
SERVICES = os.path.join(ROOT, "tests", "services", "services.sh")
# A private Redis (it must require the password of the cluster's Secret).
PRIVATE = os.path.join(CACHE, "e2e")
REDIS_PORT = int(os.environ.get("ELASTIC_AIRFLOW_E2E_REDIS_PORT", "26379"))

TIMINGS = []


def timed(what, t0):
    TIMINGS.append((what, time.time() - t0))


def services_env(name, extra=None):
    out = subprocess.run([SERVICES, "env", name], env=dict(os.environ, **(extra or {})), capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.split())


api = api_fixture(KUBECONFIG)


@pytest.fixture(scope="session")
def airflow_venv():
    t0 = time.time()
    out = subprocess.run([os.path.join(HERE, "airflow_venv.sh")], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    timed("airflow venv (cached after the first build)", t0)
    return out.stdout.strip()


_started_services = []  # what this session started, and stops at its end


def start_service(name):
    if subprocess.run([SERVICES, "status", name], stdout=subprocess.DEVNULL, check=False).returncode != 0:
        _started_services.append(name)
    subprocess.run([SERVICES, "start", name], check=True, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session", autouse=True)
def report_timings():
    t0 = time.time()
    yield
    for proc, _unused, _unused in _deploys.values():  # a deploy whose tests did not run (-x)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    for name in _started_services:
        subprocess.run([SERVICES, "stop", name], stdout=subprocess.DEVNULL, check=False)
    lines = ["%-58s %6.1f s" % (w, s) for w, s in TIMINGS]
    sys.stdout.write("\n\ne2e timings:\n  " + "\n  ".join(lines) + "\n  %-58s %6.1f s\n" % (
        "total (session)", time.time() - t0))


# site.yml of the next module runs in the background while the tests of the
# one before it run (they mostly wait for Airflow), in this order.
DEPLOY_ORDER = ["postgresql-redis.yml", "mysql-rabbitmq.yml"]
MODULE_VARS = {"test_postgresql_redis.py": "postgresql-redis.yml", "test_mysql_rabbitmq.py": "mysql-rabbitmq.yml"}
_deploys = {}  # vars file name -> (Popen, start time, log path)


def _wait_namespace_gone_if_terminating(name):
    """A namespace of an earlier run that is still being deleted takes no new objects."""
    import yaml
    with open(os.path.join(HERE, "vars", name)) as fh:
        namespace = yaml.safe_load(fh)["elastic_airflow_namespace"]
    core = client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            ns = core.read_namespace(namespace)
        except client.rest.ApiException as e:
            if e.status == 404:
                return
            raise
        if ns.status.phase != "Terminating":
            return
        time.sleep(2)
    raise AssertionError("namespace %s is still terminating after 180 s" % namespace)


def _start_deploy(name):
    _wait_namespace_gone_if_terminating(name)
    log = os.path.join(PRIVATE, "site-%s.log" % name)
    os.makedirs(PRIVATE, exist_ok=True)
    fh = open(log, "w")
    proc = subprocess.Popen(
        # The pods only carry the configuration read back here: on the KWOK nodes.
        ["ansible-playbook", "-i", os.path.join(ROOT, "inventories", "local"),
         "-i", os.path.join(ROOT, "inventories", "local-kwok"),
         os.path.join(ROOT, "playbooks", "site.yml"), "-e", "@" + os.path.join(HERE, "vars", name),
         "-e", "elastic_airflow_kubeconfig=" + KUBECONFIG],
        cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    fh.close()
    _deploys[name] = (proc, time.time(), log)


def deploy(varsfile, wanted=()):
    """site.yml with the test's variables (ansible-playbook and the collection path come from `make`);
    then starts the deploy of the next wanted vars file in the background."""
    name = os.path.basename(varsfile)
    if name not in _deploys:
        _start_deploy(name)
    proc, t0, log = _deploys[name]
    rc = proc.wait()
    with open(log) as fh:
        text = fh.read()
    assert rc == 0, "site.yml failed:\n" + text[-8000:]
    timed("site.yml (%s), from its start" % name, t0)
    later = DEPLOY_ORDER[DEPLOY_ORDER.index(name) + 1:] if name in DEPLOY_ORDER else []
    for nxt in later:
        if nxt in wanted and nxt not in _deploys:
            _start_deploy(nxt)
            break


def wanted_vars(session):
    return {MODULE_VARS[os.path.basename(str(item.fspath))] for item in session.items
            if os.path.basename(str(item.fspath)) in MODULE_VARS}


def delete_namespace(api, namespace):
    if os.environ.get("ELASTIC_AIRFLOW_E2E_KEEP"):
        return
    try:
        client.CoreV1Api(api).delete_namespace(namespace)
    except client.rest.ApiException:
        pass


class Boot:
    """A deployed cluster running as local Airflow processes."""

    def __init__(self, api, venv, varsfile, namespace, cluster, engine, broker, api_port, log_port_base, tmp,
                 wanted=()):
        self.api_client, self.namespace, self.cluster = api, namespace, cluster
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.engine, self.broker = engine, broker
        self.tmp = tmp
        self.private_redis = None
        deploy(varsfile, wanted)
        t0 = time.time()
        self.config = harness.ClusterConfig(api, namespace, cluster)
        _unused, env = self.config.worker()
        db_url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        broker_url = env["AIRFLOW__CELERY__BROKER_URL"]
        ports = {"api-server": {8080: api_port}, "statsd": {9125: 19125},
                 "worker": {8793: log_port_base}, "flower": {5555: api_port + 1000}}
        if engine == "postgresql":
            start_service("postgresql")
            local = services_env("postgresql")
            harness.prepare_postgresql(local["POSTGRESQL_ADMIN_URL"], db_url)
            ports["database"] = {5432: int(local["POSTGRESQL_PORT"])}
        else:
            start_service("mariadb")
            local = services_env("mariadb")
            harness.prepare_mariadb(local["MARIADB_ADMIN_URL"], db_url)
            ports["database"] = {3306: int(local["MARIADB_PORT"])}
        if broker == "redis":
            password = harness.parse_url(broker_url)[2]
            self.private_redis = {"ELASTIC_AIRFLOW_CACHE": PRIVATE, "ELASTIC_AIRFLOW_REDIS_PORT": str(REDIS_PORT),
                                  "ELASTIC_AIRFLOW_REDIS_PASSWORD": password}
            redis_env = dict(os.environ, **self.private_redis)
            # a Redis of an earlier run may hold another password: start afresh
            subprocess.run([SERVICES, "stop", "redis"], env=redis_env, check=True, stdout=subprocess.DEVNULL)
            subprocess.run([SERVICES, "start", "redis"], env=redis_env, check=True, stdout=subprocess.DEVNULL)
            ports["broker"] = {6379: REDIS_PORT}
        else:
            start_service("rabbitmq")
            harness.prepare_rabbitmq(SERVICES, broker_url)
            port = urllib.parse.urlsplit(services_env("rabbitmq")["RABBITMQ_URL"]).port
            ports["broker"] = {5672: port}
        timed("local %s + %s with the Secrets' credentials" % (engine, broker), t0)
        self.home = os.path.join(tmp, "airflow-home")
        self.map = harness.LocalMap(self.config, ports, self.home)
        self.local_broker_url = self.map.value("AIRFLOW__CELERY__BROKER_URL", broker_url)
        self.stack = harness.Stack(self.config, self.map, venv, self.home, os.path.join(tmp, "logs"),
                                   os.path.join(HERE, "dags"), log_port_base)
        self.api = harness.Api("http://127.0.0.1:%d" % api_port)
        self.fleet = None

    def migrate(self):
        t0 = time.time()
        argv, env = self.config.migrate()
        self.stack.run("migrate", argv, env)
        timed("%s (%s)" % (harness.shell_words(argv), self.engine), t0)

    def start(self):
        t0 = time.time()
        for component in harness.COMPONENTS:
            self.stack.start_component(component)
        self.fleet = harness.WorkerFleet(self.stack, self.core, self.namespace,
                                         "app.kubernetes.io/instance=%s,app.kubernetes.io/component=worker"
                                         % self.cluster).start()
        harness.wait_for(self.healthy, 300, "api-server health: all healthy", interval=2, stack=self.stack)
        timed("components up, /api/v2/monitor/health all healthy (%s)" % self.engine, t0)

    def healthy(self):
        h = self.api.health()
        self.last_health = h
        return all(h.get(k, {}).get("status") == "healthy"
                   for k in ("metadatabase", "scheduler", "dag_processor", "triggerer")) and h

    def dag_known(self, dag_id):
        try:
            self.api.call("GET", "/api/v2/dags/%s" % dag_id)
            return True
        except RuntimeError:
            return False

    def run_dag(self, dag_id, conf, timeout=180):
        harness.wait_for(lambda: self.dag_known(dag_id), 120, "DAG %s parsed" % dag_id, stack=self.stack)
        self.api.unpause(dag_id)
        run = self.api.trigger(dag_id, conf)
        run_id = run["dag_run_id"]
        harness.wait_for(lambda: self.api.run(dag_id, run_id)["state"] in ("success", "failed"), timeout,
                         "run %s of %s" % (run_id, dag_id), stack=self.stack)
        return self.api.run(dag_id, run_id)

    def close(self):
        if self.fleet is not None:
            self.fleet.stop()
        self.stack.stop_all()
        if self.private_redis:
            subprocess.run([SERVICES, "stop", "redis"], env=dict(os.environ, **self.private_redis),
                           stdout=subprocess.DEVNULL, check=False)
        delete_namespace(self.api_client, self.namespace)

    def dump_logs(self):
        for name in sorted(self.stack.logs):
            sys.stdout.write("---- %s (tail)\n%s\n" % (name, self.stack.tail(name, 2500)))


def boot(request, api, venv, varsname, engine, broker, api_port, log_port_base, tmp_path_factory):
    import yaml
    varsfile = os.path.join(HERE, "vars", varsname)
    with open(varsfile) as fh:
        v = yaml.safe_load(fh)
    b = Boot(api, venv, varsfile, v["elastic_airflow_namespace"], v["elastic_airflow_cluster_name"], engine, broker,
             api_port, log_port_base, str(tmp_path_factory.mktemp(engine)), wanted_vars(request.session))
    try:
        b.migrate()
        b.start()
    except BaseException:
        b.dump_logs()
        b.close()
        raise
    return b


def booted(varsname, engine, broker, api_port, log_port_base):
    """A test module's fixture ``af``: the cluster of vars/<varsname> deployed and booted as local Airflow."""
    @pytest.fixture(scope="module", name="af")
    def af(request, api, airflow_venv, tmp_path_factory):
        b = boot(request, api, airflow_venv, varsname, engine, broker, api_port, log_port_base, tmp_path_factory)
        yield b
        if request.session.testsfailed:
            b.dump_logs()
        b.close()
    return af


def run_hello(af, tmp_path, what):
    """All components healthy, then one run of e2e_hello on a worker of the fleet; returns (health, pod)."""
    h = af.healthy()
    assert h, af.last_health
    t0 = time.time()
    out = str(tmp_path / "hello.txt")
    run = af.run_dag("e2e_hello", {"path": out})
    assert run["state"] == "success", run
    timed(what, t0)
    with open(out) as fh:
        run_id, pod = fh.read().split()
    assert run_id == run["dag_run_id"]
    # it ran in the worker process of a worker pod of the cluster
    assert pod in af.fleet.live(), (pod, af.fleet.live())
    return h, pod
