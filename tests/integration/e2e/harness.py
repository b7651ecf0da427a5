"""Real Airflow 3 from what the `airflow` role applied to a cluster.

The configuration is read back from the API server, never from the role's
templates: the ConfigMap <c>-airflow-env (envFrom), the env and secretKeyRefs
of each component's container (resolved through the referenced Secrets), the
container args (the component commands), and the args of the migrate Job.
Service host names (<svc>, <svc>.<ns>, <svc>.<ns>.svc.cluster.local) become
127.0.0.1 and their ports the ports of the local servers; the image's
/opt/airflow becomes a local AIRFLOW_HOME. Then each component runs as a
local process from the Airflow venv, exactly with its container's args.

Local differences, and only these, are added on top (see LOCAL_ONLY):
the api-server binds 127.0.0.1, and each worker process gets its own log
server port (in Kubernetes every pod has its own IP, here they share one).
`hostname` inside a worker's command prints the pod name (a shim on PATH),
as it does in the pod.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from kubernetes import client

IMAGE_HOME = "/opt/airflow"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Keys that hold a bare port of a Service: key -> Service suffix
PORT_KEYS = {
    "AIRFLOW__API__PORT": "api-server",
    "AIRFLOW__METRICS__STATSD_PORT": "statsd",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "worker",
}
# Added locally, never read from the cluster.
LOCAL_ONLY = {"AIRFLOW__API__HOST": "127.0.0.1"}


class ConfigError(AssertionError):
    pass


def _b64(data):
    import base64
    return base64.b64decode(data).decode()


class ClusterConfig:
    """What the airflow role applied to namespace/cluster, read back."""

    def __init__(self, api, namespace, cluster):
        self.api, self.namespace, self.cluster = api, namespace, cluster
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self._secrets = {}
        self.services = {}
        for svc in self.core.list_namespaced_service(namespace).items:
            self.services[svc.metadata.name] = [p.port for p in svc.spec.ports or []]

    def secret(self, name, key):
        if name not in self._secrets:
            self._secrets[name] = self.core.read_namespaced_secret(name, self.namespace).data or {}
        if key not in self._secrets[name]:
            raise ConfigError("Secret %s has no key %s" % (name, key))
        return _b64(self._secrets[name][key])

    def _container_env(self, pod_spec, container_name):
        containers = [c for c in pod_spec.containers if c.name == container_name]
        if not containers:
            raise ConfigError("no container %s" % container_name)
        c = containers[0]
        env = {}
        for src in c.env_from or []:
            if src.config_map_ref is not None:
                data = self.core.read_namespaced_config_map(src.config_map_ref.name, self.namespace).data or {}
                env.update({(src.prefix or "") + k: v for k, v in data.items()})
            elif src.secret_ref is not None:
                data = self.core.read_namespaced_secret(src.secret_ref.name, self.namespace).data or {}
                env.update({(src.prefix or "") + k: _b64(v) for k, v in data.items()})
        for e in c.env or []:
            if e.value_from is None:
                env[e.name] = e.value or ""
            elif e.value_from.secret_key_ref is not None:
                ref = e.value_from.secret_key_ref
                env[e.name] = self.secret(ref.name, ref.key)
            elif e.value_from.config_map_key_ref is not None:
                ref = e.value_from.config_map_key_ref
                env[e.name] = (self.core.read_namespaced_config_map(ref.name, self.namespace).data or {})[ref.key]
            else:
                raise ConfigError("env %s: unsupported valueFrom" % e.name)
        return list(c.command or []) + list(c.args or []), env

    def component(self, name):
        """(argv, env) of a component's main container (the triggerer is a StatefulSet, the others Deployments)."""
        read = self.apps.read_namespaced_stateful_set if name == "triggerer" else self.apps.read_namespaced_deployment
        workload = read("%s-%s" % (self.cluster, name), self.namespace)
        return self._container_env(workload.spec.template.spec, name)

    def worker_template(self):
        """The worker StatefulSet's pod template (a V1PodTemplateSpec)."""
        return self.apps.read_namespaced_stateful_set("%s-worker" % self.cluster, self.namespace).spec.template

    def worker(self, pod=None):
        """(argv, env) of a worker: of the pod when given, else of the StatefulSet's template."""
        if pod is not None:
            return self._container_env(pod.spec, "worker")
        return self._container_env(self.worker_template().spec, "worker")

    def migrate(self):
        """(argv, env) of the newest migrate Job."""
        jobs = self.batch.list_namespaced_job(
            self.namespace, label_selector="app.kubernetes.io/instance=%s,app.kubernetes.io/component=migrate"
            % self.cluster).items
        if not jobs:
            raise ConfigError("no migrate Job in %s" % self.namespace)
        job = max(jobs, key=lambda j: j.metadata.creation_timestamp)
        spec = job.spec.template.spec
        return self._container_env(spec, spec.containers[0].name)


