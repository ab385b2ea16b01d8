#!/usr/bin/env bash
# up.sh WORKDIR: starts a real Kubernetes cluster on this machine, as plain host
# processes: kine (etcd API over SQLite) -> kube-apiserver ->
# kube-controller-manager + kube-scheduler, and per node containerd (CRI) ->
# kubelet -> kube-proxy. Node 1 runs in the host network namespace, nodes 2 and
# 3 (WARREN_E2E_NODES=3, the default) each in its own network namespace.
#
# It first runs down.sh (leftovers of an earlier run, in this WORKDIR or any
# other, are removed), then waits until every node is Ready and a busybox pod
# on each node has written and read a file in an emptyDir.
#
# Afterwards:  source WORKDIR/env   (sets KUBECONFIG and PATH), then kubectl ...
# Binaries come from build.sh ($WARREN_E2E_BIN, default /var/cache/warren-e2e/bin).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ $# == 1 ]] || { echo "usage: $0 WORKDIR" >&2; exit 2; }
[[ $EUID == 0 ]] || die "must run as root (mounts, cgroups, network namespaces)"
[[ $NODES =~ ^[0-9]+$ ]] && ((NODES >= 1 && NODES <= MAX_NODES)) ||
  die "WARREN_E2E_NODES must be 1 to $MAX_NODES"
T0=$SECONDS

# ---------------------------------------------------------------------------
# 0. Clean slate. down.sh refuses to wipe a directory that is not ours.
"$HERE/down.sh" "$1"
W="$(realpath -m "$1")"
# down.sh checked that WORKDIR is ours (or empty) and left no mount in it.
rm -rf --one-file-system "$W"
mkdir -p "$W"
touch "$W/.warren-e2e-workdir"
mkdir -p "$W/logs" "$W/run" "$W/pki" "$W/kubeconfig"
# Remembered so that a later down.sh/up.sh with another WORKDIR cleans this one too.
echo "$W" >"$RUN_DIR.workdir"

step_t=$SECONDS
step() { log "$* (+$((SECONDS - step_t)) s since previous step, $((SECONDS - T0)) s total)"; step_t=$SECONDS; }

# ---------------------------------------------------------------------------
# 1. Preflight: fail with a clear message rather than half-way through.
for b in warren-k8s kine pause; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b missing: run e2e/cluster/build.sh first"
done
for c in containerd containerd-shim-runc-v2 runc ctr openssl iptables nsenter ip; do
  command -v "$c" >/dev/null || die "$c not found: run e2e/cluster/install-deps.sh"
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
  die "CNI plugins missing in /usr/lib/cni: run e2e/cluster/install-deps.sh"
[[ -x /bin/busybox ]] || die "/bin/busybox missing (busybox-static): run e2e/cluster/install-deps.sh"
export PATH="$BIN:$PATH"
KUBECTL=("$BIN/kubectl" --kubeconfig "$W/kubeconfig/admin.kubeconfig")

# ---------------------------------------------------------------------------
# 2. Cgroups. Every process of the cluster lives under $CG_NAME: daemons in
#    $CG_NAME/daemons (containerd shims inherit it), pods under
#    $CG_NAME/nodeN (the kubelets' cgroupRoot). down.sh kills that tree.
for d in $(cgroup_dirs "") $(cgroup_dirs daemons) $(for n in $(seq "$NODES"); do cgroup_dirs "node$n"; done); do
  mkdir -p "$d"
  # cgroup v1 cpuset: a new cgroup starts with no CPUs/memory nodes and no
  # process can join it; copy the parent's.
  if [[ -f "$d/cpuset.cpus" && -z "$(cat "$d/cpuset.cpus")" ]]; then
    cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
    cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
  fi
done
CG_PROCS="$(cgroup_procs_file)"

