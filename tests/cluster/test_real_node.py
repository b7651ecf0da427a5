"""The real node runs containers the way a cluster's node does.

Run with `make test-cluster` (after `make images`: every pod here runs an
image built by images/build.sh, with imagePullPolicy Never). Real-node tests:
containerd + runc run these containers; probes, logs, exec, port-forward,
cluster DNS, Services through kube-proxy, ServiceAccount tokens, volumes,
preStop hooks and memory limits are the kubelet's, not simulated.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from kubernetes import client

from clusterlib import image_ref, kubectl_cmd, wait_until

NODE = "elastic-airflow-node"
ON_REAL_NODE = {"nodeSelector": {"type": "real"}}
# A shell, coreutils and redis-server/redis-cli (and, where a test needs
# Python, the Airflow image).
SHELL_IMAGE = image_ref("redis")
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
              "seccompProfile": {"type": "RuntimeDefault"}}


def container(name, command, image=SHELL_IMAGE, **extra):
    return {"name": name, "image": image, "imagePullPolicy": "Never", "command": command,
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}, **extra}


def pod(name, *containers, labels=None, **spec):
    return {"metadata": {"name": name, "labels": labels or {"app": name}},
            "spec": {"containers": list(containers), "securityContext": RESTRICTED, **ON_REAL_NODE, **spec}}


def ready(core, name, namespace):
    p = core.read_namespaced_pod(name, namespace)
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


def wait_ready(core, name, namespace, timeout=90):
    wait_until(lambda: ready(core, name, namespace), timeout, f"pod {name} Ready")
    return core.read_namespaced_pod(name, namespace)


def kubectl(*args, timeout=60, **kw):
    return subprocess.run(kubectl_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_node_is_ready_and_untainted(api):
    node = client.CoreV1Api(api).read_node(NODE)
    assert node.metadata.labels["type"] == "real"
    assert not node.spec.taints
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == ["198.18.0.1"]


def test_kubelet_refuses_anonymous_requests(api):
    # Webhook authentication: without a client certificate or token, 401.
    import ssl
    import urllib.error
    import urllib.request

    port = client.CoreV1Api(api).read_node(NODE).status.daemon_endpoints.kubelet_endpoint.port
    ctx = ssl.create_default_context(cafile=api.configuration.ssl_ca_cert)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"https://198.18.0.1:{port}/pods", context=ctx, timeout=10)
    assert err.value.code == 401


def test_readiness_comes_from_the_pods_own_probe(api, namespace):
    core = client.CoreV1Api(api)
    probe = {"periodSeconds": 1, "failureThreshold": 1}
    core.create_namespaced_pod(namespace, pod("passes", container(
        "main", ["sh", "-c", "touch /tmp/ready; exec sleep 3600"],
        readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]}, **probe})))
    core.create_namespaced_pod(namespace, pod("fails", container(
        "main", ["sleep", "3600"], readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]}, **probe})))
    wait_ready(core, "passes", namespace)
    wait_until(lambda: core.read_namespaced_pod("fails", namespace).status.phase == "Running", 60, "fails Running")
    time.sleep(5)  # five probe periods: it has had every chance
    p = core.read_namespaced_pod("fails", namespace)
    assert not ready(core, "fails", namespace)
    assert p.status.container_statuses[0].started and not p.status.container_statuses[0].ready


def test_logs_exec_and_port_forward_from_loopback(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod("redis", container(
        "main", ["sh", "-c", "echo hello from the pod; exec redis-server --port 6379 --save '' --protected-mode no"],
        readinessProbe={"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 1})))
    wait_ready(core, "redis", namespace)
    logs = kubectl("logs", "-n", namespace, "redis")
    assert logs.returncode == 0 and "hello from the pod" in logs.stdout, logs.stderr
    ex = kubectl("exec", "-n", namespace, "redis", "--", "id", "-u")
    assert ex.returncode == 0 and ex.stdout.strip() == "999", ex.stderr
    port = free_port()
    forward = subprocess.Popen(kubectl_cmd("port-forward", "-n", namespace, "pod/redis", f"{port}:6379",
                                           "--address", "127.0.0.1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def pong():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16) == b"+PONG\r\n"
            except OSError:
                return False
        wait_until(pong, 30, "PONG through kubectl port-forward")
    finally:
        forward.terminate()
        forward.wait(10)


def test_service_name_resolves_through_coredns_and_answers(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod("backend", container(
        "main", ["redis-server", "--port", "6379", "--save", "", "--protected-mode", "no"],
        readinessProbe={"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 1}), labels={"app": "backend"}))
    core.create_namespaced_service(namespace, {"metadata": {"name": "backend"},
                                               "spec": {"selector": {"app": "backend"}, "ports": [{"port": 6379}]}})
    wait_ready(core, "backend", namespace)
    core.create_namespaced_pod(namespace, pod("client", container(
        "main", ["sh", "-c", f"until redis-cli -h backend.{namespace}.svc.cluster.local ping; do sleep 1; done; "
                             "getent hosts backend; redis-cli -h backend ping"]), restartPolicy="Never"))
    wait_until(lambda: core.read_namespaced_pod("client", namespace).status.phase in ("Succeeded", "Failed"),
               90, "client pod done")
    log = core.read_namespaced_pod_log("client", namespace)
    service_ip = core.read_namespaced_service("backend", namespace).spec.cluster_ip
    assert service_ip.startswith("198.19.")
    assert f"{service_ip}" in log and log.strip().endswith("PONG"), log
    # ... and from this host, the way the API server reaches an aggregated API
    # (KEDA's external metrics, the metrics adapter) or a webhook: the
    # Service address is routed to the bridge, where kube-proxy's DNAT applies.
    with socket.create_connection((service_ip, 6379), timeout=10) as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(64).startswith(b"+PONG")


def test_pod_calls_the_api_with_its_service_account_token(api, namespace):
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"a": "b"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    script = f"""
import json, ssl, urllib.error, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
token = open(sa + "token").read()
out = {{}}
for what, path in (("configmap", "configmaps/cfg"), ("secret", "secrets/x")):
    req = urllib.request.Request("https://kubernetes.default.svc/api/v1/namespaces/{namespace}/" + path,
                                 headers={{"Authorization": "Bearer " + token}})
    try:
        out[what] = urllib.request.urlopen(req, context=ctx, timeout=10).status
    except urllib.error.HTTPError as e:
        out[what] = e.code
