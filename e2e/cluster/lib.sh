# Shared settings and helpers of up.sh and down.sh (sourced, not run).
#
# Everything the cluster creates outside WORKDIR is listed here, so that
# down.sh can remove it even when WORKDIR is lost or belongs to another run:
#   processes   all in the cgroup $CG_NAME (daemons, containerd shims, containers)
#   cgroups     $CG_NAME in every cgroup v1 hierarchy (or the v2 tree)
#   network     bridge $NODES_BRIDGE, dummy $SVC_DUMMY, netns wrn-node2 + veth,
#               bridge $CNI_BRIDGE (per node netns), route "unreachable $CLUSTER_CIDR",
#               iptables chain $EGRESS_CHAIN
#   files       /var/lib/kubelet (node 1 root-dir, the CSI driver's default),
#               /var/lib/kubelet-warren-node2, $RUN_DIR (sockets),
#               links of ours in /var/log/containers
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts sourcing this

BIN="${WARREN_E2E_BIN:-/var/cache/warren-e2e/bin}"

# How many nodes up.sh starts (1 to MAX_NODES). Node 1 runs in the host network
# namespace; node N > 1 in the network namespace wrn-nodeN (see README.md).
MAX_NODES=3
NODES="${WARREN_E2E_NODES:-$MAX_NODES}"

# --- network (every address below exists only on this machine) ---
NODES_BRIDGE=wrn-nodes          # host bridge linking the node network namespaces
NODES_PREFIX=172.30.0           # node N has $NODES_PREFIX.N/24; node 1 = host side
API_IP="$NODES_PREFIX.1"        # kube-apiserver binds and advertises this address
API_PORT=6443
KINE_PORT=12379                 # not 2379: leave the etcd port to anything else
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SVC_IP=10.96.0.1
CLUSTER_CIDR=10.244.0.0/16      # node N's pods: 10.244.(N-1).0/24
SVC_DUMMY=wrn-svc               # sink for service IPs nobody translated (empty bridge)
CNI_BRIDGE=wrn-cni0
EGRESS_CHAIN=WARREN-E2E-EGRESS  # drops pod traffic to anything off this cluster

# --- images (built locally by up.sh from Debian's busybox-static and the
#     upstream pause.c; no registry is reachable) ---
PAUSE_IMAGE=localhost/warren-e2e/pause:3.10.1
BUSYBOX_IMAGE=localhost/warren-e2e/busybox:1.35.0

CG_NAME=warren-e2e              # cgroup holding everything of the cluster
RUN_DIR=/run/warren-e2e         # unix sockets: short paths (108-byte limit)
CLUSTER_DOMAIN=cluster.local

node_name()    { echo "warren-node$1"; }
node_ip()      { echo "$NODES_PREFIX.$1"; }
node_netns()   { [[ $1 == 1 ]] || echo "wrn-node$1"; }   # empty: host netns
node_rootdir() { if [[ $1 == 1 ]]; then echo /var/lib/kubelet; else echo "/var/lib/kubelet-warren-node$1"; fi; }
node_podcidr() { echo "10.244.$(($1 - 1)).0/24"; }
node_cri_sock(){ echo "$RUN_DIR/node$1/containerd.sock"; }

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# cgroup_dirs SUBPATH: the directory of cgroup $CG_NAME/SUBPATH in every
# hierarchy (cgroup v1: one per mounted hierarchy, named ones included).
cgroup_dirs() {
  local sub="$CG_NAME${1:+/$1}" d
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    echo "/sys/fs/cgroup/$sub"
    return
  fi
  for d in /sys/fs/cgroup/*/; do
    d="${d%/}"
    [[ -L "$d" ]] && continue                      # cpu,cpuacct style aliases
    case "$(stat -f -c %T "$d" 2>/dev/null)" in    # v1 hierarchies + hybrid v2 part
      cgroupfs | cgroup2fs) ;;
      *) continue ;;
    esac
    echo "$d/$sub"
  done
}

# cgroup_procs_file: where a pid is written to join $CG_NAME/daemons. One
# hierarchy is enough to track processes; pids is there on v1 and v2 alike.
cgroup_procs_file() {
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    echo "/sys/fs/cgroup/$CG_NAME/daemons/cgroup.procs"
  else
    echo "/sys/fs/cgroup/pids/$CG_NAME/daemons/cgroup.procs"
  fi
}

# cgroup_tree_pids: every process in the cluster's cgroup tree.
cgroup_tree_pids() {
  local d
  for d in $(cgroup_dirs ""); do
    if [[ -d $d ]]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
  done | sort -un
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
  local dir="$1"
  awk -v d="$dir" '{ gsub(/\\040/, " ", $5); if ($5 == d || index($5, d "/") == 1) print $5 }' /proc/self/mountinfo |
    awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

# unmount_under DIR: unmounts everything at or below DIR (lazily if busy).
unmount_under() {
  local m
  [[ -e "$1" ]] || return 0
  while read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
  done < <(mounts_under "$(realpath -m "$1")")
}