class LocalMap:
    """Service host names and ports -> 127.0.0.1 and the local servers' ports."""

    def __init__(self, config, ports, home):
        """ports: {service suffix (database, broker, api-server, statsd, worker...): {cluster port: local port}}"""
        self.namespace, self.cluster, self.home = config.namespace, config.cluster, home
        self.ports = {}
        for suffix, table in ports.items():
            self.ports["%s-%s" % (config.cluster, suffix)] = table
        self.names = set(config.services) | set(self.ports)
        ns = re.escape(config.namespace)
        self.pattern = re.compile(
            r"(?<![\w.-])(?P<svc>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)(?P<dom>\.%s(?:\.svc(?:\.cluster\.local)?)?)?"
            r"(?::(?P<port>\d+))?(?![\w-])" % ns)

    def _port(self, svc, port):
        table = self.ports.get(svc)
        if table is None or int(port) not in table:
            raise ConfigError("no local port for %s:%s" % (svc, port))
        return table[int(port)]

    def value(self, key, value):
        if key in PORT_KEYS:
            return str(self._port("%s-%s" % (self.cluster, PORT_KEYS[key]), value))

        def sub(m):
            svc = m.group("svc")
            if svc not in self.names:
                return m.group(0)
            if m.group("port"):
                return "127.0.0.1:%d" % self._port(svc, m.group("port"))
            return "127.0.0.1"

        out = self.pattern.sub(sub, value)
        if out == IMAGE_HOME or out.startswith(IMAGE_HOME + "/"):
            out = self.home + out[len(IMAGE_HOME):]
        return out

    def argv(self, component, argv):
        """A container's args: `--port N` is the port of the component's Service."""
        out = [self.value("", a) for a in argv]
        for i in range(len(out) - 1):
            if out[i] == "--port":
                out[i + 1] = str(self._port("%s-%s" % (self.cluster, component), out[i + 1]))
        return out

    def env(self, env):
        out = {k: self.value(k, v) for k, v in env.items()}
        for k, v in out.items():
            ours = [n for n in self.names if n.startswith(self.cluster + "-")]
            if ".svc" in v or any(re.search(r"(?<![\w.-])%s(?![\w-])" % re.escape(n), v) for n in ours):
                raise ConfigError("%s still names a cluster service after mapping: %s" % (k, v))
        return out


def parse_url(url):
    """scheme, user, password, host, port, path of a SQLAlchemy/Celery URL."""
    u = urllib.parse.urlsplit(url)
    return (u.scheme, urllib.parse.unquote(u.username or ""), urllib.parse.unquote(u.password or ""),
            u.hostname, u.port, u.path.lstrip("/"))


def sql_quote(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


def prepare_postgresql(admin_url, url):
    """A fresh database and its owner role with exactly the URL's credentials."""
    _unused, user, password, _unused, _unused, db = parse_url(url)
    ident = '"%s"' % user.replace('"', '""')
    dbident = '"%s"' % db.replace('"', '""')
    for sql in ("DROP DATABASE IF EXISTS %s WITH (FORCE)" % dbident,
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s LOGIN; "
                "END IF; END$$" % (sql_quote(user), ident),
                "ALTER ROLE %s WITH LOGIN PASSWORD %s" % (ident, sql_quote(password)),
                "CREATE DATABASE %s OWNER %s" % (dbident, ident)):
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", admin_url, "-c", sql],
                           capture_output=True, text=True, check=False)
        if r.returncode:
            raise RuntimeError("psql: %s" % r.stderr)


