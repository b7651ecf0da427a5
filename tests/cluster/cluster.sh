#!/usr/bin/env bash
# The local Kubernetes cluster for tests and the demo: real etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler as local
# processes; one REAL node (containerd + runc, kubelet, kube-proxy, CoreDNS as
# a pod; node.sh) that runs containers; and KWOK, which plays the kubelet of
# fake nodes for scale tests. The fake nodes are tainted
# (kwok.x-k8s.io/node=fake:NoSchedule): only pods that tolerate it land there,
# and their containers never run.
#
#   tests/cluster/cluster.sh up       start everything (a no-op when already up)
#   tests/cluster/cluster.sh down     stop exactly what `up` started, remove the state
#   tests/cluster/cluster.sh status   which components run (exit 1 unless all do)
#   tests/cluster/cluster.sh recycle-pvs   make Released pool volumes Available again
#
# Environment:
#   ELASTIC_AIRFLOW_CACHE              default ~/.cache/elastic-airflow
#   ELASTIC_AIRFLOW_CLUSTER_STATE      default $ELASTIC_AIRFLOW_CACHE/run/cluster;
#                                      the admin kubeconfig is $STATE/kubeconfig
#   ELASTIC_AIRFLOW_CLUSTER_PORT_BASE  default 16443: apiserver = base, etcd client
#                                      +1, etcd peer +2, controller-manager +3,
#                                      scheduler +4, kubelet +5 and +6 (healthz),
#                                      kube-proxy +7 (healthz) and +8 (metrics)
#   ELASTIC_AIRFLOW_CLUSTER_REAL_NODE  1 (default): start the real node; 0: KWOK only.
#                                      One real node runs on a machine at a time.
#   ELASTIC_AIRFLOW_CLUSTER_NODES      number of fake nodes, default 3
#   ELASTIC_AIRFLOW_CLUSTER_PVS        PersistentVolumes on the fake nodes, default 20
#   ELASTIC_AIRFLOW_CLUSTER_NODE_PVS   PersistentVolumes on the real node, default 20
#
# Everything listens on 127.0.0.1, but for what pods must reach: with a real
# node the apiserver and the kubelet listen on the node's bridge address
# 198.18.0.1 (our own range, on a bridge we create; see node.sh). Each
# component logs to $STATE/logs/ and its pid is kept in $STATE/pids/; `down`
# signals only those pids, after checking that each still runs our binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

export ELASTIC_AIRFLOW_CACHE=${ELASTIC_AIRFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/elastic-airflow}
STATE=${ELASTIC_AIRFLOW_CLUSTER_STATE:-$ELASTIC_AIRFLOW_CACHE/run/cluster}
PORT_BASE=${ELASTIC_AIRFLOW_CLUSTER_PORT_BASE:-16443}
NODES=${ELASTIC_AIRFLOW_CLUSTER_NODES:-3}
PVS=${ELASTIC_AIRFLOW_CLUSTER_PVS:-20}
NODE_PVS=${ELASTIC_AIRFLOW_CLUSTER_NODE_PVS:-20}
REAL_NODE=${ELASTIC_AIRFLOW_CLUSTER_REAL_NODE:-1}
API_PORT=$PORT_BASE
ETCD_PORT=$((PORT_BASE + 1))
ETCD_PEER_PORT=$((PORT_BASE + 2))
KCM_PORT=$((PORT_BASE + 3))
SCHED_PORT=$((PORT_BASE + 4))
SERVICE_CIDR=198.19.0.0/16
SERVICE_IP=198.19.0.1
ISSUER=https://kubernetes.default.svc.cluster.local
# shellcheck source=node.sh
. "$here/node.sh"
# Stop order; start order is the reverse. pv-recycler is cluster.sh itself in
# a loop (see recycle_loop), the others are the binaries of the same name.
# With a real node, kube-proxy, kubelet and containerd stop right after the
# pv-recycler (node_down).
CONTROL_PLANE=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
NODE_COMPONENTS=(kube-proxy kubelet containerd)
# What runs: `up` decides (ELASTIC_AIRFLOW_CLUSTER_REAL_NODE) and records it
# in the state dir ($STATE/node/enabled) for status and down.
components() {
  if [ -f "$STATE/node/enabled" ]; then
    echo pv-recycler "${NODE_COMPONENTS[@]}" "${CONTROL_PLANE[@]}"
  else
    echo pv-recycler "${CONTROL_PLANE[@]}"
  fi
}
# The apiserver's address: the node's, where pods must reach it.
api_host() { if [ -f "$STATE/node/enabled" ]; then echo "$NODE_IP"; else echo 127.0.0.1; fi; }

