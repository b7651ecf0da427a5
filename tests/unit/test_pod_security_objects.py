"""Pod Security Admission, checked on the rendered objects.

* The Namespace carries the pod-security.kubernetes.io labels of the
  settings (enforce, audit and warn `restricted` by default).
* Every pod template the collection renders (each workload's, the migrate
  Job's and the objects Job's, the db-clean CronJob's, the ElasticWorker's worker template), in every variant of
  conftest.VARIANTS, meets the Pod Security Standard `restricted`.

`restricted_violations` is written from the Pod Security Standards page
(https://kubernetes.io/docs/concepts/security/pod-security-standards/,
"Baseline" and "Restricted", the controls of the `latest` version) and the
field lists of k8s.io/pod-security-admission's checks. It reads pod specs;
it is no admission controller. The API server's own admission is exercised
where pods are created: the playbook suite on the local cluster and the real
node (`make demo`) run with the namespace enforcing `restricted`.
"""

from __future__ import annotations

import copy

import pytest

from conftest import VARIANTS

# Baseline: capabilities a container may add (the container runtime's defaults).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
# Baseline: the "safe" sysctls.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}
# Restricted: the volume sources a pod may use (every other inline source is refused).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
                      "projected", "secret"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}
ALLOWED_PROFILES = {"RuntimeDefault", "Localhost"}


