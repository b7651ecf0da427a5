"""cluster.sh up -> status -> up (no-op) -> down leaves nothing behind.

Runs a second, private cluster (own state dir, own ports via
ELASTIC_AIRFLOW_CLUSTER_PORT_BASE) so it never disturbs the shared cluster
other tests use. `make test-cluster-lifecycle` runs it twice: KWOK only, and
with the real node (containerd, kubelet, kube-proxy, CoreDNS), whose `down`
must also restore what the node changed on this machine. One real node runs
on a machine at a time: the real-node case is skipped, saying so, while the
shared cluster's node is up.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import time

import pytest

from clusterlib import CLUSTER_SH, cache_dir

PORT_BASE = int(os.environ.get("ELASTIC_AIRFLOW_LIFECYCLE_PORT_BASE", "26443"))
CONTROL_PLANE_PORTS = [PORT_BASE + i for i in range(5)]
NODE_PORTS = [PORT_BASE + i for i in range(5, 9)]
UP_BOUND_S = 120  # generous: warm caches take a fraction of it
BRIDGE = "eacluster0"
NODE_IP_HEX = "010012C6"  # 198.18.0.1 as /proc/net/tcp writes it


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
    return subprocess.run([str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def host_snapshot() -> dict[str, object]:
    """What a node may change on this machine, outside the cluster's state and cache dirs."""
    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    sysctls = {k: pathlib.Path("/proc/sys/" + k.replace(".", "/")).read_text().strip()
               for k in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "vm.overcommit_memory",
                         "kernel.panic", "kernel.panic_on_oops")}
    cache = str(cache_dir())
    mountinfo = pathlib.Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = sorted(m for m in (line.split()[4] for line in mountinfo)
                    if not m.startswith(cache))  # images/build.sh may be at work there
    files = sorted(str(p) for top in ("/var/lib", "/var/log", "/run", "/etc", "/opt")
                   for p in pathlib.Path(top).glob("*") if not str(p).startswith(cache))
    return {
        "sysctls": sysctls,
        "mounts": mounts,
        # Packet counters change all the time (a base chain's policy counts once
        # `iptables -Z` gave it a counter, with iptables-nft); the rules and chains must not.
        "iptables": {(cmd, table): sorted(re.sub(r"\[\d+:\d+\]$", "[counters]", line)
                                          for line in out(cmd, "-t", table).splitlines()
                                          if not line.startswith("#"))
                     for cmd in ("iptables-save", "ip6tables-save") for table in ("filter", "nat", "mangle")},
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in out("ip", "-o", "link").splitlines()),
        "cgroups": sorted(str(p) for p in pathlib.Path("/sys/fs/cgroup").glob("*/*") if p.is_dir()),
        "files": files,
    }


@pytest.mark.parametrize("real_node", [False, True], ids=["kwok-only", "real-node"])
def test_up_status_down_leaves_nothing(tmp_path, real_node):
    if real_node and pathlib.Path(f"/sys/class/net/{BRIDGE}").exists():
        pytest.skip(f"a real node runs already (bridge {BRIDGE}): one per machine; stop it to run this case")
    state = tmp_path / "cluster"
    env = {**os.environ, "ELASTIC_AIRFLOW_CLUSTER_STATE": str(state),
           "ELASTIC_AIRFLOW_CLUSTER_PORT_BASE": str(PORT_BASE),
           "ELASTIC_AIRFLOW_CLUSTER_REAL_NODE": "1" if real_node else "0"}
    ports = CONTROL_PLANE_PORTS + (NODE_PORTS if real_node else [])
    components = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "pv-recycler"]
    if real_node:
        components += ["containerd", "kubelet", "kube-proxy"]
    assert not (set(ports) & listening_ports()), "lifecycle ports busy before the test"
    before = host_snapshot()
    try:
        t0 = time.monotonic()
        up = run(env, "up")
        took = time.monotonic() - t0
        print(f"\ncluster.sh up (warm caches, private cluster, real node: {real_node}) took {took:.1f} s")
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state}/kubeconfig" in up.stdout
        assert took <= UP_BOUND_S

        status = run(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for component in components:
            assert f"{component} " in status.stdout and "DOWN" not in status.stdout

        pids = {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}
        assert sorted(pids) == sorted(components)
        # Listening on loopback and our ports only; with a real node, the
        # apiserver and kubelet on the node's bridge address too.
        assert PORT_BASE in listening_ports()
        allowed = LOOPBACK | ({NODE_IP_HEX} if real_node else set())
        for name, pid in pids.items():
            if name == "containerd":
                continue  # its CRI stream server takes a random loopback port
            for addr, port in listening_sockets_of(pid):
                assert addr in allowed, f"{name} listens on {addr}:{port}"
                assert port in ports, f"{name} listens on an unexpected port {port}"

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
    assert not (set(ports) & listening_ports()), set(ports) & listening_ports()
    after = host_snapshot()
    for what in before:
        assert after[what] == before[what], f"{what} differ after down"

    status = run(env, "status")
    assert status.returncode != 0