# start NAME NETNS CMD...: runs CMD detached (survives this script), inside the
# cluster cgroup and, when NETNS is set, in that network namespace only (not
# `ip netns exec`, which would also give it a private mount namespace: the
# kubelet's volume mounts must be visible on the host).
start() {
  local name="$1" netns="$2"; shift 2
  local pre=()
  [[ -z $netns ]] || pre=(nsenter "--net=/run/netns/$netns" --)
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$CG_PROCS" "${pre[@]}" "$@" \
    >"$W/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$W/run/$name.pid"
}

# wait_for DESC SECONDS DAEMON CMD...: retries CMD until it succeeds; fails
# early, with the daemon's log, if DAEMON died.
wait_for() {
  local desc="$1" timeout="$2" daemon="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -n $daemon ]] && ! kill -0 "$(cat "$W/run/$daemon.pid")" 2>/dev/null; then
      log "$daemon exited; last lines of $W/logs/$daemon.log:"
      tail -n 40 "$W/logs/$daemon.log" >&2
      die "$daemon died while waiting for: $desc"
    fi
    if ((SECONDS > deadline)); then
      [[ -z $daemon ]] || { log "last lines of $W/logs/$daemon.log:"; tail -n 40 "$W/logs/$daemon.log" >&2; }
      die "timed out after ${timeout}s waiting for: $desc"
    fi
    sleep 0.5
  done
}
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

step "preflight and cgroups done"

# ---------------------------------------------------------------------------
# 3. Network. All addresses are local to this machine; the routes and the
#    egress chain make sure no pod or service address ever leaks to eth0.
sysctl -qw net.ipv4.ip_forward=1
ip link add "$NODES_BRIDGE" type bridge
ip addr add "$API_IP/24" dev "$NODES_BRIDGE"
ip link set "$NODES_BRIDGE" up
# Service IPs are translated by kube-proxy (iptables DNAT). A local route makes
# the host's own connections to them possible (DNAT happens after the first
# route lookup) and sends untranslated ones into a sink that drops them: a
# bridge without ports and without ARP (this kernel has no dummy devices).
ip link add "$SVC_DUMMY" type bridge
ip link set "$SVC_DUMMY" arp off up
ip route replace "$SERVICE_CIDR" dev "$SVC_DUMMY"
# Pod addresses of no node: unreachable here rather than via the default route.
ip route replace unreachable "$CLUSTER_CIDR"
# Pods get no default route (see the CNI config) and, belt and braces, may only
# talk to the cluster's own addresses.
iptables -N "$EGRESS_CHAIN"
for dst in "$CLUSTER_CIDR" "$SERVICE_CIDR" "$NODES_PREFIX.0/24"; do
  iptables -A "$EGRESS_CHAIN" -d "$dst" -j RETURN
done
iptables -A "$EGRESS_CHAIN" -j DROP
iptables -I FORWARD -s "$CLUSTER_CIDR" -j "$EGRESS_CHAIN"

for n in $(seq 2 "$NODES"); do
  ns="$(node_netns "$n")"
  ip netns add "$ns"
  ip link add "wrn-n$n-host" type veth peer name eth0 netns "$ns"
  ip link set "wrn-n$n-host" master "$NODES_BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$(node_ip "$n")/24" dev eth0
  ip -n "$ns" link set eth0 up
  # No default route in a node namespace either: only the cluster's ranges.
  ip -n "$ns" route add "$CLUSTER_CIDR" via "$API_IP"
  ip -n "$ns" route add "$SERVICE_CIDR" via "$API_IP"
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
  # The host reaches node n's pods through node n.
  ip route replace "$(node_podcidr "$n")" via "$(node_ip "$n")"
done
step "network set up"

