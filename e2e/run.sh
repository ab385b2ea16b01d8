#!/usr/bin/env bash
# e2e/run.sh: Warren's end-to-end suite on a real three-node Kubernetes cluster
# (WARREN_E2E_NODES=2 for two; some replicated scenarios then skip).
#
#   bash e2e/run.sh             (as root; what CI runs)
#   WARREN_E2E_MODES=edge WARREN_E2E_ONLY='^s_replicated_grow$' WARREN_E2E_KEEP=1 bash e2e/run.sh
#                               (one mode, one scenario, the cluster left running)
#
# 1. builds what is missing: the cluster's binaries (e2e/cluster/build.sh, cached in
#    /var/cache/warren-e2e) and Warren's container image (deploy/image/build.sh);
# 2. starts the cluster (e2e/cluster/up.sh: kine, kube-apiserver, controller-manager,
#    scheduler, and per node containerd + runc, kubelet, kube-proxy), imports the image
#    into each node's containerd and installs the VolumeSnapshot CRDs;
# 3. deploys Warren's edge mode from deploy/manifests/edge.yaml: one DaemonSet, no
#    sidecars;
# 4. runs the scenarios below, each reported PASS or FAIL with what went wrong;
# 5. tears everything down (WARREN_E2E_KEEP=1 leaves the cluster running).
#
# The nodes share this machine's file system (node N > 1 differs only by its network
# namespace and kubelet root dir, see e2e/cluster/README.md), so node N's Warren runs
# from a copy of the DaemonSet with node N's paths: kubelet dir
# /var/lib/kubelet-warren-nodeN and state /var/lib/warren-warren-nodeN. Node 1's runs
# from the manifest as shipped (plus a node selector).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=cluster/lib.sh
source "$HERE/cluster/lib.sh"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ $EUID == 0 ]] || die "must run as root"
W="${WARREN_E2E_WORKDIR:-/tmp/warren-e2e}"
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml")"
IMAGE_TAR="${WARREN_E2E_IMAGE:-$REPO/deploy/image/out/warren-$VERSION-amd64.oci.tar}"
SIDECAR_IMAGES="${WARREN_E2E_SIDECARS:-/var/cache/warren-e2e/sidecars}/images.txt"
SNAPSHOT_CRDS_MODULE=github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0
NODE1="$(node_name 1)" NODE2="$(node_name 2)" NODE3="$(node_name 3)"
((NODES >= 2)) || die "the e2e suite needs at least 2 nodes (WARREN_E2E_NODES=$NODES)"
# Every node of the cluster, node 1 first.
ALL_NODES=()
for n in $(seq "$NODES"); do ALL_NODES+=("$(node_name "$n")"); done
MODES="${WARREN_E2E_MODES:-edge standard}"
T0=$SECONDS

# Where each node's Warren keeps its volumes, as seen from this host.
warren_state_dir() { if [[ $1 == "$NODE1" ]]; then echo /var/lib/warren; else echo "/var/lib/warren-$1"; fi; }
warren_storage_root() { echo "$(warren_state_dir "$1")/storage"; }

# remove_warren_state: loop devices over the volumes of an earlier run, then the state
# directories. Refuses a state directory this suite did not create.
remove_warren_state() {
  local n dir dev
  # Every node a run may have had, whatever WARREN_E2E_NODES says now.
  for n in $(seq "$MAX_NODES"); do
    dir="$(warren_state_dir "$(node_name "$n")")"
    [[ -e $dir ]] || continue
    if [[ ! -e $dir/.warren-e2e ]] && [[ -n "$(ls -A "$dir" 2>/dev/null)" ]]; then
      die "$dir exists and was not made by the e2e suite: move it away first"
    fi
    unmount_under "$dir"
    for dev in $(losetup -nO NAME,BACK-FILE | awk -v d="$dir/" 'index($2, d) == 1 {print $1}'); do
      losetup -d "$dev" || log "warning: cannot detach $dev"
    done
    rm -rf --one-file-system "$dir"
  done
}

make_state_dirs() {
  local node
  for node in "${ALL_NODES[@]}"; do
    mkdir -p "$(warren_state_dir "$node")"
    touch "$(warren_state_dir "$node")/.warren-e2e"
  done
}

teardown() {
  if [[ ${WARREN_E2E_KEEP:-0} == 1 ]]; then
    log "WARREN_E2E_KEEP=1: cluster left running (source $W/env; e2e/cluster/down.sh $W)"
    return
  fi
  bash "$HERE/cluster/down.sh" "$W" >/dev/null 2>&1 || log "warning: down.sh failed"
  remove_warren_state
}

# ---------------------------------------------------------------------------
log "building what is missing"
bash "$HERE/cluster/build.sh" || die "building the cluster's binaries failed"
if [[ -z ${WARREN_E2E_IMAGE:-} ]]; then
  bash "$REPO/deploy/image/build.sh" >/dev/null || die "building Warren's image failed"
