"""The images of images/ keep the contract our manifests rely on.

Each image runs under containerd with `ctr run`, the way a pod of our
manifests runs it: the image's entrypoint with the manifest's args (or the
manifest's command), the manifest's environment and user, a volume where the
manifest mounts one. Every check talks to the container over its own loopback
(`ctr task exec`, or a host tool in its network namespace via nsenter), so
nothing listens outside it.

    pytest images/test_images.py                       # a private containerd
    ELASTIC_AIRFLOW_IMAGES_CONTAINERD=/path/containerd.sock pytest images/test_images.py

Without ELASTIC_AIRFLOW_IMAGES_CONTAINERD it starts a private containerd
(Debian's 1.6, no CRI plugin) under a temporary directory, imports the images
with images/build.sh --import (building what the cache lacks), and stops it at
the end. With it, it uses that containerd (the images must be imported into
its k8s.io namespace, where the containers run too, named t-<image>-<random>;
the CRI plugin ignores containers it did not create).

Two differences from a kubelet are worked around here and nowhere else: ctr
has no --user, so a manifest's runAsUser/runAsGroup/fsGroup becomes a
`setpriv` prefix (in the Debian images, which have one; the others set their
user in the image), and ctr's default spec mounts a tmpfs on /run (the CRI
plugin does not), so the socket directories under /run get a tmpfs of their
own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = "localhost/elastic-airflow"
IMAGES = {
    "pause": "3.10",
    "coredns": "1.12.4",
    "postgresql": "15.20",
    "pgbouncer": "1.18.0",
    "mariadb": "10.11.19",
    "redis": "7.0.15",
    "rabbitmq": "3.10.8",
    "airflow": "3.3.2",
    "prometheus": "3.5.0",
    "statsd-exporter": "0.28.0",
    "kube-state-metrics": "2.15.0",
}
# Where a kubelet's containerd keeps images (build.sh --import puts them there).
IMAGE_NS = "k8s.io"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ctr") or not shutil.which("containerd"),
    reason="needs root, ctr and containerd",
)


def image(name: str) -> str:
    return f"{REPO}/{name}:{IMAGES[name]}"


def as_user(uid: int, gid: int, groups: tuple[int, ...] = ()) -> list[str]:
    """A kubelet's runAsUser/runAsGroup/fsGroup, for ctr (which has no --user)."""
    extra = ",".join(str(g) for g in groups) if groups else str(gid)
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={extra}", "--inh-caps=-all"]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # retried until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


