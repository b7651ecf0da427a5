# shellcheck shell=bash
# The real node of the local cluster: Debian's containerd + runc with the
# bridge CNI plugin, our kubelet and kube-proxy, and CoreDNS as a pod.
# Sourced by cluster.sh (which defines STATE, BIN, PKI, log, die, start, ...);
# facts behind each setting: ../../../shared/real-node-probe.md and
# docs/local-cluster.md.
#
# Network (the hard rule: traffic only to loopback and our own ranges):
#   pods      198.18.0.0/17 on the bridge $NODE_BRIDGE, gateway = node IP 198.18.0.1
#   KWOK pods 198.18.128.0/17 (fake addresses: never routed anywhere)
#   Services  198.19.0.0/16, cluster DNS 198.19.0.10, routed to the bridge
# Nothing is masqueraded. The chain EA-GUARD drops every packet for
# 198.18.0.0/15 that would leave through an interface other than the bridge
# (or lo), and every packet from the bridge that would be forwarded elsewhere.

NODE_NAME=${ELASTIC_AIRFLOW_NODE_NAME:-elastic-airflow-node}
NODE_BRIDGE=eacluster0
NODE_IP=198.18.0.1
NODE_POD_SUBNET=198.18.0.0/17
KWOK_POD_CIDR=198.18.128.0/17
CLUSTER_RANGES=198.18.0.0/15  # pods and Services
DNS_IP=198.19.0.10
KUBELET_PORT=$((PORT_BASE + 5))
KUBELET_HEALTHZ_PORT=$((PORT_BASE + 6))
PROXY_HEALTHZ_PORT=$((PORT_BASE + 7))
PROXY_METRICS_PORT=$((PORT_BASE + 8))
GUARD=EA-GUARD
# Images live in a containerd root outside the state dir, like a node's disk:
# `make images` imports them once and they survive down/up. Only one real
# node runs on a machine at a time (the lock below), so one root is enough.
NODE_IMAGES_ROOT=${ELASTIC_AIRFLOW_CACHE}/node/containerd
IMAGES_DIR=$(cd "$here/../../images" && pwd)
# The name of a local image (images/<name>/image.sh says its tag).
image_ref() { (CACHE=$ELASTIC_AIRFLOW_CACHE; . "$IMAGES_DIR/$1/image.sh" && echo "localhost/elastic-airflow/$1:$IMAGE_TAG"); }
# Kernel settings the node changes: recorded by up, restored by down.
NODE_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory
              kernel.panic kernel.panic_on_oops)
# Paths outside the state dir that the kubelet, containerd's CNI library or
# the plugins create whatever their flags say; down removes those up created.
NODE_HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/netns)

containerd_sock() { echo "$STATE/containerd/containerd.sock"; }
ctr_k8s() { ctr --address "$(containerd_sock)" --namespace k8s.io "$@"; }
sysctl_path() { echo "/proc/sys/${1//.//}"; }

node_pki() {
  newcert kubelet-client ca "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  newcert kubelet-serving ca "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  # The apiserver's identity towards kubelets (logs, exec, port-forward).
  newcert apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  newcert kube-proxy ca /CN=system:kube-proxy clientAuth
  kubeconfig "$STATE/kubelet.kubeconfig" kubelet-client "system:node:$NODE_NAME"
  kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
}

# Record what the node will change, once per `up` (down restores it).
node_record_host() {
  local s p
  : >"$STATE/node/sysctls"
  for s in "${NODE_SYSCTLS[@]}"; do
    echo "$s=$(cat "$(sysctl_path "$s")")" >>"$STATE/node/sysctls"
  done
  : >"$STATE/node/created-paths"
  for p in "${NODE_HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p" >>"$STATE/node/created-paths"; done
  iptables-save 2>/dev/null | grep -oE '^:KUBE-[A-Z0-9-]+' | sort -u >"$STATE/node/kube-chains-before" || true
}

node_preflight() {
  local b
  for b in /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc /usr/bin/ctr /usr/lib/cni/bridge \
           /usr/lib/cni/host-local /usr/lib/cni/portmap /usr/sbin/iptables /usr/sbin/conntrack; do
    [ -x "$b" ] || die "$b is missing: install Debian's containerd, runc, containernetworking-plugins, iptables and conntrack (make deps)"
  done
  # One real node per machine: the bridge is its mark.
  ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1 ||
    die "bridge $NODE_BRIDGE exists: a real node of another cluster runs (or was not stopped); stop it, or set ELASTIC_AIRFLOW_CLUSTER_REAL_NODE=0"
}