def prepare_mariadb(admin_url, url):
    _unused, user, password, _unused, _unused, db = parse_url(url)
    _unused, auser, apw, host, port, _unused = parse_url(admin_url)

    def q(name):
        return "`%s`" % name.replace("`", "``")

    script = ";\n".join([
        "DROP DATABASE IF EXISTS %s" % q(db),
        "CREATE DATABASE %s CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" % q(db),
        "CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s" % (sql_quote(user), sql_quote(password)),
        "ALTER USER %s@'127.0.0.1' IDENTIFIED BY %s" % (sql_quote(user), sql_quote(password)),
        "GRANT ALL PRIVILEGES ON %s.* TO %s@'127.0.0.1'" % (q(db), sql_quote(user)),
    ]) + ";\n"
    r = subprocess.run(["mariadb", "--no-defaults", "-h", host, "-P", str(port), "-u", auser, "-p" + apw],
                       input=script, capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError("mariadb: %s" % r.stderr)


def prepare_rabbitmq(services_sh, url):
    """The broker user of the URL, with exactly its password, on the vhost of the URL."""
    _unused, user, password, _unused, _unused, vhost = parse_url(url)
    vhost = urllib.parse.unquote(vhost) or "/"
    ctl = [services_sh, "rabbitmqctl"]
    users = subprocess.run(ctl + ["list_users"], capture_output=True, text=True, check=True).stdout
    if user not in [line.split("\t")[0] for line in users.splitlines()]:
        subprocess.run(ctl + ["add_user", user, password], check=True, capture_output=True)
    else:
        subprocess.run(ctl + ["change_password", user, password], check=True, capture_output=True)
    subprocess.run(ctl + ["add_vhost", vhost], capture_output=True, check=False)  # fails harmlessly when it exists
    subprocess.run(ctl + ["set_permissions", "-p", vhost, user, ".*", ".*", ".*"], check=True, capture_output=True)


class Stack:
    """Local Airflow processes from a ClusterConfig."""

    def __init__(self, config, localmap, venv, home, log_dir, dags_src, log_port_base):
        self.config, self.map, self.venv, self.home, self.log_dir = config, localmap, venv, home, log_dir
        self.procs = {}
        self.logs = {}
        self.log_port_base = log_port_base
        self._log_ports = {}
        self.lock = threading.Lock()
        os.makedirs(log_dir, exist_ok=True)
        self.shim = os.path.join(home, "shim")
        os.makedirs(self.shim, exist_ok=True)
        with open(os.path.join(self.shim, "hostname"), "w") as fh:
            fh.write('#!/bin/sh\n# the pod name, as `hostname` prints it in the pod\n'
                     'if [ -n "$E2E_POD_NAME" ]; then echo "$E2E_POD_NAME"; else exec /bin/hostname "$@"; fi\n')
        os.chmod(os.path.join(self.shim, "hostname"), 0o755)
        dags = os.path.join(home, "dags")
        os.makedirs(dags, exist_ok=True)
        for f in os.listdir(dags_src):
            if f.endswith(".py"):
                with open(os.path.join(dags_src, f)) as src, open(os.path.join(dags, f), "w") as dst:
                    dst.write(src.read())

    def env(self, env, extra=None):
        out = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k not in (
            "PYTHONPATH", "VIRTUAL_ENV", "KUBECONFIG")}
        out.update(self.map.env(env))
        out.update(LOCAL_ONLY)
        out.update({"AIRFLOW_HOME": self.home, "PYTHONUNBUFFERED": "1", "VIRTUAL_ENV": self.venv,
                    "PATH": "%s:%s/bin:%s" % (self.shim, self.venv, os.environ.get("PATH", "/usr/bin:/bin"))})
        out.update(extra or {})
        return out

    def run(self, name, argv, env, timeout=600):
        """Run to completion (the migrate Job)."""
        log = os.path.join(self.log_dir, "%s.log" % name)
        with open(log, "ab") as fh:
            r = subprocess.run(argv, env=self.env(env), cwd=self.home, stdout=fh, stderr=subprocess.STDOUT,
                               timeout=timeout, check=False)
        if r.returncode:
            raise RuntimeError("%s exited %d:\n%s" % (argv, r.returncode, self.tail(name)))

    def start(self, name, argv, env, extra=None):
        log = os.path.join(self.log_dir, "%s.log" % name)
        fh = open(log, "ab")
        proc = subprocess.Popen(argv, env=self.env(env, extra), cwd=self.home, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        with self.lock:
            self.procs[name] = proc
            self.logs[name] = log
        return proc

    def start_component(self, component):
        argv, env = self.config.component(component)
        return self.start(component, self.map.argv(component, argv), env)

    def log_port(self, pod):
        with self.lock:
            if pod not in self._log_ports:
                self._log_ports[pod] = self.log_port_base + len(self._log_ports)
            return self._log_ports[pod]

    def start_worker(self, pod):
        """One Celery worker process for the pod object, with the pod's own spec."""
        name = pod.metadata.name
        argv, env = self.config.worker(pod)
        return self.start("worker-" + name, argv, env, {
            "E2E_POD_NAME": name, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_port(name))})

    def signal(self, name, sig):
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, name, timeout=30):
        proc = self.procs.get(name)
        if proc is None:
            return
        self.signal(name, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.signal(name, signal.SIGKILL)  # what is left of the group
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self):
        names = list(self.procs)
        for n in names:
            self.signal(n, signal.SIGTERM)
        deadline = time.time() + 30
        for n in names:
            try:
                self.procs[n].wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for n in names:
            self.signal(n, signal.SIGKILL)

    def tail(self, name, n=4000):
        path = self.logs.get(name) or os.path.join(self.log_dir, "%s.log" % name)
        try:
            with open(path, "rb") as fh:
                return fh.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def dead(self):
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}