# ---------------------------------------------------------------------------
# 4. PKI: one CA signs every certificate; client identities are the CN (user)
#    and O (group) that RBAC and the Node authorizer expect.
P="$W/pki"
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet ecparam -name prime256v1 -genkey -noout -out "$P/ca.key"
openssl_quiet req -x509 -new -key "$P/ca.key" -subj "/CN=warren-e2e-ca" -days 3650 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out "$P/ca.crt"
# cert NAME SUBJECT [SAN]: key + certificate signed by the CA.
cert() {
  local name="$1" subj="$2" san="${3:-}"
  openssl_quiet ecparam -name prime256v1 -genkey -noout -out "$P/$name.key"
  openssl_quiet req -new -key "$P/$name.key" -subj "$subj" -out "$P/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } >"$P/$name.ext"
  openssl_quiet x509 -req -in "$P/$name.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
    -days 3650 -extfile "$P/$name.ext" -out "$P/$name.crt"
  rm -f "$P/$name.csr" "$P/$name.ext"
}
cert apiserver "/CN=kube-apiserver" \
  "IP:$API_IP,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=kubernetes-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/CN=system:kube-proxy"
# Aggregation layer identity: without a requestheader CA the controller-manager
# and scheduler log "missing content for CA bundle" every few seconds.
cert front-proxy-client "/CN=front-proxy-client"
for n in $(seq "$NODES"); do
  cert "kubelet-node$n" "/O=system:nodes/CN=system:node:$(node_name "$n")"
  # Serving certificate of the kubelet (kube-apiserver -> kubelet: logs, exec).
  cert "kubelet-node$n-serving" "/CN=$(node_name "$n")" "IP:$(node_ip "$n"),DNS:$(node_name "$n")"
done
# Service account tokens are signed with this key pair.
openssl_quiet genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$P/sa.key"
openssl_quiet pkey -in "$P/sa.key" -pubout -out "$P/sa.pub"