node_network_up() {
  mkdir -p "$STATE/node"
  touch "$STATE/node/enabled"
  node_record_host
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/17" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Services from this host too: a host process (the API server calling an
  # aggregated API such as KEDA's or the metrics adapter's, or a webhook)
  # picks its route before kube-proxy's DNAT in OUTPUT, and the guard judges
  # the packet by that first route. Without this route a Service address
  # would take the default route out of the VM, and the guard dropped it:
  # every aggregated API stayed unavailable. Goes with the bridge.
  ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  echo 1 >"$(sysctl_path net.ipv4.ip_forward)"
  echo 1 >"$(sysctl_path net.bridge.bridge-nf-call-iptables)"
  # The guard, first in OUTPUT and FORWARD (kube-proxy's chains come after it).
  iptables -N "$GUARD"
  iptables -A "$GUARD" -o "$NODE_BRIDGE" -i "$NODE_BRIDGE" -j RETURN
  iptables -A "$GUARD" -i "$NODE_BRIDGE" -j DROP -m comment --comment "elastic-airflow: pods reach only the bridge"
  iptables -A "$GUARD" -d "$CLUSTER_RANGES" -o "$NODE_BRIDGE" -j RETURN
  iptables -A "$GUARD" -d "$CLUSTER_RANGES" -o lo -j RETURN
  iptables -A "$GUARD" -d "$CLUSTER_RANGES" -j DROP -m comment --comment "elastic-airflow: cluster ranges never leave the bridge"
  iptables -A "$GUARD" -s "$CLUSTER_RANGES" -j DROP -m comment --comment "elastic-airflow: never route the cluster ranges out"
  iptables -I OUTPUT 1 -j "$GUARD"
  iptables -I FORWARD 1 -j "$GUARD"
}

containerd_config() {
  local c=$STATE/containerd
  cat <<EOF
version = 2
root = "$NODE_IMAGES_ROOT"
state = "$c/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # Root in this VM lacks CAP_SYS_RESOURCE: without this, runc cannot set
  # oom_score_adj -998 and every sandbox fails ("can't get final child's PID").
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$c/cni"
    max_conf_num = 1
EOF
}