class Containerd:
    def __init__(self, socket_path: str, namespace: str):
        self.socket = socket_path
        self.namespace = namespace

    def ctr(self, *args: str, namespace: str | None = None, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        cmd = ["ctr", "--address", self.socket, "-n", namespace or self.namespace, *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout, input=input)

    def image_config(self, ref: str) -> dict:
        """The OCI image config of an imported image."""
        out = self.ctr("images", "ls", f"name=={ref}", namespace=IMAGE_NS).stdout.splitlines()
        assert len(out) == 2, f"{ref} is not imported: {out}"
        manifest_digest = out[1].split()[2]
        manifest = json.loads(self.ctr("content", "get", manifest_digest, namespace=IMAGE_NS).stdout)
        return json.loads(self.ctr("content", "get", manifest["config"]["digest"], namespace=IMAGE_NS).stdout)


class Container:
    def __init__(self, cd: Containerd, name: str, log: Path):
        self.cd, self.name, self.log = cd, name, log

    @property
    def pid(self) -> int:
        for line in self.cd.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields[0] == self.name and fields[2] == "RUNNING":
                return int(fields[1])
        raise AssertionError(f"{self.name} is not running; its log:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def exec(self, *argv: str, user: str | None = None, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess:
        args = ["tasks", "exec", "--exec-id", f"x{uuid.uuid4().hex[:8]}"]
        if user:
            args += ["--user", user]
        return self.cd.ctr(*args, self.name, *argv, check=check, timeout=timeout)

    def in_netns(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A host command in the container's network namespace (its loopback)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", *argv], capture_output=True, text=True,
                              timeout=timeout)

    def status(self) -> str:
        for line in self.cd.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields[0] == self.name:
                return fields[2]
        return "GONE"

    def stop(self, sig: str = "SIGTERM", timeout: float = 60) -> None:
        if self.status() == "RUNNING":
            self.cd.ctr("tasks", "kill", "-s", sig, self.name, check=False)
            try:
                wait_for(lambda: self.status() != "RUNNING", timeout, f"{self.name} to stop")
            except AssertionError:
                self.cd.ctr("tasks", "kill", "-s", "SIGKILL", self.name, check=False)
                wait_for(lambda: self.status() != "RUNNING", 10, f"{self.name} to die")

    def exit_status(self) -> int:
        # `ctr tasks delete` of a stopped task warns "... exit code N" unless N is 0.
        out = self.cd.ctr("tasks", "delete", self.name, check=False)
        m = re.search(r"exit with non-zero exit code (\d+)", out.stderr)
        if m:
            return int(m.group(1))
        assert out.returncode == 0, out.stderr
        return 0


@pytest.fixture(scope="session")
def containerd(tmp_path_factory):
    shared = os.environ.get("ELASTIC_AIRFLOW_IMAGES_CONTAINERD")
    if shared:
        yield Containerd(shared, IMAGE_NS)
        return
    # A private containerd, all its state in a short temporary directory
    # (socket paths are limited to about 100 characters).
    d = Path(tempfile.mkdtemp(prefix="ea-img-"))
    config = d / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        version = 2
        root = "{d}/root"
        state = "{d}/state"
        disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                            "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                            "io.containerd.snapshotter.v1.devmapper"]
        [grpc]
          address = "{d}/containerd.sock"
        [ttrpc]
          address = "{d}/containerd.sock.ttrpc"
        [plugins."io.containerd.internal.v1.opt"]
          path = "{d}/opt"
        """))
    log = open(d / "containerd.log", "w")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log,
                            start_new_session=True)
    sock = f"{d}/containerd.sock"
    try:
        wait_for(lambda: os.path.exists(sock), 20, "containerd's socket")
        subprocess.run([str(HERE / "build.sh"), "--import", sock, *IMAGES], check=True,
                       stdout=subprocess.DEVNULL)
        yield Containerd(sock, IMAGE_NS)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", str(d / "root")], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def run(containerd, tmp_path):
    """run(image_name, argv=None, env={}, mounts=[...]) -> a running Container.

    argv None runs the image's entrypoint + cmd; a list is the whole command
    line (a manifest's `command`, or the image's entrypoint + the manifest's
    `args`: see entrypoint_with()).
    """
    started: list[Container] = []

    def _run(name: str, argv: list[str] | None = None, env: dict | None = None,
             mounts: list[str] = (), netns_of: Container | None = None,
             pidns_of: Container | None = None) -> Container:
        cid = f"t-{name}-{uuid.uuid4().hex[:6]}"
        log = tmp_path / f"{cid}.log"
        args = ["run", "-d", "--log-uri", f"file://{log}"]
        for k, v in (env or {}).items():
            args += ["--env", f"{k}={v}"]
        for m in mounts:
            args += ["--mount", m]
        if netns_of is not None:
            args += ["--with-ns", f"network:/proc/{netns_of.pid}/ns/net"]
        if pidns_of is not None:
            args += ["--with-ns", f"pid:/proc/{pidns_of.pid}/ns/pid"]
        containerd.ctr(*args, image(name), cid, *(argv or []))
        c = Container(containerd, cid, log)
        started.append(c)
        return c

    yield _run
    for c in started:
        c.stop(timeout=30)
        containerd.ctr("tasks", "delete", c.name, check=False)
        containerd.ctr("containers", "delete", c.name, check=False)


def entrypoint_with(cd: Containerd, name: str, args: list[str]) -> list[str]:
    """What a kubelet runs for a container with `args` and no `command`."""
    return cd.image_config(image(name))["config"]["Entrypoint"] + args


def volume(tmp_path: Path, name: str, uid: int, gid: int) -> Path:
    """An empty volume directory as fsGroup leaves it: group gid, setgid."""
    p = tmp_path / name
    p.mkdir()
    os.chown(p, uid, gid)
    p.chmod(0o2775)
    return p


def http_get(c: Container, port: int, path: str) -> tuple[int, str]:
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)\n"
            "    print(r.status); print(r.read().decode(errors='replace'))\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n")
    out = c.in_netns("python3", "-c", code)
    if out.returncode != 0:
        raise AssertionError(out.stderr)
    status, _, body = out.stdout.partition("\n")
    return int(status), body


# --- pause ----------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """The host pids of pid's children, zombies included."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_pause(containerd, run):
    cfg = containerd.image_config(image("pause"))["config"]
    assert cfg["Entrypoint"] == ["/pause"]
    assert cfg["User"] == "65535:65535"
    c = run("pause")
    ps = subprocess.run(["ps", "-o", "uid=,comm=", "-p", str(c.pid)], capture_output=True, text=True).stdout
    assert ps.split() == ["65535", "pause"]
    # A pod sharing its PID namespace: an orphan of another container is
    # re-parented to pause, which reaps it when it exits.
    other = run("redis", ["sh", "-c", "(sleep 2 &); exec sleep 60"], pidns_of=c)
    orphan = wait_for(lambda: _children(c.pid), 10, "the orphan under pause", interval=0.1)
    wait_for(lambda: not _children(c.pid), 10, f"pause to reap {orphan}")
    other.stop("SIGKILL", timeout=10)
    start = time.monotonic()
    c.stop("SIGTERM", timeout=5)
    assert time.monotonic() - start < 3
    assert c.exit_status() == 0


# --- coredns --------------------------------------------------------------------

def dns_query(c: Container, port: int, name: str) -> bytes:
    code = ("import socket, struct, sys\n"
            "q = struct.pack('>HHHHHH', 7, 0x100, 1, 0, 0, 0)\n"
            f"q += b''.join(bytes([len(p)]) + p.encode() for p in {name!r}.split('.')) + b'\\0'\n"
            "q += struct.pack('>HH', 1, 1)\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
            f"s.sendto(q, ('127.0.0.1', {port})); sys.stdout.buffer.write(s.recv(512))\n")
    out = subprocess.run(["nsenter", "-t", str(c.pid), "-n", "python3", "-c", code], capture_output=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_coredns(containerd, run, tmp_path):
    cfg = containerd.image_config(image("coredns"))["config"]
    assert cfg["Entrypoint"] == ["/coredns"]
    assert cfg["User"] == "65532:65532"
    corefile = tmp_path / "Corefile"
    corefile.write_text('cluster.local:53 {\n  template IN A cluster.local {\n'
                        '    answer "{{ .Name }} 60 IN A 192.0.2.7"\n  }\n}\n')
    # Port 53 as a non-root user: the binary has cap_net_bind_service, which
    # a pod adds with capabilities.add [NET_BIND_SERVICE].
    c = run("coredns", entrypoint_with(containerd, "coredns", ["-conf", "/etc/coredns/Corefile"]),
            mounts=[f"type=bind,src={corefile},dst=/etc/coredns/Corefile,options=rbind:ro"])
    answer = wait_for(lambda: dns_query(c, 53, "airflow.cluster.local"), 15, "a DNS answer")
    assert answer[:2] == struct.pack(">H", 7)
    assert answer.endswith(bytes([192, 0, 2, 7]))
    ps = subprocess.run(["ps", "-o", "uid=", "-p", str(c.pid)], capture_output=True, text=True).stdout
    assert ps.strip() == "65532"


# --- database -------------------------------------------------------------------

POSTGRES_ENV = {
    "POSTGRES_USER": "airflow", "POSTGRES_DB": "airflow", "POSTGRES_PASSWORD": "pg-s3cret'\"",
    "PGDATA": "/var/lib/postgresql/data/pgdata",
}


@pytest.fixture
def postgresql(containerd, run, tmp_path):
    data = volume(tmp_path, "pgdata", 0, 999)
    # statefulset.yaml.j2: args ["-c", "max_connections=..."], runAsUser/Group 999, fsGroup 999.
    argv = as_user(999, 999) + entrypoint_with(containerd, "postgresql", ["-c", "max_connections=123"])
    c = run("postgresql", argv, env=POSTGRES_ENV, mounts=[
        f"type=bind,src={data},dst=/var/lib/postgresql/data,options=rbind:rw",
        "type=tmpfs,src=tmpfs,dst=/run/postgresql,options=mode=1777"])
    probe = ["pg_isready", "--host=127.0.0.1", "--port=5432", "--username=airflow", "--dbname=airflow"]
    wait_for(lambda: c.exec(*probe, check=False).returncode == 0, 60, "pg_isready")
    return c


def test_postgresql(containerd, postgresql):
    cfg = containerd.image_config(image("postgresql"))["config"]
    assert cfg["Entrypoint"] == ["docker-entrypoint.sh"]
    assert cfg["StopSignal"] == "SIGINT"
    c = postgresql
    psql = ["psql", "--host=127.0.0.1", "--username=airflow", "--dbname=airflow", "-Atc"]
    ok = c.exec("env", f"PGPASSWORD={POSTGRES_ENV['POSTGRES_PASSWORD']}", *psql,
                "select current_setting('max_connections'), current_user, current_setting('listen_addresses'),"
                " (select usesuper from pg_user where usename = current_user)")
    assert ok.stdout.strip() == "123|airflow|*|t"
    # Network connections need the password.
    bad = c.exec("env", "PGPASSWORD=wrong", *psql, "select 1", check=False)
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr
    ps = subprocess.run(["ps", "-o", "uid=,gid=,comm=", "-p", str(c.pid)], capture_output=True, text=True)
    assert ps.stdout.split() == ["999", "999", "postgres"]
    # The server is PID 1 (no shell in between): SIGINT is a fast shutdown.
    c.stop("SIGINT", timeout=30)
    assert c.exit_status() == 0


def test_postgresql_refuses_no_password(containerd, run, tmp_path):
    data = volume(tmp_path, "pgdata", 0, 999)
    env = {k: v for k, v in POSTGRES_ENV.items() if k != "POSTGRES_PASSWORD"}
    c = run("postgresql", as_user(999, 999) + entrypoint_with(containerd, "postgresql", []), env=env,
            mounts=[f"type=bind,src={data},dst=/var/lib/postgresql/data,options=rbind:rw"])
    wait_for(lambda: c.status() == "STOPPED", 20, "the entrypoint to give up")
    assert c.exit_status() == 1
    assert "POSTGRES_PASSWORD is not set" in c.logs()


def test_pgbouncer(containerd, run, postgresql, tmp_path):
    """pgbouncer.yaml.j2's container in front of the postgresql image: its command as 65534:65534
    (fsGroup 65534) with the Secret's two files mounted read-only at /etc/pgbouncer; SCRAM from the
    client and to the server; the admin console for stats_users; the preStop hook's SIGINT to PID 1."""
    cfg = containerd.image_config(image("pgbouncer"))["config"]
    assert cfg["Entrypoint"] == ["docker-entrypoint.sh"]
    assert cfg["Cmd"] == ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
    assert "6432/tcp" in cfg["ExposedPorts"]
    pw = POSTGRES_ENV["POSTGRES_PASSWORD"]
    conf = tmp_path / "pgbouncer"
    conf.mkdir()
    # As database_pgbouncer_ini renders it (max_prepared_statements left out: 1.18).
    (conf / "pgbouncer.ini").write_text(textwrap.dedent("""\
        [databases]
        airflow = host=127.0.0.1 port=5432 dbname=airflow

        [pgbouncer]
        listen_addr = *
        listen_port = 6432
        unix_socket_dir =
        auth_type = scram-sha-256
        auth_file = /etc/pgbouncer/userlist.txt
        stats_users = airflow
        pool_mode = transaction
        default_pool_size = 5
        max_client_conn = 50
        ignore_startup_parameters = extra_float_digits
        server_tls_sslmode = prefer
        log_connections = 0
        log_disconnections = 0
        """))
    (conf / "userlist.txt").write_text('"airflow" "%s"\n' % pw.replace('"', '""'))
    for f in conf.iterdir():  # a Secret volume: defaultMode 0440, group fsGroup
        os.chown(f, 0, 65534)
        f.chmod(0o440)
    c = run("pgbouncer", as_user(65534, 65534) + ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"],
            mounts=[f"type=bind,src={conf},dst=/etc/pgbouncer,options=rbind:ro"], netns_of=postgresql)
    psql = ["psql", "--host=127.0.0.1", "--port=6432", "--username=airflow", "-Atc"]
    ok = wait_for(lambda: postgresql.exec("env", f"PGPASSWORD={pw}", *psql, "select current_user, 6 * 7",
                                          "airflow", check=False), 30, "a query through PgBouncer")
    assert ok.returncode == 0 and ok.stdout.strip() == "airflow|42", ok.stderr
    bad = postgresql.exec("env", "PGPASSWORD=wrong", *psql, "select 1", "airflow", check=False)
    # PgBouncer answers a wrong SCRAM password with "SASL authentication failed".
    assert bad.returncode != 0 and "authentication failed" in bad.stderr, bad.stderr
    pools = postgresql.exec("env", f"PGPASSWORD={pw}", *psql, "SHOW POOLS", "pgbouncer").stdout
    assert any(line.startswith("airflow|airflow|") and "|transaction" in line for line in pools.splitlines()), pools
    ps = subprocess.run(["ps", "-o", "uid=,gid=,comm=", "-p", str(c.pid)], capture_output=True, text=True)
    assert ps.stdout.split() == ["65534", "65534", "pgbouncer"]
    # The manifest's preStop hook (its sleeps aside): SIGINT to PID 1, a safe shutdown.
    c.exec("sh", "-c", "kill -INT 1", user="65534")
    wait_for(lambda: c.status() != "RUNNING", 20, "PgBouncer to stop on SIGINT")
    assert c.exit_status() == 0, c.logs()


def test_pgbouncer_default_entrypoint_drops_root(containerd, run, tmp_path):
    """Upstream's image starts as root and runs PgBouncer as nobody: so does our entrypoint."""
    c = run("pgbouncer")
    wait_for(lambda: subprocess.run(["ps", "-o", "uid=,comm=", "-p", str(c.pid)], capture_output=True,
                                    text=True).stdout.split() == ["65534", "pgbouncer"], 20, "pgbouncer as nobody")


MYSQL_ENV = {"MYSQL_DATABASE": "airflow", "MYSQL_USER": "airflow", "MYSQL_PASSWORD": "my-s3cret'\"\\",
             "MYSQL_RANDOM_ROOT_PASSWORD": "yes"}


def test_mariadb(containerd, run, tmp_path):
    cfg = containerd.image_config(image("mariadb"))["config"]
    assert cfg["Entrypoint"] == ["docker-entrypoint.sh"]
    data = volume(tmp_path, "mysql", 0, 999)
    args = ["--datadir=/var/lib/mysql/data", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci", "--max-connections=77"]
    c = run("mariadb", as_user(999, 999) + entrypoint_with(containerd, "mariadb", args), env=MYSQL_ENV, mounts=[
        f"type=bind,src={data},dst=/var/lib/mysql,options=rbind:rw",
        "type=tmpfs,src=tmpfs,dst=/run/mysqld,options=mode=1777"])
    probe = ["mysqladmin", "ping", "--host=127.0.0.1", "--port=3306", "--silent"]
    wait_for(lambda: c.exec(*probe, check=False).returncode == 0, 90, "mysqladmin ping")
    sql = ["mariadb", "--host=127.0.0.1", "--user=airflow", f"--password={MYSQL_ENV['MYSQL_PASSWORD']}",
           "--batch", "--skip-column-names", "airflow", "-e"]
    out = c.exec(*sql, "select @@max_connections, current_user(), @@character_set_server, @@collation_server")
    assert out.stdout.split() == ["77", "airflow@%", "utf8mb4", "utf8mb4_unicode_ci"]
    created = c.exec(*sql, "create table t (i int); insert into t values (1); select count(*) from t")
    assert created.stdout.strip() == "1"
    # The random root password was printed once, and is root's.
    line = [x for x in c.logs().splitlines() if x.startswith("GENERATED ROOT PASSWORD: ")]
    assert len(line) == 1
    root_pw = line[0].split(": ", 1)[1]
    assert c.exec("mariadb", "--host=127.0.0.1", "--user=root", f"--password={root_pw}",
                  "-e", "select 1").returncode == 0
    assert (data / "data" / "mysql").is_dir()
    ps = subprocess.run(["ps", "-o", "uid=,gid=,comm=", "-p", str(c.pid)], capture_output=True, text=True)
    assert ps.stdout.split() == ["999", "999", "mariadbd"]


# --- broker ---------------------------------------------------------------------

def test_redis(containerd, run, tmp_path):
    data = volume(tmp_path, "data", 0, 999)
    # statefulset.yaml.j2 (redis, persistence on): its command verbatim.
    command = ["sh", "-c", "printf 'requirepass %s\\n' \"$REDIS_PASSWORD\" > /tmp/redis.conf && "
               "exec redis-server /tmp/redis.conf --dir /data --appendonly yes"]
    c = run("redis", as_user(999, 999) + command, env={"REDIS_PASSWORD": "rd-s3cret"},
            mounts=[f"type=bind,src={data},dst=/data,options=rbind:rw"])
    probe = ["sh", "-c", "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli -h 127.0.0.1 ping | grep -q PONG"]
    wait_for(lambda: c.exec(*probe, check=False).returncode == 0, 30, "the readiness probe")
    assert "NOAUTH" in c.exec("redis-cli", "-h", "127.0.0.1", "ping").stdout
    assert (data / "appendonlydir").is_dir()
    assert (data / "appendonlydir").stat().st_uid == 999
    cfg = containerd.image_config(image("redis"))["config"]
    assert cfg["Entrypoint"] == ["docker-entrypoint.sh"] and cfg["WorkingDir"] == "/data"


def test_redis_default_entrypoint(containerd, run):
    # `docker run redis`: root drops to redis (999), protected mode off.
    c = run("redis")
    wait_for(lambda: c.exec("redis-cli", "-h", "127.0.0.1", "ping", check=False).stdout.strip() == "PONG", 30,
             "redis-cli ping")
    ps = subprocess.run(["ps", "-o", "uid=,comm=", "-p", str(c.pid)], capture_output=True, text=True).stdout
    assert ps.split() == ["999", "redis-server"]
    assert c.exec("redis-cli", "config", "get", "protected-mode").stdout.split()[-1] == "no"


def test_rabbitmq(containerd, run, tmp_path):
    data = volume(tmp_path, "rabbitmq", 0, 999)
    # ctr gives the container the host's name, which its /etc/hosts lacks;
    # a pod's /etc/hosts has the pod's name.
    env = {"RABBITMQ_DEFAULT_USER": "airflow", "RABBITMQ_DEFAULT_PASS": "rq-s3cret",
           "RABBITMQ_NODENAME": "rabbit@localhost"}
    c = run("rabbitmq", as_user(999, 999) + entrypoint_with(containerd, "rabbitmq", ["rabbitmq-server"]),
            env=env, mounts=[f"type=bind,src={data},dst=/var/lib/rabbitmq,options=rbind:rw"])
    # The manifest's readinessProbe starts after initialDelaySeconds: 10. (A
    # CLI call in the container's first moments was seen to race the
    # entrypoint: an ENOENT writing conf.d, or a 60 s authentication time-out.)
    time.sleep(10)
    wait_for(lambda: c.exec("rabbitmq-diagnostics", "-q", "ping", user="999", check=False, timeout=30).returncode == 0,
             120, "rabbitmq-diagnostics -q ping", interval=2)
    # The node answers pings a moment before its boot steps create the user.
    wait_for(lambda: c.exec("rabbitmqctl", "-q", "authenticate_user", "airflow", "rq-s3cret", user="999",
                            check=False).returncode == 0, 60, "the default user", interval=2)
    assert c.exec("rabbitmqctl", "-q", "authenticate_user", "airflow", "wrong", user="999",
                  check=False).returncode != 0
    status, body = http_get(c, 15692, "/metrics")
    assert status == 200 and "rabbitmq_" in body
    amqp = c.in_netns("python3", "-c", "import socket; s = socket.create_connection(('127.0.0.1', 5672));"
                      " s.sendall(b'AMQP\\x00\\x00\\x09\\x01'); print(s.recv(1)[0])")
    assert amqp.stdout.strip() == "1"  # a Connection.Start method frame
    assert (data / "mnesia").is_dir()


# --- airflow --------------------------------------------------------------------

AIRFLOW_ENV = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}


def test_airflow_image_contract(containerd, run):
    cfg = containerd.image_config(image("airflow"))["config"]
    assert cfg["Entrypoint"] == ["/usr/bin/dumb-init", "--", "/entrypoint"]
    assert cfg["User"] == "50000:0"
    assert "AIRFLOW_HOME=/opt/airflow" in cfg["Env"]
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "8793/tcp", "5555/tcp"}
    script = textwrap.dedent("""\
        set -e
        id -u; id -g
        command -v airflow celery python dumb-init
        for d in /opt/airflow/dags /opt/airflow/logs /opt/airflow/plugins; do touch $d/w && rm $d/w; done
        python -c 'import airflow.providers.celery, airflow.providers.cncf.kubernetes, airflow.providers.postgres, \
        airflow.providers.mysql, airflow.providers.redis, kubernetes, celery, kombu, MySQLdb, psycopg2, statsd, flower'
        airflow version
        """)
    c = run("airflow", entrypoint_with(containerd, "airflow", ["bash", "-c", script]),
            env={**AIRFLOW_ENV, "CONNECTION_CHECK_MAX_COUNT": "0"})
    wait_for(lambda: c.status() == "STOPPED", 120, "the script")
    assert c.exit_status() == 0, c.logs()
    lines = c.logs().split()
    assert lines[:2] == ["50000", "0"]
    assert lines[-1] == "3.3.2"


def test_airflow_waits_for_the_database(containerd, run):
    env = {**AIRFLOW_ENV, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://a:b@127.0.0.1:5999/x",
           "CONNECTION_CHECK_MAX_COUNT": "2", "CONNECTION_CHECK_SLEEP_TIME": "1"}
    c = run("airflow", entrypoint_with(containerd, "airflow", ["airflow", "version"]), env=env)
    wait_for(lambda: c.status() == "STOPPED", 120, "the entrypoint to give up")
    assert c.exit_status() == 1
    assert "airflow db check" in c.logs()


def test_airflow_db_migrate_on_postgresql(containerd, run, postgresql):
    pw = POSTGRES_ENV["POSTGRES_PASSWORD"]
    from urllib.parse import quote
    conn = f"postgresql+psycopg2://airflow:{quote(pw, safe='')}@127.0.0.1:5432/airflow"
    env = {**AIRFLOW_ENV,
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
           "CONNECTION_CHECK_MAX_COUNT": "10", "CONNECTION_CHECK_SLEEP_TIME": "1"}
    # migrate-job.yaml.j2: args ["airflow", "db", "migrate"]; then the
    # probe form of the other pods: `exec /entrypoint airflow ...`.
    c = run("airflow", entrypoint_with(containerd, "airflow", ["airflow", "db", "migrate"]), env=env,
            netns_of=postgresql)
    wait_for(lambda: c.status() == "STOPPED", 600, "airflow db migrate", interval=2)
    assert c.exit_status() == 0, c.logs()[-3000:]
    check = run("airflow", ["sh", "-c", "CONNECTION_CHECK_MAX_COUNT=0 AIRFLOW__LOGGING__LOGGING_LEVEL=ERROR "
                            "exec /entrypoint airflow db check-migrations --migration-wait-timeout=5"],
                env=env, netns_of=postgresql)
    wait_for(lambda: check.status() == "STOPPED", 180, "check-migrations", interval=2)
    assert check.exit_status() == 0, check.logs()[-3000:]


# --- monitoring -----------------------------------------------------------------

def test_prometheus(containerd, run, tmp_path):
    cfg = containerd.image_config(image("prometheus"))["config"]
    assert cfg["Entrypoint"] == ["/bin/prometheus"] and cfg["User"] == "65534:65534"
    conf = tmp_path / "prometheus"
    conf.mkdir()
    (conf / "prometheus.yml").write_text("global:\n  scrape_interval: 5s\nscrape_configs:\n"
                                         "  - job_name: self\n    static_configs:\n"
                                         "      - targets: ['127.0.0.1:9090']\n")
    data = volume(tmp_path, "tsdb", 0, 65534)
    # prometheus.yaml.j2's args.
    args = ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=1d", "--web.listen-address=:9090"]
    c = run("prometheus", entrypoint_with(containerd, "prometheus", args), mounts=[
        f"type=bind,src={conf},dst=/etc/prometheus,options=rbind:ro",
        f"type=bind,src={data},dst=/prometheus,options=rbind:rw"])
    wait_for(lambda: http_get(c, 9090, "/-/ready")[0] == 200, 60, "/-/ready")
    assert http_get(c, 9090, "/-/healthy")[0] == 200
    wait_for(lambda: '"health":"up"' in http_get(c, 9090, "/api/v1/targets")[1], 30, "the self scrape")
    assert (data / "wal").is_dir()
    ps = subprocess.run(["ps", "-o", "uid=", "-p", str(c.pid)], capture_output=True, text=True).stdout
    assert ps.strip() == "65534"


def test_statsd_exporter(containerd, run, tmp_path):
    cfg = containerd.image_config(image("statsd-exporter"))["config"]
    assert cfg["Entrypoint"] == ["/bin/statsd_exporter"] and cfg["User"] == "65534:65534"
    mapping = tmp_path / "statsd"
    mapping.mkdir()
    (mapping / "mapping.yml").write_text('mappings:\n  - match: "airflow.*.heartbeat"\n'
                                         '    name: "airflow_heartbeat"\n    labels: {job: "$1"}\n')
    args = ["--statsd.mapping-config=/etc/statsd-exporter/mapping.yml", "--statsd.listen-udp=:9125",
            "--statsd.listen-tcp=", "--web.listen-address=:9102"]
    c = run("statsd-exporter", entrypoint_with(containerd, "statsd-exporter", args),
            mounts=[f"type=bind,src={mapping},dst=/etc/statsd-exporter,options=rbind:ro"])
    wait_for(lambda: http_get(c, 9102, "/-/ready")[0] == 200, 30, "/-/ready")
    c.in_netns("python3", "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
               ".sendto(b'airflow.scheduler.heartbeat:1|c', ('127.0.0.1', 9125))")
    wait_for(lambda: 'airflow_heartbeat{job="scheduler"} 1' in http_get(c, 9102, "/metrics")[1], 10,
             "the mapped metric")


def test_kube_state_metrics(containerd, run):
    cfg = containerd.image_config(image("kube-state-metrics"))["config"]
    assert cfg["Entrypoint"] == ["/kube-state-metrics"] and cfg["User"] == "65534:65534"
    # It needs an API server to serve; here only that the binary runs.
    c = run("kube-state-metrics", ["/kube-state-metrics", "version"])
    wait_for(lambda: c.status() == "STOPPED", 30, "version")
    assert c.exit_status() == 0
    assert "v2.15.0" in c.logs()


def test_airflow_api_server_and_worker(containerd, run, postgresql):
    """The api-server and a Celery worker as our manifests start and probe them."""
    from urllib.parse import quote
    pw = quote(POSTGRES_ENV["POSTGRES_PASSWORD"], safe="")
    redis = run("redis", as_user(999, 999) + ["sh", "-c", "printf 'requirepass %s\\n' \"$REDIS_PASSWORD\" > "
                "/tmp/redis.conf && exec redis-server /tmp/redis.conf --dir /data --appendonly no --save ''"],
                env={"REDIS_PASSWORD": "rd-pw"}, netns_of=postgresql)
    wait_for(lambda: redis.exec("sh", "-c", "REDISCLI_AUTH=rd-pw redis-cli -h 127.0.0.1 ping | grep -q PONG",
                                check=False).returncode == 0, 30, "redis")
    env = {**AIRFLOW_ENV,
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://airflow:{pw}@127.0.0.1:5432/airflow",
           "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://airflow:{pw}@127.0.0.1:5432/airflow",
           "AIRFLOW__CELERY__BROKER_URL": "redis://:rd-pw@127.0.0.1:6379/0",
           "AIRFLOW__CORE__FERNET_KEY": "8sJ-4eG3Z6Yl7cq4jvK9DUm_6cBBO6nK3y9b8bqpZ0k=",
           "AIRFLOW__API__SECRET_KEY": "api-secret", "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret",
           "CONNECTION_CHECK_MAX_COUNT": "20", "CONNECTION_CHECK_SLEEP_TIME": "1"}
    migrate = run("airflow", entrypoint_with(containerd, "airflow", ["airflow", "db", "migrate"]), env=env,
                  netns_of=postgresql)
    wait_for(lambda: migrate.status() == "STOPPED", 600, "airflow db migrate", interval=2)
    assert migrate.exit_status() == 0, migrate.logs()[-3000:]

    # api-server.yaml.j2: args ["airflow", "api-server", "--port", "8080"], probe /api/v2/monitor/health.
    api = run("airflow", entrypoint_with(containerd, "airflow", ["airflow", "api-server", "--port", "8080"]),
              env=env, netns_of=postgresql)
    # worker-pod-template.yaml.j2: bash -c 'exec airflow celery worker ...', DUMB_INIT_SETSID=0.
    worker = run("airflow", entrypoint_with(containerd, "airflow", [
        "bash", "-c", 'exec airflow celery worker --celery-hostname "$(hostname)"']),
        env={**env, "DUMB_INIT_SETSID": "0"}, netns_of=postgresql)
    status, body = wait_for(lambda: http_get(api, 8080, "/api/v2/monitor/health"), 300, "the api-server health",
                            interval=3)
    assert status == 200, body
    assert json.loads(body)["metadatabase"]["status"] == "healthy"
    ping = ('CONNECTION_CHECK_MAX_COUNT=0 exec /entrypoint python -m celery --app '
            'airflow.providers.celery.executors.celery_executor.app inspect ping -d "celery@$(hostname)"')
    wait_for(lambda: worker.exec("sh", "-c", ping, check=False, timeout=60).returncode == 0, 300,
             "the worker's liveness probe", interval=5)
    # dumb-init is PID 1, the worker its child; the log server listens on 8793.
    comm = subprocess.run(["ps", "-o", "comm=", "-p", str(worker.pid)], capture_output=True, text=True).stdout
    assert comm.strip() == "dumb-init"
    wait_for(lambda: worker.in_netns("python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8793))")
             .returncode == 0, 60, "the worker's log server")