# kubeconfig NAME CERT: a kubeconfig for the client certificate CERT.
kubeconfig() {
  cat >"$W/kubeconfig/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: warren-e2e
  cluster:
    server: https://$API_IP:$API_PORT
    certificate-authority: $P/ca.crt
users:
- name: $2
  user:
    client-certificate: $P/$2.crt
    client-key: $P/$2.key
contexts:
- name: warren-e2e
  context: {cluster: warren-e2e, user: $2}
current-context: warren-e2e
EOF
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kube-proxy kube-proxy
for n in $(seq "$NODES"); do kubeconfig "kubelet-node$n" "kubelet-node$n"; done

cat >"$W/env" <<EOF
# source this file to use the Warren e2e cluster
export KUBECONFIG=$W/kubeconfig/admin.kubeconfig
export PATH=$BIN:\$PATH
EOF
step "certificates and kubeconfigs written"

# ---------------------------------------------------------------------------
# 5. Control plane.
mkdir -p "$W/kine"
# WAL: concurrent readers while the apiserver writes; the apiserver's
# lease/event writes are the main load.
start kine "" "$BIN/kine" \
  --endpoint "sqlite://$W/kine/state.db?_journal=WAL&cache=shared&_busy_timeout=30000" \
  --listen-address "127.0.0.1:$KINE_PORT"
wait_for "kine on 127.0.0.1:$KINE_PORT" 60 kine tcp_open 127.0.0.1 "$KINE_PORT"
step "kine up"

start kube-apiserver "" "$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$KINE_PORT" \
  --bind-address="$API_IP" --advertise-address="$API_IP" --secure-port="$API_PORT" \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" \
  --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$P/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$P/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --requestheader-client-ca-file="$P/ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$P/front-proxy-client.crt" --proxy-client-key-file="$P/front-proxy-client.key" \
  --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --profiling=false \
  --v=1
wait_for "kube-apiserver /readyz" 180 kube-apiserver "${KUBECTL[@]}" get --raw /readyz
step "kube-apiserver ready"

start kube-controller-manager "" "$BIN/kube-controller-manager" \
  --kubeconfig="$W/kubeconfig/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$W/kubeconfig/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$W/kubeconfig/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$P/sa.key" \
  --root-ca-file="$P/ca.crt" \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --profiling=false \
  --v=1
start kube-scheduler "" "$BIN/kube-scheduler" \
  --kubeconfig="$W/kubeconfig/scheduler.kubeconfig" \
  --authentication-kubeconfig="$W/kubeconfig/scheduler.kubeconfig" \
  --authorization-kubeconfig="$W/kubeconfig/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --leader-elect=false \
  --profiling=false \
  --v=1
step "kube-controller-manager and kube-scheduler started"

# ---------------------------------------------------------------------------
# 6. Images: pause (build.sh compiled upstream build/pause/linux/pause.c of
#    the same k8s.io/kubernetes module) and busybox (Debian's busybox-static).
IMG="$W/images"
mkdir -p "$IMG/pause-rootfs" "$IMG/busybox-rootfs"
cp "$BIN/pause" "$IMG/pause-rootfs/pause"
"$HERE/mkimage.sh" "$IMG/pause.tar" "$PAUSE_IMAGE" "$IMG/pause-rootfs" /pause

(
  cd "$IMG/busybox-rootfs"
  mkdir -p bin sbin usr/bin usr/sbin etc tmp root var proc sys dev
  chmod 1777 tmp
  cp /bin/busybox bin/busybox
  # one symlink per applet, where busybox itself would install it
  for applet in $(/bin/busybox --list-full); do
    [[ -e "$applet" ]] || ln -s /bin/busybox "$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >etc/passwd
  echo 'root:x:0:' >etc/group
)
"$HERE/mkimage.sh" "$IMG/busybox.tar" "$BUSYBOX_IMAGE" "$IMG/busybox-rootfs" /bin/sh
step "images built"

# ---------------------------------------------------------------------------
# 7. Nodes: containerd -> images -> CNI config -> kubelet -> kube-proxy.
for n in $(seq "$NODES"); do
  name="$(node_name "$n")" ns="$(node_netns "$n")" root="$(node_rootdir "$n")"
  N="$W/node$n"
  sock="$(node_cri_sock "$n")"
  mkdir -p "$N/containerd" "$N/cni/net.d" "$N/cni/ipam" "$N/pod-logs" "$(dirname "$sock")" "$root"

  # containerd: own root/state/socket, CRI on, cgroupfs, local pause image.
  # netns_mounts_under_state_dir: pod network namespaces are mounted under
  # state/ (not /var/run/netns), so down.sh finds them in WORKDIR.
  cat >"$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # Processes here lack CAP_SYS_RESOURCE, so nothing may LOWER its
  # oom_score_adj; the kubelet asks -998 for every pod sandbox and runc then
  # fails with "can't get final child's PID from pipe: EOF". This option
  # (meant for rootless containerd) clamps the value to containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$N/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/net.d"
    max_conf_num = 1
EOF
  start "containerd-node$n" "$ns" containerd --config "$N/containerd/config.toml" --log-level warn
  wait_for "containerd of node $n" 60 "containerd-node$n" ctr --address "$sock" version
  ctr --address "$sock" -n k8s.io images import "$IMG/pause.tar" >/dev/null
  ctr --address "$sock" -n k8s.io images import "$IMG/busybox.tar" >/dev/null

  # Pod network: a bridge per node, host-local addresses from the node's /24,
  # routes only to the cluster's ranges (no default route: pods cannot reach
  # anything off this machine).
  cat >"$N/cni/net.d/10-warren-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "warren-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$(node_podcidr "$n")"}]],
        "routes": [{"dst": "$CLUSTER_CIDR"}, {"dst": "$SERVICE_CIDR"}, {"dst": "$NODES_PREFIX.0/24"}]
      }
    }
  ]
}
EOF

  # kubelet. Root dir of node 1 is /var/lib/kubelet (the CSI driver's default).
  # It must be a shared mount for Bidirectional mount propagation (CSI node
  # plugins); the host's / is private here, so bind it onto itself first.
  mount --bind "$root" "$root"
  mount --make-rshared "$root"
  # Our own resolv.conf: pods must not learn (and try) the host's DNS server.
  echo "nameserver 127.0.0.1" >"$N/resolv.conf"
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hierarchy on this machine (hybrid): allowed up to Kubernetes 1.34
# by default; said explicitly so a version bump fails loudly, not silently.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CG_NAME/node$n
containerRuntimeEndpoint: unix://$sock
address: $(node_ip "$n")
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $P/kubelet-node$n-serving.crt
tlsPrivateKeyFile: $P/kubelet-node$n-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization:
  mode: Webhook
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $N/resolv.conf
podLogsDir: $N/pod-logs
failSwapOn: false
# Images cannot be pulled again here: never garbage-collect them, and do not
# evict pods because the CI disk is fuller than a production node's.
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
# Faster node status for tests (defaults: 10s / 5m).
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
serializeImagePulls: false
# Default -999 cannot be set without CAP_SYS_RESOURCE (see containerd config).
oomScoreAdj: 0
EOF
  start "kubelet-node$n" "$ns" "$BIN/kubelet" \
    --config="$N/kubelet.yaml" \
    --kubeconfig="$W/kubeconfig/kubelet-node$n.kubeconfig" \
    --root-dir="$root" \
    --hostname-override="$name" \
    --node-ip="$(node_ip "$n")" \
    --v=1

  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $W/kubeconfig/kube-proxy.kubeconfig}
