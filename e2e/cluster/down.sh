#!/usr/bin/env bash
# down.sh WORKDIR: stops the cluster started by up.sh and removes what it left
# on the machine: processes (daemons, containerd shims, containers), mounts,
# cgroups, network devices/namespaces/routes/iptables rules, kubelet state.
#
# It works from what lib.sh names, not only from WORKDIR's pid files, so it also
# cleans up after a crashed run or a run with another WORKDIR. Safe to run when
# nothing is running. WORKDIR's logs/ and pki/ are kept for debugging; the
# bulky state (containerd images and snapshots, the kine database) is removed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ $# == 1 ]] || { echo "usage: $0 WORKDIR" >&2; exit 2; }
[[ $EUID == 0 ]] || die "must run as root"
W="$(realpath -m "$1")"
[[ $W != / ]] || die "WORKDIR must not be /"
if [[ -d $W && -n "$(ls -A "$W")" && ! -e "$W/.warren-e2e-workdir" ]]; then
  die "$W is not empty and was not made by up.sh; refusing to clean it"
fi

# Work directories to clean: this one and the one of the last up.sh, if other.
workdirs=("$W")
if [[ -f "$RUN_DIR.workdir" ]]; then
  prev="$(cat "$RUN_DIR.workdir")"
  [[ $prev == "$W" || ! -e "$prev/.warren-e2e-workdir" ]] || workdirs+=("$prev")
fi

# ---------------------------------------------------------------------------
# 1. Processes. Politely first (kubelet and containerd stop cleanly on TERM),
#    then everything left in the cluster's cgroup tree: that holds the daemons,
#    the containerd shims they spawned and every container process, and
#    nothing else, whichever WORKDIR they came from.
daemons=()
all="$(cgroup_tree_pids)"
for wd in "${workdirs[@]}"; do
  for f in "$wd"/run/*.pid; do
    [[ -f $f ]] || continue
    pid="$(cat "$f")"
    # Only if that pid is still in our cgroup tree (pids get reused).
    if grep -qx "$pid" <<<"$all"; then daemons+=("$pid"); fi
  done
done
if ((${#daemons[@]})); then
  kill -TERM "${daemons[@]}" 2>/dev/null || true
  for _ in $(seq 30); do   # up to 3 s for the daemons to exit cleanly
    kill -0 "${daemons[@]}" 2>/dev/null || break
    sleep 0.1
  done
fi
for _ in $(seq 100); do
  pids="$(cgroup_tree_pids)"
  [[ -n $pids ]] || break
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  sleep 0.1
done
[[ -z "$(cgroup_tree_pids)" ]] || log "warning: processes left in cgroup $CG_NAME: $(cgroup_tree_pids | tr '\n' ' ')"

# ---------------------------------------------------------------------------
# 2. Mounts: pod volumes and kubelet's self-bind under the kubelet root dirs;
#    container rootfs (overlay), shm and network namespaces under WORKDIR.
# Every node a run may have had, whatever WARREN_E2E_NODES says now.
for n in $(seq "$MAX_NODES"); do unmount_under "$(node_rootdir "$n")"; done
for wd in "${workdirs[@]}"; do unmount_under "$wd"; done
unmount_under "$RUN_DIR"

# ---------------------------------------------------------------------------
# 3. Cgroups: remove the (now empty) tree, deepest first.
for d in $(cgroup_dirs ""); do
  [[ -d $d ]] || continue
  find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  [[ ! -d $d ]] || log "warning: cannot remove cgroup $d"
done

# ---------------------------------------------------------------------------
# 4. Network.
# Nodes 2.. (each in its own namespace); deleting a namespace takes its veth end
# and its CNI bridge along.
for n in $(seq 2 "$MAX_NODES"); do
  ip netns del "$(node_netns "$n")" 2>/dev/null || true
  ip link del "wrn-n$n-host" 2>/dev/null || true
done
for dev in "$CNI_BRIDGE" "$NODES_BRIDGE" "$SVC_DUMMY"; do
  ip link del "$dev" 2>/dev/null || true
done
# Pods' host-side veths die with their network namespaces; routes with devices.
ip route del unreachable "$CLUSTER_CIDR" 2>/dev/null || true
while iptables -D FORWARD -s "$CLUSTER_CIDR" -j "$EGRESS_CHAIN" 2>/dev/null; do :; done
iptables -F "$EGRESS_CHAIN" 2>/dev/null || true
iptables -X "$EGRESS_CHAIN" 2>/dev/null || true
# kube-proxy's KUBE-* chains: only our kube-proxies create them on this host.
if command -v iptables-save >/dev/null && iptables-save 2>/dev/null | grep -q '^:KUBE-'; then
  for t in nat filter mangle; do
    iptables-save -t "$t" 2>/dev/null | grep -q 'KUBE-' || continue
    # Drop rules that jump to KUBE-* from built-in chains, then the chains.
    iptables-save -t "$t" 2>/dev/null | awk '/^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-j KUBE-/ { sub(/^-A/, "-D"); print }' |
      while read -r rule; do eval "iptables -t $t $rule" 2>/dev/null || true; done
    for c in $(iptables-save -t "$t" 2>/dev/null | awk -F'[: ]' '/^:KUBE-/ {print $2}'); do iptables -t "$t" -F "$c" 2>/dev/null || true; done
    for c in $(iptables-save -t "$t" 2>/dev/null | awk -F'[: ]' '/^:KUBE-/ {print $2}'); do iptables -t "$t" -X "$c" 2>/dev/null || true; done
  done
fi

# ---------------------------------------------------------------------------
# 5. Files. --one-file-system: never descend into a mount that survived.
for n in $(seq "$MAX_NODES"); do
  root="$(node_rootdir "$n")"
  if [[ -d $root ]]; then rm -rf --one-file-system "${root:?}"; fi
done
find /var/log/containers -maxdepth 1 -xtype l -delete 2>/dev/null || true  # dangling links of our pods
rm -rf --one-file-system "$RUN_DIR"
for wd in "${workdirs[@]}"; do
  [[ -e "$wd/.warren-e2e-workdir" ]] || continue
  rm -rf --one-file-system "$wd"/node* "$wd/kine" "$wd/images" "$wd/run"
done
rm -f "$RUN_DIR.workdir"
log "cluster stopped and cleaned up"