fi
[[ -f $IMAGE_TAR ]] || die "no image at $IMAGE_TAR"
if [[ $MODES == *standard* ]]; then
  bash "$HERE/sidecars/build.sh" >/dev/null || die "building the CSI sidecars' images failed"
fi
crd_dir="$(go mod download -json "$SNAPSHOT_CRDS_MODULE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/config/crd" ||
  die "cannot fetch the VolumeSnapshot CRDs ($SNAPSHOT_CRDS_MODULE) from the Go module proxy"

# A cluster left running by an earlier run (WARREN_E2E_KEEP=1) goes first: its Warren
# pods hold the volumes.
bash "$HERE/cluster/down.sh" "$W" >/dev/null || die "cannot stop the cluster left in $W"
remove_warren_state
trap teardown EXIT
bash "$HERE/cluster/up.sh" "$W" || die "the cluster did not come up (logs: $W/logs)"
# shellcheck disable=SC1091
source "$W/env"
make_state_dirs
for n in $(seq "$NODES"); do
  for tar in "$IMAGE_TAR" $([[ $MODES != *standard* ]] || awk '{print $2}' "$SIDECAR_IMAGES"); do
    ctr --address "$(node_cri_sock "$n")" -n k8s.io images import "$tar" >/dev/null ||
      die "importing $tar into node $n's containerd failed"
  done
done

# The CRDs come before Warren: it starts its snapshot controller only when they exist.
for crd in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
  k apply -f "$crd_dir/snapshot.storage.k8s.io_$crd.yaml" >/dev/null
done
k wait --for=condition=Established --timeout=60s crd/volumesnapshots.snapshot.storage.k8s.io >/dev/null

# ---------------------------------------------------------------------------
csinode_has_warren() {
  [[ "$(k get csinode "$1" -o 'jsonpath={.spec.drivers[?(@.name=="warren.csi.dev")].topologyKeys[0]}')" == topology.warren.csi.dev/node ]]
}

# deploy MODE: Warren from deploy/manifests/MODE.yaml (node DaemonSet split per node, see
# node-daemonsets.py), and waits until every node has registered it with its kubelet.
deploy() {
  local mode="$1" objects="$W/warren-$1.json" manifest="$REPO/deploy/manifests/$1.yaml"
  if [[ $mode == standard ]]; then
    standard_manifest # sets STANDARD_MANIFEST, and NO_RESIZER when there is no resizer
    manifest="$STANDARD_MANIFEST"
  fi
  local n others=()
  for n in $(seq 2 "$NODES"); do
    others+=("node$n:$(node_name "$n"):$(node_rootdir "$n"):$(warren_state_dir "$(node_name "$n")")")
  done
  k apply --dry-run=client -o json -f "$manifest" |
    python3 "$HERE/node-daemonsets.py" "$NODE1" "${others[@]}" \
      >"$objects" || die "transforming the $mode manifests failed"
  k apply -f "$objects" >/dev/null || die "applying the $mode manifests failed"
  local rollouts=(ds/warren) node
  for n in $(seq 2 "$NODES"); do rollouts+=("ds/warren-node$n"); done
  if [[ $mode == standard ]]; then
    # What the install notes ask of the user: the agent token the controller and nodes share.
    k -n warren-system create secret generic warren-agent-token \
      --from-literal=token="$(head -c 32 /dev/urandom | base64 | tr -d '/+=')" >/dev/null
    # The cluster's snapshot controller (an add-on in a standard cluster, not Warren's).
    sed "s|@IMAGE@|$(sidecar_image snapshot-controller)|" "$HERE/snapshot-controller.yaml" | k apply -f - >/dev/null
    rollouts=(ds/warren-node deploy/warren-controller)
    for n in $(seq 2 "$NODES"); do rollouts+=("ds/warren-node-node$n"); done
  fi
  (
    set -e
    for r in "${rollouts[@]}"; do k -n warren-system rollout status "$r" --timeout=180s; done
    for node in "${ALL_NODES[@]}"; do
      wait_until "node $node registers warren.csi.dev (CSINode)" 60 csinode_has_warren "$node"
    done
  ) || {
    k -n warren-system get pods -o wide
    for p in $(k -n warren-system get pods -o name); do k -n warren-system logs "$p" --all-containers --tail=40; done
    die "Warren ($mode mode) did not start on every node"
  }
}