log() { printf '[cluster %2ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_of() { cat "$STATE/pids/$1.pid" 2>/dev/null || true; }

# True when the recorded pid of component $1 is alive AND runs a binary named
# $1 (so a recycled pid that now belongs to something else is never ours).
alive() {
  local pid exe
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ "$1" = pv-recycler ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "_recycle-loop $STATE"
    return
  fi
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "$(basename "${exe% (deleted)}")" = "$1" ]
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

kubectl() { "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

# ---------------------------------------------------------------- PKI (openssl)
# ECDSA P-256 keys: generated in milliseconds, accepted by every component.
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

newca() { # name CN
  newkey "$PKI/$1.key"
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 -out "$PKI/$1.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}

# newcert name ca subject usage [subjectAltName]
newcert() {
  local name=$1 ca=$2 subj=$3 usage=$4 san=${5:-}
  newkey "$PKI/$name.key"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"  # ECDSA: signing only
    echo "extendedKeyUsage=$usage"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" 2>/dev/null |
    openssl x509 -req -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial -days 365 \
      -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.ext"
}

make_pki() {
  PKI=$STATE/pki
  mkdir -p "$PKI"
  newca ca elastic-airflow-local-ca            # cluster CA: apiserver, clients, CSR signing
  newca etcd-ca elastic-airflow-local-etcd-ca  # etcd's own CA
  newca front-proxy-ca elastic-airflow-local-front-proxy-ca  # aggregation layer
  local loop="IP:127.0.0.1,DNS:localhost"
  newcert apiserver ca /CN=kube-apiserver serverAuth \
    "$loop,IP:$NODE_IP,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  newcert admin ca "/O=system:masters/CN=kubernetes-admin" clientAuth
  newcert controller-manager ca /CN=system:kube-controller-manager clientAuth
  newcert scheduler ca /CN=system:kube-scheduler clientAuth
  # KWOK plays the kubelet of many nodes at once, so the Node authorizer (one
  # identity per node) cannot serve it: it gets its own ClusterRole (bootstrap()).
  newcert kwok ca /CN=system:kwok-controller clientAuth
  newcert etcd-server etcd-ca /CN=etcd serverAuth,clientAuth "$loop"
  newcert apiserver-etcd-client etcd-ca /CN=kube-apiserver-etcd-client clientAuth
  newcert front-proxy-client front-proxy-ca /CN=front-proxy-client clientAuth
  # The service-account token signing pair.
  newkey "$PKI/sa.key"
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

b64() { base64 -w0 <"$1"; }

kubeconfig() { # out cert-name user
  umask 077
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: elastic-airflow-local
  cluster:
    server: https://$(api_host):$API_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: elastic-airflow-local
  context:
    cluster: elastic-airflow-local
    user: $3
current-context: elastic-airflow-local
EOF
  umask 022
}

# ------------------------------------------------------------------ processes
start() { # name args...: one of our binaries in $BIN
  start_system "$1" "$BIN/$1" "${@:2}"
}

start_system() { # name path args...
  local name=$1 path=$2; shift 2
  log "starting $name"
  # setsid: the component outlives the shell (and its terminal) that ran `up`.
  setsid "$path" "$@" </dev/null >"$STATE/logs/$name.log" 2>&1 9>&- &
  echo $! >"$STATE/pids/$name.pid"
}

wait_for() { # description timeout-seconds command...
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then die "timed out after ${timeout}s waiting for $what (logs: $STATE/logs)"; fi
    for c in "${STARTED[@]}"; do
      alive "$c" || die "$c exited while waiting for $what; last lines of $STATE/logs/$c.log:
$(tail -n 20 "$STATE/logs/$c.log")"
    done
    sleep 0.2
  done
}

# One PersistentVolume of the pool: local_pv name pool path node.
local_pv() {
  cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $1
  labels: {elastic-airflow.io/pool: $2}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard
  volumeMode: Filesystem
  local: {path: $3}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$4]}
EOF
}

# Objects the cluster needs before the test workloads arrive.
bootstrap_manifest() {
  cat <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:kwok-controller
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [nodes/status, pods/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, update]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:kwok-controller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kwok-controller
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:kwok-controller
---
# Storage without a provisioner, honestly: nothing here creates volumes on
# demand (no CSI driver), so the default class uses the "no-provisioner"
# marker and WaitForFirstConsumer, and up() creates a fixed pool of `local`
# PersistentVolumes pinned to the fake nodes (and, in node.sh, directories of
# the real node, which its kubelet really mounts). The real
# scheduler (VolumeBinding plugin) picks a node that has a free matching PV and
# the real PV controller binds the claim. Named `standard` like kind's default
# class so manifests written for kind work unchanged. The pool is finite
# (ELASTIC_AIRFLOW_CLUSTER_PVS x 10Gi, Retain): the pv-recycler loop makes
# Released pool volumes Available again every few seconds, which is what the
# cleaner of a static provisioner does (there is no data to wipe here).
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
  local i node
  for ((i = 0; i < NODES; i++)); do
    node=kwok-node-$i
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/hostname: $node
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/worker: ""
spec:
  # Only what tolerates this lands here: nothing runs in a fake node's pods.
  taints:
  - {key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}
status:
  # An address in the KWOK pod range, which routes nowhere (node.sh's guard
  # drops it): a fake node is never dialled, and a loopback address would be
  # rejected in Endpoints of hostNetwork pods.
  addresses:
  - {type: InternalIP, address: 198.18.255.$((10 + i))}
  - {type: Hostname, address: $node}
  capacity: {cpu: "4", memory: 16Gi, pods: "110", ephemeral-storage: 100Gi}
  allocatable: {cpu: "4", memory: 16Gi, pods: "110", ephemeral-storage: 100Gi}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: $KUBERNETES_VERSION
EOF
  done
  # No fake node, no fake volume (and no division by zero).
  [ "$NODES" -gt 0 ] || return 0
  for ((i = 0; i < PVS; i++)); do
    local_pv "local-pv-$(printf %02d "$i")" local "/var/lib/elastic-airflow-kwok/pv-$(printf %02d "$i")" \
      "kwok-node-$((i % NODES))"
  done
}

kwok_config() { # the stages, explicitly, read from the kwok module in GOMODCACHE
  local stages
  stages=$(readlink -f "$BIN/../kwok-stages") || die "no kwok stages at $BIN/../kwok-stages (run build.sh)"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [ -f "$stages/$f" ] || die "kwok stage file missing: $stages/$f"
    printf -- '--config=%s\n' "$stages/$f"
  done
}

all_nodes_ready() {
  local n
  n=$(kubectl get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$') || true
  [ "$n" -ge "$NODES" ]
}

cmd_up() {
  local t0=$SECONDS c
  if [ -d "$STATE/pids" ]; then
    local up=0 want
    read -ra want <<<"$(components)"
    for c in "${want[@]}"; do alive "$c" && up=$((up + 1)); done
    if [ $up -eq ${#want[@]} ]; then
      log "already up (state $STATE); nothing to do"
      echo "export KUBECONFIG=$STATE/kubeconfig"
      return 0
    fi
    [ $up -eq 0 ] || die "partly running ($up of ${#want[@]} components); run '$0 down' first"
    log "stale state from a previous run in $STATE: cleaning up after it"
    cmd_down
  fi
  BIN=$("$here/build.sh")
  local ports=($API_PORT $ETCD_PORT $ETCD_PEER_PORT $KCM_PORT $SCHED_PORT)
  [ "$REAL_NODE" = 0 ] || ports+=($KUBELET_PORT $KUBELET_HEALTHZ_PORT $PROXY_HEALTHZ_PORT $PROXY_METRICS_PORT)
  for p in "${ports[@]}"; do
    port_free "$p" || die "port 127.0.0.1:$p is in use (set ELASTIC_AIRFLOW_CLUSTER_PORT_BASE)"
  done
  [ "$REAL_NODE" = 0 ] || node_preflight
  rm -rf "$STATE"
  mkdir -p -m 700 "$STATE" "$STATE/etcd"
  mkdir -p "$STATE/logs" "$STATE/pids"
  echo "$BIN" >"$STATE/bin"
  STARTED=()
  UP_DONE=0
  trap 'if [ "$UP_DONE" = 0 ]; then log "up failed; stopping what it started (logs were in $STATE/logs, kept in $STATE.failed)"; keep_logs; cmd_down >/dev/null 2>&1 || true; fi' EXIT
  # The bridge first: with a real node the apiserver listens on its address.
  [ "$REAL_NODE" = 0 ] || node_network_up
  make_pki
  [ "$REAL_NODE" = 0 ] || node_pki
  kubeconfig "$STATE/kubeconfig" admin kubernetes-admin
  kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
  kubeconfig "$STATE/scheduler.kubeconfig" scheduler system:kube-scheduler
  kubeconfig "$STATE/kwok.kubeconfig" kwok system:kwok-controller

  start etcd --name=local --data-dir="$STATE/etcd" \
    --listen-client-urls="https://127.0.0.1:$ETCD_PORT" --advertise-client-urls="https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --cert-file="$PKI/etcd-server.crt" --key-file="$PKI/etcd-server.key" \
    --trusted-ca-file="$PKI/etcd-ca.crt" --client-cert-auth \
    --unsafe-no-fsync --log-level=warn
  STARTED+=(etcd)

  # With a real node the apiserver listens on the node's address, and the
  # default (lease) endpoint reconciler publishes it as the endpoint of the
  # `kubernetes` Service, so pods reach the API with their token. The
  # apiserver reaches kubelets by their InternalIP (not through the outside
  # resolver) and verifies their serving certificates against the cluster CA.
  # Without one (KWOK only), it stays on loopback, which the reconciler
  # rejects as an endpoint ("may not be in the loopback range"): none.
  local api_flags
  if [ "$REAL_NODE" = 1 ]; then
    api_flags=(--kubelet-preferred-address-types=InternalIP,Hostname
               --kubelet-certificate-authority="$PKI/ca.crt"
               --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
               --kubelet-client-key="$PKI/apiserver-kubelet-client.key")
  else
    api_flags=(--endpoint-reconciler-type=none)
  fi
  start kube-apiserver --bind-address="$(api_host)" --secure-port="$API_PORT" --advertise-address="$(api_host)" \
    "${api_flags[@]}" --enable-admission-plugins=NodeRestriction \
    --etcd-servers="https://127.0.0.1:$ETCD_PORT" --etcd-cafile="$PKI/etcd-ca.crt" \
    --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer="$ISSUER" --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --cert-dir="$PKI/apiserver-generated" --profiling=false --v=1
  STARTED+=(kube-apiserver)
  wait_for "kube-apiserver /readyz" 60 kubectl get --raw /readyz

  kubectl apply --server-side --force-conflicts -f - >/dev/null < <(bootstrap_manifest)

  start kube-controller-manager --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --cert-dir="$PKI/controller-manager-generated" \
    --use-service-account-credentials=true --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --controllers='*' --profiling=false --v=1
  STARTED+=(kube-controller-manager)

  start kube-scheduler --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --kubeconfig="$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --leader-elect=false --profiling=false --v=1
  STARTED+=(kube-scheduler)

  # No --server-address / --node-port: kwok serves nothing (no logs/exec), so
  # it opens no port at all. Leases make node heartbeats cheap and prompt.
  mapfile -t kwok_configs < <(kwok_config)
  start kwok --kubeconfig="$STATE/kwok.kubeconfig" "${kwok_configs[@]}" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 --cidr="$KWOK_POD_CIDR"
  STARTED+=(kwok)

  # Background loop, not a binary: returns Released pool PVs to the pool.
  log "starting pv-recycler"
  setsid bash "$here/cluster.sh" _recycle-loop "$STATE" </dev/null >"$STATE/logs/pv-recycler.log" 2>&1 9>&- &
  echo $! >"$STATE/pids/pv-recycler.pid"
  STARTED+=(pv-recycler)

  [ "$REAL_NODE" = 0 ] || node_start
  wait_for "$NODES Ready nodes" 60 all_nodes_ready
  wait_for "ServiceAccount default/default" 60 kubectl -n default get serviceaccount default
  UP_DONE=1
  log "up in $((SECONDS - t0)) s; admin kubeconfig: $STATE/kubeconfig"
  echo "export KUBECONFIG=$STATE/kubeconfig"
}

keep_logs() {
  rm -rf "$STATE.failed"; cp -r "$STATE/logs" "$STATE.failed" 2>/dev/null || true
  cp -r "$STATE/pod-logs" "$STATE.failed/pods" 2>/dev/null || true
}

stop_component() { # name: TERM, then KILL after 10 s
  local c=$1 pid i
  alive "$c" || return 0
  pid=$(pid_of "$c")
  log "stopping $c (pid $pid)"
  if [ "$c" = pv-recycler ]; then
    # Its own process group (setsid): the loop and any kubectl it is running.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for ((i = 0; i < 100; i++)); do alive "$c" || break; sleep 0.1; done
  if alive "$c"; then log "$c did not stop in 10 s: KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  for ((i = 0; i < 50; i++)); do alive "$c" || break; sleep 0.1; done
  ! alive "$c" || die "could not stop $c (pid $pid)"
}

# Port-forwards that outlive their command (make demo records them here).
stop_port_forwards() {
  local f pid
  for f in "$STATE"/port-forwards/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--kubeconfig $STATE/kubeconfig"; then
      log "stopping port-forward $(basename "$f" .pid) (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
}

cmd_down() {
  local c
  [ -d "$STATE" ] || { log "not running (no state in $STATE)"; return 0; }
  stop_port_forwards
  stop_component pv-recycler
  node_down  # a no-op without a real node
  for c in "${CONTROL_PLANE[@]}"; do stop_component "$c"; done
  rm -rf "$STATE"
  log "down; removed $STATE"
}

cmd_status() {
  local c bad=0
  if [ ! -d "$STATE/pids" ]; then echo "not running (no state in $STATE)"; return 1; fi
  for c in $(components); do
    if alive "$c"; then printf '%-24s up (pid %s)\n' "$c" "$(pid_of "$c")"
    else printf '%-24s DOWN\n' "$c"; bad=1; fi
  done
  BIN=$(cat "$STATE/bin")
  if [ $bad -eq 0 ] && kubectl get --raw /readyz >/dev/null 2>&1; then
    printf '%-24s ok (https://%s:%s)\n' "readyz" "$(api_host)" "$API_PORT"
    echo "export KUBECONFIG=$STATE/kubeconfig"
  else
    printf '%-24s not ok\n' "readyz"; bad=1
  fi
  return $bad
}

cmd_recycle_pvs() {
  local pv
  BIN=$(cat "$STATE/bin" 2>/dev/null) || die "not running"
  for pv in $(kubectl get pv -l 'elastic-airflow.io/pool in (local,node)' \
      -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}'); do
    # A real node's volume holds the last claim's data: empty it first.
    if [ -d "$STATE/volumes/$pv" ]; then find "$STATE/volumes/$pv" -mindepth 1 -delete; fi
    kubectl patch pv "$pv" --type=json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null
    log "recycled $pv"
  done
}

recycle_loop() {
  BIN=$(cat "$STATE/bin")
  while [ -d "$STATE" ]; do
    cmd_recycle_pvs || true
    sleep 5
  done
}

# up and down of the same state dir never overlap (two engineers typing
# `make cluster-up` at once): the second waits, then finds the cluster up.
# Components are started with fd 9 closed so they do not hold the lock.
# Restart one running component with the command line it runs (the fault
# injection suite restarts the API server, etcd, the kubelet and containerd
# under a running workload), then wait until it serves again.
cmd_restart() { # name
  local name=$1 pid argv
  case "$name" in
    etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | containerd) ;;
    *) die "restart: unknown component '$name' (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, containerd)" ;;
  esac
  alive "$name" || die "restart: $name is not running"
  # The readiness checks below call kubectl ($BIN), which `up` sets.
  BIN=$(cat "$STATE/bin")
  pid=$(pid_of "$name")
  mapfile -d '' argv <"/proc/$pid/cmdline"
  stop_component "$name"
  mv -f "$STATE/logs/$name.log" "$STATE/logs/$name.log.1"
  STARTED=("$name")
  start_system "$name" "${argv[@]}"
  case "$name" in
    containerd) wait_for "containerd" 30 ctr_k8s version ;;
    kubelet) wait_for "node $NODE_NAME Ready" 90 node_ready ;;
    *) wait_for "the API server ready" 90 kubectl get --raw /readyz ;;
  esac
  log "$name restarted (pid $(pid_of "$name"))"
}

lock() {
  mkdir -p "$(dirname "$STATE")"
  exec 9>"${STATE%/}.lock"
  flock -w 1200 9 || die "another cluster.sh holds ${STATE%/}.lock"
}

case "${1:-}" in
  up) lock; cmd_up ;;
  down) lock; cmd_down ;;
  status) cmd_status ;;
  recycle-pvs) cmd_recycle_pvs ;;
  restart) lock; cmd_restart "${2:-}" ;;
  _recycle-loop) STATE=$2; recycle_loop ;;
  *) echo "usage: $0 up|down|status|recycle-pvs|restart COMPONENT" >&2; exit 2 ;;
esac
