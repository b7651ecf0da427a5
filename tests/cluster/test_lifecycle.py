"""cluster.sh up -> status -> up (no-op) -> down leaves nothing behind.

Runs a second, private cluster (own state dir, own ports via
ELASTIC_AIRFLOW_CLUSTER_PORT_BASE) so it never disturbs the shared cluster
other tests use. `make test-cluster-lifecycle` runs it.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

from clusterlib import CLUSTER_SH

PORT_BASE = int(os.environ.get("ELASTIC_AIRFLOW_LIFECYCLE_PORT_BASE", "26443"))
PORTS = [PORT_BASE + i for i in range(5)]
UP_BOUND_S = 60  # generous: warm caches take a fraction of it


def listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def listening_sockets_of(pid: int) -> list[tuple[str, int]]:
    """(hex local address, port) of every listening TCP socket the process holds."""
    listen = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                addr, port = fields[1].rsplit(":", 1)
                listen[fields[9]] = (addr, int(port, 16))
    found = []
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in listen:
            found.append(listen[target[8:-1]])
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and running(int(proc.name)):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead child waiting to be reaped by init)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run(env, *args, timeout=300):
    return subprocess.run([str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_up_status_down_leaves_nothing(tmp_path):
    state = tmp_path / "cluster"
    env = {**os.environ, "ELASTIC_AIRFLOW_CLUSTER_STATE": str(state),
           "ELASTIC_AIRFLOW_CLUSTER_PORT_BASE": str(PORT_BASE)}
    assert not (set(PORTS) & listening_ports()), "lifecycle ports busy before the test"
    try:
        t0 = time.monotonic()
        up = run(env, "up")
        took = time.monotonic() - t0
        print(f"\ncluster.sh up (warm caches, private cluster) took {took:.1f} s")
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state}/kubeconfig" in up.stdout
        assert took <= UP_BOUND_S

        status = run(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "pv-recycler"):
            assert f"{component} " in status.stdout and "DOWN" not in status.stdout

        pids = {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}
        assert len(pids) == 6
        # Listening only on loopback, and only on our ports.
        assert PORT_BASE in listening_ports()
        for name, pid in pids.items():
            for addr, port in listening_sockets_of(pid):
                assert addr in LOOPBACK, f"{name} listens on {addr}:{port}, not loopback"
                assert port in PORTS, f"{name} listens on an unexpected port {port}"

        again = run(env, "up")
        assert again.returncode == 0 and "already up" in again.stderr
        assert {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")} == pids
    finally:
        down = run(env, "down")
    assert down.returncode == 0, down.stderr

    assert not state.exists()
    still = [f"{name} (pid {pid})" for name, pid in pids.items() if running(pid)]
    assert not still, still
    assert not processes_mentioning(str(state)), processes_mentioning(str(state))
    assert not (set(PORTS) & listening_ports()), set(PORTS) & listening_ports()

    status = run(env, "status")
    assert status.returncode != 0