print(json.dumps(out))
"""
    caller = container("main", ["python3", "-c", script], image=image_ref("airflow"))
    core.create_namespaced_pod(namespace, pod("caller", caller,
                                              serviceAccountName="reader", restartPolicy="Never",
                                              securityContext={**RESTRICTED, "runAsUser": 50000, "runAsGroup": 0,
                                                               "fsGroup": 0}))
    wait_until(lambda: core.read_namespaced_pod("caller", namespace).status.phase in ("Succeeded", "Failed"),
               120, "caller pod done")
    # Raw: the client would turn a log that is JSON into a dict's repr.
    log = core.read_namespaced_pod_log("caller", namespace, _preload_content=False).data.decode()
    assert json.loads(log.strip().splitlines()[-1]) == {"configmap": 200, "secret": 403}, log


def _claim(core, namespace, name):
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})


def _with_claim(name, claim, *containers, **spec):
    body = pod(name, *[dict(c, volumeMounts=[{"name": "data", "mountPath": "/data"}]) for c in containers], **spec)
    body["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    return body


def _run_to_end(core, namespace, body, timeout=90):
    core.create_namespaced_pod(namespace, body)
    name = body["metadata"]["name"]
    wait_until(lambda: core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed"),
               timeout, f"pod {name} done")
    log = core.read_namespaced_pod_log(name, namespace)
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    wait_until(lambda: not [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name == name],
               60, f"pod {name} gone")
    return log


def test_volume_on_the_real_node_keeps_data_across_pods_and_is_wiped_on_release(api, namespace):
    core = client.CoreV1Api(api)
    _claim(core, namespace, "data")
    script = "id -g >/data/gid; echo kept >/data/f; stat -c %g /data"
    write = _with_claim("writer", "data", container("main", ["sh", "-c", script]), restartPolicy="Never")
    log = _run_to_end(core, namespace, write)
    assert log.strip() == "999", "fsGroup applied to the volume: " + log
    pv_name = core.read_namespaced_persistent_volume_claim("data", namespace).spec.volume_name
    pv = core.read_persistent_volume(pv_name)
    assert pv.metadata.labels["elastic-airflow.io/pool"] == "node"
    read = _with_claim("reader", "data", container("main", ["cat", "/data/f"]), restartPolicy="Never")
    assert _run_to_end(core, namespace, read).strip() == "kept"

    core.delete_namespaced_persistent_volume_claim("data", namespace)
    wait_until(lambda: core.read_persistent_volume(pv_name).status.phase == "Available", 60,
               f"{pv_name} back in the pool")
    # The next claim of that volume starts empty.
    _claim(core, namespace, "again")
    core.patch_persistent_volume(pv_name, {"spec": {"claimRef": {"namespace": namespace, "name": "again"}}})
    look = _with_claim("looker", "again", container("main", ["ls", "-A", "/data"]), restartPolicy="Never")
    assert _run_to_end(core, namespace, look).strip() == ""


def test_prestop_runs_and_the_grace_period_is_honoured(api, namespace):
    core = client.CoreV1Api(api)
    _claim(core, namespace, "trace")
    main = container("main", ["sh", "-c", "trap 'echo term $(date +%s.%N) >>/data/trace; sleep 2; "
                                          "echo exit $(date +%s.%N) >>/data/trace; exit 0' TERM; "
                                          "while true; do sleep 0.2; done"],
                     lifecycle={"preStop": {"exec": {"command": [
                         "sh", "-c", "echo prestop $(date +%s.%N) >>/data/trace; sleep 1"]}}},
                     readinessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1})
    core.create_namespaced_pod(namespace, _with_claim("graceful", "trace", main, terminationGracePeriodSeconds=20))
    wait_ready(core, "graceful", namespace)
    t0 = time.time()
    core.delete_namespaced_pod("graceful", namespace)
    wait_until(lambda: not [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name == "graceful"],
               60, "graceful pod gone")
    took = time.time() - t0
    trace = _run_to_end(core, namespace, _with_claim("tracer", "trace", container("main", ["cat", "/data/trace"]),
                                                     restartPolicy="Never"))
    events = [line.split() for line in trace.strip().splitlines()]
    assert [e[0] for e in events] == ["prestop", "term", "exit"], trace
    times = [float(e[1]) for e in events]
    assert times[1] - times[0] >= 1.0  # TERM only after the preStop hook ended
    assert times[2] - times[1] >= 2.0  # and the process had its time to finish
    assert took < 20, f"the pod outlived its grace period: {took:.1f} s"


def test_memory_limit_kills_with_oomkilled(api, namespace):
    core = client.CoreV1Api(api)
    # The shell keeps the whole 200 MB string in memory: far over the limit.
    hog = container("main", ["bash", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 3600"],
                    resources={"limits": {"memory": "32Mi"}, "requests": {"memory": "32Mi"}})
    core.create_namespaced_pod(namespace, pod("hog", hog, restartPolicy="Never"))

    def terminated():
        statuses = core.read_namespaced_pod("hog", namespace).status.container_statuses or []
        return statuses and statuses[0].state.terminated
    state = wait_until(terminated, 90, "the hog's container terminated")
    assert state.reason == "OOMKilled", state


def test_local_images_are_used_without_a_registry(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod("local", container("main", ["sleep", "3600"])))
    p = wait_ready(core, "local", namespace)
    status = p.status.container_statuses[0]
    assert status.image == SHELL_IMAGE and "sha256:" in status.image_id, status
    # And an image that was never imported is not pulled from anywhere.
    missing = container("main", ["true"], image="localhost/elastic-airflow/nothing:0")
    core.create_namespaced_pod(namespace, pod("missing", missing))

    def never_pulled():
        statuses = core.read_namespaced_pod("missing", namespace).status.container_statuses or []
        waiting = statuses and statuses[0].state.waiting
        return waiting and waiting.reason == "ErrImageNeverPull"
    wait_until(never_pulled, 60, "the missing image reported as ErrImageNeverPull")


def test_the_guard_keeps_the_cluster_ranges_on_the_bridge():
    """Checked by reading the rules, never by sending to an outside address."""
    for chain in ("OUTPUT", "FORWARD"):
        rules = subprocess.run(["iptables", "-S", chain],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        # First: before kube-proxy's KUBE-FORWARD, which accepts established and marked packets.
        assert rules[1] == f"-A {chain} -j EA-GUARD", rules
    guard = subprocess.run(["iptables", "-S", "EA-GUARD"], capture_output=True, text=True, check=True).stdout
    assert "-A EA-GUARD -d 198.18.0.0/15" in guard and "-j DROP" in guard
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    assert not [r for r in nat.splitlines() if "MASQUERADE" in r and "198.1" in r]
    routes = subprocess.run(["ip", "route", "show", "198.19.0.0/16"], capture_output=True, text=True,
                            check=True).stdout
    assert "dev eacluster0" in routes, routes