cni_config() {
  cat <<EOF
{
  "cniVersion": "0.4.0",
  "name": "elastic-airflow",
  "plugins": [{
    "type": "bridge",
    "bridge": "$NODE_BRIDGE",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": "$STATE/containerd/ipam",
      "ranges": [[{"subnet": "$NODE_POD_SUBNET", "gateway": "$NODE_IP"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }, {
    "type": "portmap",
    "capabilities": {"portMappings": true}
  }]
}
EOF
}

kubelet_config() {
  cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$(containerd_sock)
imageServiceEndpoint: unix://$(containerd_sock)
# This VM has cgroup v1 only, and no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
# Pods get the cluster's DNS only: nothing resolves through the host's.
resolvConf: ""
# Never delete the imported images (there is no registry to pull them again).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {nodefs.available: 2%, imagefs.available: 2%, memory.available: 200Mi}
podLogsDir: $STATE/pod-logs
serializeImagePulls: false
maxPods: 110
EOF
}

kube_proxy_config() {
  cat <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: 198.18.0.0/16
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: [$NODE_IP/32]
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
iptables: {localhostNodePorts: false}
# 0: leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

coredns_manifest() {
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
# No forward plugin: names outside cluster.local get NXDOMAIN rather than a
# query to a resolver outside this machine.
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            ttl 30
        }
        cache 30
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 10
        resources:
          requests: {cpu: 50m, memory: 32Mi}
          limits: {memory: 128Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          # The image's binary carries cap_net_bind_service (as upstream's does)
          # for port 53; under no_new_privs it may only keep, never gain it.
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}
EOF
}

# The storage pool of the real node: `local` PersistentVolumes on
# directories under the state dir (the kubelet bind-mounts them and applies
# fsGroup). The pv-recycler empties a Released volume before it is reused.
node_pv_manifest() {
  local i name
  for ((i = 0; i < NODE_PVS; i++)); do
    name=node-pv-$(printf %02d "$i")
    mkdir -p "$STATE/volumes/$name"
    local_pv "$name" node "$STATE/volumes/$name" "$NODE_NAME"
  done
}

node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
coredns_ready() {
  [ "$(kubectl -n kube-system get deploy coredns -o jsonpath='{.status.readyReplicas}')" = 1 ]
}

node_images() { # import the images the node itself needs (built and cached by images/build.sh)
  "$IMAGES_DIR/build.sh" --import "$(containerd_sock)" pause coredns >&2
}

# containerd, the node's images, kubelet, kube-proxy, then CoreDNS and the
# node's volumes (after node_network_up and node_pki, with the control plane up).
node_start() {
  PAUSE_IMAGE=$(image_ref pause)
  COREDNS_IMAGE=$(image_ref coredns)
  mkdir -p "$STATE/containerd/cni" "$STATE/kubelet" "$STATE/pod-logs" "$NODE_IMAGES_ROOT"
  containerd_config >"$STATE/containerd/config.toml"
  cni_config >"$STATE/containerd/cni/10-elastic-airflow.conflist"
  kubelet_config >"$STATE/kubelet-config.yaml"
  kube_proxy_config >"$STATE/kube-proxy-config.yaml"

  start_system containerd /usr/bin/containerd --config "$STATE/containerd/config.toml"
  wait_for "containerd" 30 ctr_k8s version
  node_images
  start kubelet --config="$STATE/kubelet-config.yaml" --kubeconfig="$STATE/kubelet.kubeconfig" \
    --root-dir="$STATE/kubelet" --cert-dir="$PKI/kubelet-generated" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --node-labels=type=real --v=1
  STARTED+=(kubelet)
  start kube-proxy --config="$STATE/kube-proxy-config.yaml" --v=1
  STARTED+=(kube-proxy)
  wait_for "node $NODE_NAME Ready" 90 node_ready
  kubectl apply --server-side --force-conflicts -f - >/dev/null < <(coredns_manifest; node_pv_manifest)
  wait_for "CoreDNS Ready" 30 coredns_ready
  wait_for "kube-proxy's first sync" 30 kube_proxy_synced
  node_guard_first
}

kube_proxy_synced() {
  iptables -S OUTPUT | grep -q -- '-j KUBE-SERVICES' && iptables -S FORWARD | grep -q -- '-j KUBE-FORWARD'
}

# kube-proxy and the kubelet insert their jumps at the top of OUTPUT and
# FORWARD when they start (KUBE-FORWARD accepts established and marked
# packets): the guard goes back in front of them. They only check that their
# rules exist, so it stays there.
node_guard_first() {
  local chain
  for chain in OUTPUT FORWARD; do
    iptables -D "$chain" -j "$GUARD"
    iptables -I "$chain" 1 -j "$GUARD"
  done
}

# Everything of the real node, in reverse. Safe to run on a half-started node.
node_down() {
  local pid i id m
  [ -d "$STATE/node" ] || return 0
  stop_component kube-proxy
  stop_component kubelet
  if alive containerd; then
    # Containers outlive the kubelet (their shims run on): kill and delete
    # every task, container and sandbox of the node.
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for ((i = 0; i < 50; i++)); do
      ctr_k8s tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" {found = 1} END {exit !found}' || break
      sleep 0.1
    done
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$id" >/dev/null 2>&1 || true; done
    # Snapshots of the deleted containers; the images' own layers stay.
    for id in $(ctr_k8s snapshots ls 2>/dev/null | awk 'NR>1 && $3=="Active" {print $1}'); do
      ctr_k8s snapshots rm "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_component containerd
  # Shims whose containerd is gone (they name our socket on their command line).
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $STATE/" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  # Mounts: pods' volumes, netns, overlay rootfs, the kubelet's root dir.
  for ((i = 0; i < 3; i++)); do
    for m in $(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    for m in $(awk -v s="$NODE_IMAGES_ROOT/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  done
  node_cleanup_cgroups
  node_cleanup_iptables
  # The pods' veths went with their network namespaces.
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  node_restore_host
}

node_cleanup_cgroups() {
  local h d
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h/kubepods" ] || continue
    # Deepest first: a cgroup directory can only be removed once empty.
    find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # A cgroup that still holds a process cannot go: say so (the lifecycle
  # test compares the cgroup trees before and after).
  for d in /sys/fs/cgroup/*/kubepods; do [ -d "$d" ] && log "warning: $d could not be removed"; done
  return 0
}

node_cleanup_iptables() {
  local cmd table chain before n
  before=$(cat "$STATE/node/kube-chains-before" 2>/dev/null || true)
  iptables -D OUTPUT -j "$GUARD" 2>/dev/null || true
  iptables -D FORWARD -j "$GUARD" 2>/dev/null || true
  iptables -F "$GUARD" 2>/dev/null || true
  iptables -X "$GUARD" 2>/dev/null || true
  # kube-proxy --cleanup exits 1 here (no ipset for its IPVS part): remove the
  # KUBE-* chains of kube-proxy and the kubelet ourselves, unless they were
  # there before up.
  for cmd in iptables ip6tables; do
    for table in filter nat mangle; do
      # Drop the jumps from built-in chains first (by number, last first),
      # then flush and delete.
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-P" {print $2}'); do
        for n in $("$cmd" -t "$table" -S "$chain" 2>/dev/null |
                   awk 'NR > 1 {n++; if ($0 ~ / -j KUBE-/) print n}' | sort -rn); do
          "$cmd" -t "$table" -D "$chain" "$n" 2>/dev/null || true
        done
      done
      for chain in $("$cmd-save" -t "$table" 2>/dev/null | { grep -oE '^:KUBE-[A-Z0-9-]+' || true; } | cut -c2-); do
        grep -qx ":$chain" <<<"$before" && continue
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd-save" -t "$table" 2>/dev/null | { grep -oE '^:KUBE-[A-Z0-9-]+' || true; } | cut -c2-); do
        grep -qx ":$chain" <<<"$before" && continue
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

node_restore_host() {
  local line p
  if [ -f "$STATE/node/sysctls" ]; then
    while IFS='=' read -r key value; do
      echo "$value" >"$(sysctl_path "$key")" 2>/dev/null || log "warning: could not restore $key=$value"
    done <"$STATE/node/sysctls"
  fi
  if [ -f "$STATE/node/created-paths" ]; then
    while read -r p; do
      [ -n "$p" ] || continue
      # A mount left under it (netns) must go before the directory.
      for line in $(awk -v s="$p/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$line" 2>/dev/null || true; done
      rm -rf "$p"
    done <"$STATE/node/created-paths"
  fi
}