class WorkerFleet:
    """One real Airflow Celery worker process per live worker pod.

    A worker starts when its pod appears and gets a warm shutdown (SIGTERM)
    once the pod is deleted, as the kubelet would do; `kill` ends a worker's
    whole process group with SIGKILL (the container dying), and the process
    is started again for the same pod (restartPolicy Always).
    """

    def __init__(self, stack, core, namespace, selector):
        self.stack, self.core, self.namespace, self.selector = stack, core, namespace, selector
        self.started, self.deleted, self.killed = {}, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
            except Exception:  # the apiserver is busy: try again
                time.sleep(1)
                continue
            live = {p.metadata.name: p for p in pods if p.metadata.deletion_timestamp is None}
            for name, pod in live.items():
                if name not in self.started:
                    self.stack.start_worker(pod)
                    self.started[name] = time.time()
            for name in list(self.started):
                if name not in live and name not in self.deleted:
                    self.deleted[name] = time.time()
                    self.stack.signal("worker-" + name, signal.SIGTERM)
            self._stop.wait(0.5)

    def live(self):
        return [n for n in self.started if n not in self.deleted]

    def kill(self, pod, restart_after=5.0):
        self.stack.signal("worker-" + pod, signal.SIGKILL)
        self.killed[pod] = time.time()

        def restart():
            time.sleep(restart_after)
            if pod not in self.deleted and not self._stop.is_set():
                self.stack.start_worker(self.core.read_namespaced_pod(pod, self.namespace))
        threading.Thread(target=restart, daemon=True).start()

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        for name in self.started:
            self.stack.signal("worker-" + name, signal.SIGTERM)


class Api:
    """The Airflow REST API of the local api-server."""

    def __init__(self, base):
        self.base = base.rstrip("/")

    def call(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raise RuntimeError("%s %s -> %d %s" % (method, path, e.code, e.read()[:500])) from e

    def health(self):
        return self.call("GET", "/api/v2/monitor/health", timeout=10)

    def unpause(self, dag_id):
        return self.call("PATCH", "/api/v2/dags/%s" % dag_id, {"is_paused": False})

    def trigger(self, dag_id, conf, run_id=None):
        body = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.call("POST", "/api/v2/dags/%s/dagRuns" % dag_id, body)

    def run(self, dag_id, run_id):
        return self.call("GET", "/api/v2/dags/%s/dagRuns/%s" % (dag_id, urllib.parse.quote(run_id)))

    def task_instances(self, dag_id, run_id="~"):
        out, offset = [], 0
        while True:
            page = self.call("GET", "/api/v2/dags/%s/dagRuns/%s/taskInstances?limit=100&offset=%d"
                             % (dag_id, urllib.parse.quote(run_id), offset))
            out += page["task_instances"]
            offset += len(page["task_instances"])
            if not page["task_instances"] or offset >= page["total_entries"]:
                return out

    def tries(self, dag_id, run_id, task_id):
        return self.call("GET", "/api/v2/dags/%s/dagRuns/%s/taskInstances/%s/tries"
                         % (dag_id, urllib.parse.quote(run_id), task_id))["task_instances"]


def wait_for(predicate, timeout, what, interval=1.0, stack=None):
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            value = predicate()
        except Exception as e:  # not up yet
            value, last = None, e
        if value:
            return value
        if stack is not None:
            dead = {n: rc for n, rc in stack.dead().items() if not n.startswith("worker-")}
            if dead:
                raise AssertionError("while waiting for %s, %s exited:\n%s" % (
                    what, dead, "\n".join("--- %s\n%s" % (n, stack.tail(n)) for n in dead)))
        if time.time() > deadline:
            raise AssertionError("timed out after %ss waiting for %s (last error: %r)" % (timeout, what, last))
        time.sleep(interval)


def shell_words(argv):
    return " ".join(shlex.quote(a) for a in argv)