# standard_manifest: STANDARD_MANIFEST=deploy/manifests/standard.yaml, or when a sidecar could not be built
# here, the chart rendered as render.sh does with that sidecar's chart option off (each
# said loudly; the scenario that needs a missing sidecar is skipped with the reason).
standard_manifest() {
  local sets=() refused="the Go module proxy refuses it here (403), so no image can be built"
  if [[ -z "$(sidecar_image csi-node-driver-registrar)" ]]; then
    log "standard mode WITHOUT node-driver-registrar ($refused): node.registration=builtin, Warren registers itself"
    sets+=(--set node.registration=builtin)
  fi
  if [[ -z "$(sidecar_image livenessprobe)" ]]; then
    log "standard mode WITHOUT livenessprobe ($refused): sidecars.livenessProbe.enabled=false, probes ask Warren's /healthz"
    sets+=(--set sidecars.livenessProbe.enabled=false)
  fi
  if [[ -z "$(sidecar_image csi-resizer)" ]]; then
    NO_RESIZER="external-resizer (github.com/kubernetes-csi/external-resizer): $refused; the standard mode has no resizer here"
    log "standard mode WITHOUT csi-resizer: $NO_RESIZER"
    sets+=(--set sidecars.resizer.enabled=false)
  fi
  STANDARD_MANIFEST="$REPO/deploy/manifests/standard.yaml"
  ((${#sets[@]})) || return 0
  local helm="${HELM:-$(bash "$REPO/deploy/install-helm.sh")}"
  "$helm" template warren "$REPO/deploy/helm/warren" --namespace warren-system \
    --set createNamespace=true --set volumeSnapshotClass.enabled=false \
    --set mode=standard --set agentToken.existingSecret=warren-agent-token "${sets[@]}" \
    >"$W/standard.yaml" || die "helm template failed"
  STANDARD_MANIFEST="$W/standard.yaml"
}

# undeploy MODE: removes what deploy made and every volume left on the nodes, so the next
# mode starts from empty nodes.
undeploy() {
  local mode="$1"
  k delete -f "$W/warren-$mode.json" --wait=true --timeout=120s >/dev/null 2>&1 || true
  if [[ $mode == standard ]]; then
    sed "s|@IMAGE@|x|" "$HERE/snapshot-controller.yaml" | k delete -f - --wait=true >/dev/null 2>&1 || true
  fi
  no_warren_pods() { [[ -z "$(k get pods -A -l app.kubernetes.io/name=warren -o name)" ]]; }
  (wait_until "Warren's pods gone" 120 no_warren_pods) || log "warning: Warren's pods are still there"
  remove_warren_state
  make_state_dirs
}

# sidecar_image NAME: the image reference the sidecar build made for NAME.
sidecar_image() { awk -v n="/$1:" 'index($1, n) {print $1; exit}' "$SIDECAR_IMAGES"; }

# footprint MODE: RSS of the processes of Warren's pods (their pause process left out), per
# pod: what the mode costs each node, and the controller pod in the standard mode.
footprint() {
  local mode="$1" entry pod uid node pid comm kb rss line
  echo
  echo "=== footprint ($mode mode): RSS of Warren's pods after the scenarios"
  for entry in $(k -n warren-system get pods -o jsonpath='{range .items[*]}{.metadata.name},{.metadata.uid},{.spec.nodeName}{"\n"}{end}'); do
    IFS=, read -r pod uid node <<<"$entry"
    rss=0 line=""
    for pid in $(grep -l "pod$uid" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3); do
      comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || continue
      [[ $comm != pause ]] || continue
      kb="$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)" || continue
      rss=$((rss + kb))
      line+=" $comm=$((kb / 1024))MiB"
    done
    echo "$pod on $node: $((rss / 1024)) MiB ($rss KiB):$line"
  done
}

# shellcheck source=scenarios.sh
source "$HERE/scenarios.sh"
# Loop devices attached before the run (other tests', the host's): s_no_loops_left ignores them.
LOOPS_BEFORE="$(losetup -nO NAME,BACK-FILE)"
for MODE in $MODES; do
  log "deploying the $MODE mode (deploy/manifests/$MODE.yaml)"
  deploy "$MODE"
  log "Warren ($MODE mode) is registered on all $NODES nodes ($((SECONDS - T0)) s since start)"
  k create namespace "$NS" >/dev/null
  # Classes beyond the chart's default warren-local (ext4 image, Delete, WaitForFirstConsumer).
  k apply -f "$HERE/classes.yaml" >/dev/null
  rm -f "$W/retained-volume"
  for s in "${SCENARIOS[@]}"; do
    # WARREN_E2E_ONLY (an extended regex on the scenario's function): run only those, to
    # chase one failure without the whole suite.
    [[ -z ${WARREN_E2E_ONLY:-} || ${s##*|} =~ $WARREN_E2E_ONLY ]] || continue
    scenario "$MODE: ${s%|*}" "${s##*|}"
  done
  footprint "$MODE"
  k delete namespace "$NS" --wait=true >/dev/null
  k delete -f "$HERE/classes.yaml" >/dev/null
  undeploy "$MODE"
done
scenario "teardown: no loop device left on a Warren image" s_no_loops_left

summary
log "e2e done in $((SECONDS - T0)) s"
((FAILED == 0))