hostnameOverride: $name
bindAddress: $(node_ip "$n")
clusterCIDR: $CLUSTER_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack table sizes alone (and a read-only /proc/sys is fine).
conntrack: {maxPerCore: 0}
oomScoreAdj: 0   # -999 needs CAP_SYS_RESOURCE, which processes here lack
nodePortAddresses: [primary]
EOF
  start "kube-proxy-node$n" "$ns" "$BIN/kube-proxy" --config="$N/kube-proxy.yaml" --v=1
done
step "containerd, kubelet and kube-proxy started on $NODES node(s)"

node_ready() {
  [[ "$("${KUBECTL[@]}" get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
for n in $(seq "$NODES"); do
  wait_for "node $(node_name "$n") Ready" 180 "kubelet-node$n" node_ready "$(node_name "$n")"
done
step "all nodes Ready"

# ---------------------------------------------------------------------------
# 8. Smoke test: on every node, a busybox pod writes and reads a file in an
#    emptyDir and exits 0. The default service account (needed to admit pods)
#    appears once kube-controller-manager has run.
wait_for "service account default/default" 120 kube-controller-manager \
  "${KUBECTL[@]}" get serviceaccount default -n default
for n in $(seq "$NODES"); do
  "${KUBECTL[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: smoke-node$n, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: $(node_name "$n")}   # through the scheduler
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: smoke
    image: $BUSYBOX_IMAGE
    command: [sh, -c, 'echo warren-e2e >/data/f && grep -qx warren-e2e /data/f && echo ok']
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
EOF
done
pod_phase() { "${KUBECTL[@]}" get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
pod_done() { local p; p="$(pod_phase "$1")"; [[ $p == Succeeded || $p == Failed ]]; }
for n in $(seq "$NODES"); do
  wait_for "pod smoke-node$n to finish" 120 "kubelet-node$n" pod_done "smoke-node$n"
  if [[ "$(pod_phase "smoke-node$n")" != Succeeded || "$("${KUBECTL[@]}" logs "smoke-node$n")" != ok ]]; then
    "${KUBECTL[@]}" describe pod "smoke-node$n" >&2 || true
    die "smoke pod on node $n failed"
  fi
done
"${KUBECTL[@]}" delete pod --all -n default --wait=false >/dev/null
step "smoke pods succeeded on $NODES node(s)"

log "cluster up in $((SECONDS - T0)) s: $NODES node(s), Kubernetes $(cat "$BIN/k8s-version" 2>/dev/null)"
log "use it:  source $W/env && kubectl get nodes      (logs: $W/logs/)"