def restricted_violations(template: dict) -> list[str]:
    """What in a PodTemplateSpec (metadata + spec) the Pod Security Standard `restricted` forbids."""
    spec, meta = template["spec"], template.get("metadata") or {}
    pod_sc = spec.get("securityContext") or {}
    containers = [(kind, c) for kind in ("initContainers", "containers", "ephemeralContainers")
                  for c in spec.get(kind) or []]
    found = []

    def bad(what):
        found.append(what)

    # -- baseline ---------------------------------------------------------------
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad(f"spec.{field}")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        bad("spec.securityContext.windowsOptions.hostProcess")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            bad(f"hostPath volume {volume['name']}")
    for name, value in (meta.get("annotations") or {}).items():
        if name.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            bad(f"AppArmor annotation {name}={value}")
        if name.startswith(("seccomp.security.alpha.kubernetes.io/",
                            "container.seccomp.security.alpha.kubernetes.io/")):
            bad(f"seccomp annotation {name}")  # removed in 1.27; the field is what counts
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            bad(f"sysctl {sysctl['name']}")
    contexts = [("pod", pod_sc)] + [(f"{kind} {c['name']}", c.get("securityContext") or {}) for kind, c in containers]
    for where, sc in contexts:
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            bad(f"{where}: seLinuxOptions {selinux}")
        if (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in ALLOWED_PROFILES:
            bad(f"{where}: appArmorProfile {sc['appArmorProfile']}")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            bad(f"{where}: seccompProfile Unconfined")
        if sc.get("runAsUser") == 0:
            bad(f"{where}: runAsUser 0")  # restricted: "Running as Non-root user"
    for kind, c in containers:
        sc = c.get("securityContext") or {}
        where = f"{kind} {c['name']}"
        if sc.get("privileged"):
            bad(f"{where}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad(f"{where}: hostProcess")
        if sc.get("procMount", "Default") != "Default":
            bad(f"{where}: procMount {sc['procMount']}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad(f"{where}: hostPort {port['hostPort']}")
        caps = sc.get("capabilities") or {}
        if set(caps.get("add") or []) - BASELINE_CAPABILITIES:
            bad(f"{where}: capabilities.add {caps['add']}")

    # -- restricted -------------------------------------------------------------
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if sources - RESTRICTED_VOLUMES:
            bad(f"volume {volume['name']}: {', '.join(sorted(sources - RESTRICTED_VOLUMES))}")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type") in ALLOWED_PROFILES
    for kind, c in containers:
        sc = c.get("securityContext") or {}
        where = f"{kind} {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            bad(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot") is False or (sc.get("runAsNonRoot") is None and not pod_non_root):
            bad(f"{where}: runAsNonRoot not true (nor the pod's)")
        profile = (sc.get("seccompProfile") or {}).get("type")
        if profile not in ALLOWED_PROFILES and not (profile is None and pod_seccomp):
            bad(f"{where}: seccompProfile neither RuntimeDefault nor Localhost (nor the pod's)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad(f"{where}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad(f"{where}: capabilities.add {caps['add']}")
    return found


def pod_templates(objects: list[dict]) -> dict[str, dict]:
    """Every pod template among the objects, by kind/name."""
    found = {}
    for obj in objects:
        template = None
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ElasticWorker"):
            template = obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]["template"]
        elif obj["kind"] == "Pod":
            template = obj
        if template is not None:
            found[f"{obj['kind']}/{obj['metadata']['name']}"] = template
    return found


def _all(rendered, variant):
    return [obj for objects in rendered[variant].values() for obj in objects]


# -- the checker itself refuses what `restricted` refuses --------------------------

GOOD = {"metadata": {}, "spec": {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "initContainers": [{"name": "init", "securityContext": {"allowPrivilegeEscalation": False,
                                                            "capabilities": {"drop": ["ALL"]}}}],
    "containers": [{"name": "main", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
    "volumes": [{"name": "v", "emptyDir": {}}, {"name": "c", "persistentVolumeClaim": {"claimName": "c"}}]}}


def _with(path, value):
    pod = copy.deepcopy(GOOD)
    node = pod
    *parents, last = path
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return pod


def test_a_restricted_pod_passes():
    assert restricted_violations(GOOD) == []


@pytest.mark.parametrize(("path", "value"), [
    (("spec", "hostNetwork"), True),
    (("spec", "volumes"), [{"name": "h", "hostPath": {"path": "/"}}]),
    (("spec", "volumes"), [{"name": "n", "nfs": {"server": "s", "path": "/"}}]),
    (("spec", "securityContext", "runAsNonRoot"), None),  # and no container says true
    (("spec", "securityContext", "runAsUser"), 0),
    (("spec", "securityContext", "seccompProfile"), None),  # and no container sets one
    (("spec", "securityContext", "sysctls"), [{"name": "kernel.msgmax", "value": "1"}]),
    (("spec", "containers", 0, "securityContext", "allowPrivilegeEscalation"), None),
    (("spec", "initContainers", 0, "securityContext", "capabilities"), {"drop": ["NET_RAW"]}),
    (("spec", "containers", 0, "securityContext", "capabilities"), {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
    (("spec", "containers", 0, "securityContext", "privileged"), True),
    (("spec", "containers", 0, "securityContext", "runAsNonRoot"), False),
    (("spec", "containers", 0, "securityContext", "seccompProfile"), {"type": "Unconfined"}),
    (("spec", "containers", 0, "ports"), [{"containerPort": 80, "hostPort": 80}]),
])
def test_the_checker_refuses_what_restricted_refuses(path, value):
    assert restricted_violations(_with(path, value))


# -- the collection's pods -----------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_template_meets_restricted(rendered, variant):
    templates = pod_templates(_all(rendered, variant))
    assert len(templates) >= 8, sorted(templates)
    violations = {name: v for name, template in templates.items() if (v := restricted_violations(template))}
    assert violations == {}


def test_every_component_is_checked(rendered):
    """The variants between them render a pod of every component (and the worker pods of each autoscaling mode)."""
    components = set()
    for variant in VARIANTS:
        for name, template in pod_templates(_all(rendered, variant)).items():
            components.add((template["metadata"]["labels"]["app.kubernetes.io/component"], name.split("/")[0]))
    assert {c for c, _kind in components} == {
        "api-server", "scheduler", "dag-processor", "triggerer", "worker", "flower", "migrate", "db-clean", "objects",
        "database", "pgbouncer", "broker", "prometheus", "statsd-exporter", "kube-state-metrics", "grafana",
        "metrics-adapter", "elastic-worker-controller"}
    assert {("worker", "StatefulSet"), ("worker", "ElasticWorker")} <= components


def test_git_sync_containers_are_checked(rendered):
    templates = pod_templates(_all(rendered, "mysql-rabbitmq-git-ssh-hpa-s3"))
    names = {c["name"] for c in templates["StatefulSet/airflow-worker"]["spec"]["containers"]
             + templates["StatefulSet/airflow-worker"]["spec"]["initContainers"]}
    assert {"git-sync", "git-sync-init", "wait-for-migrations", "worker"} <= names


def _namespace(rendered, variant):
    return next(o for o in rendered[variant]["namespace"] if o["kind"] == "Namespace")


def test_the_namespace_enforces_restricted_by_default(rendered):
    labels = _namespace(rendered, "defaults")["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith("pod-security.kubernetes.io/")} == {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/warn": "restricted"}


def test_each_mode_takes_its_level_and_an_empty_one_no_label(rendered):
    labels = _namespace(rendered, "policies-off-baseline-budgets")["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith("pod-security.kubernetes.io/")} == {
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/audit": "restricted"}
