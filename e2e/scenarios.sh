# The end-to-end scenarios (sourced by e2e/run.sh). Each runs in a subshell with errexit;
# `fail` or any failing command ends it as FAIL. Later scenarios reuse claims made by
# earlier ones where the issue asks for it (a snapshot of data written by a pod).
# SCENARIOS lists "title|function".
# shellcheck shell=bash

SCENARIOS=(
  "a claim binds, a pod writes, a second pod reads it back|s_write_read"
  "WaitForFirstConsumer on two nodes: the volume lands on the pod's node|s_wffc_node2"
  "Immediate binding: Warren places the volume before any pod, a pod follows it|s_immediate"
  "online expansion (xfs) seen inside the running pod|s_online_expansion"
  "VolumeSnapshot, then restore into a new claim|s_snapshot_restore"
  "a clone of a claim|s_clone"
  "xfs: a clone and a restored snapshot mount beside their running source (issue 20)|s_xfs_copies_beside_source"
  "a VolumeSnapshot deleted after its claim goes with its content and data (issue 20)|s_snapshot_outlives_claim"
  "replicated (2 replicas): a pod on another node reads every byte; delete leaves no replica|s_replicated_move"
  "replicated: online expansion (xfs) seen inside the running pod|s_replicated_grow"
  "replicated: snapshot of a volume in use, restore, clone; a local volume and its snapshot copied into replicated ones|s_replicated_copies"
  "replicated: a replica node's Warren killed (kill -9) mid-write: no I/O error, incremental rebuild, replicas identical|s_replicated_replica_killed"
  "replicated: kubectl get replicatedvolumes shows the replicas, in sync, the engine's node, Detached when unstaged, gone with the PV|s_replicated_view"
  "reclaim Delete: nothing left behind|s_reclaim_delete"
  "reclaim Retain: the data is kept and can be bound again|s_reclaim_retain"
  "Warren killed (kill -9) while a volume is in use|s_node_restart"
  "everything deleted: no volume, loop device or mount left|s_all_gone"
)

TOKEN="warren-e2e-$RANDOM$RANDOM"

s_immediate() {
  pvc now1 1Gi warren-immediate
  # No pod asks for it: the edge mode's leader (or the standard mode's controller behind
  # external-provisioner) picks a node by free space and provisions at once.
  wait_until "claim now1 bound without a pod" 120 pvc_bound now1
  local pv node
  pv="$(pv_of now1)"
  node="$(pv_node "$pv")"
  [[ " ${ALL_NODES[*]} " == *" $node "* && -n $node ]] || fail "PV $pv pinned to '$node', want one of ${ALL_NODES[*]}"
  [[ -n "$(volume_dir "$pv" "$node")" ]] || fail "no volume for $pv in $(warren_storage_root "$node")"
  # The scheduler follows the PV's node affinity.
  [[ "$(run_pod nower "" now1 "echo $TOKEN >/data/token && cat /data/token")" == "$TOKEN" ]] ||
    fail "a pod on the placed volume did not read back its write"
  [[ "$(jp pod nower '{.spec.nodeName}')" == "$node" ]] || fail "pod ran on $(jp pod nower '{.spec.nodeName}'), volume is on $node"
  kn delete pod nower --wait=true >/dev/null
  kn delete pvc now1 --wait=true >/dev/null
  wait_until "PV $pv deleted" 90 gone pv "$pv"
  [[ -z "$(volume_dir "$pv" "$node")" ]] || fail "the volume of $pv is left on $node"
  echo "PV $pv placed on $node before any pod; a pod followed it; deleted with its storage"
}

s_write_read() {
  pvc data1 1Gi
  # WaitForFirstConsumer: nothing is provisioned before a pod needs the claim. Wait for the
  # PV controller's verdict (its WaitForFirstConsumer event), then the claim must be Pending.
  waits_for_consumer() {
    [[ -n "$(kn get events --field-selector involvedObject.name=data1,reason=WaitForFirstConsumer -o name)" ]]
  }
  wait_until "claim data1 seen waiting for its first consumer" 60 waits_for_consumer
  [[ "$(jp pvc data1 '{.status.phase}')" == Pending ]] || fail "claim bound before any pod used it"
  run_pod writer "$NODE1" data1 "echo $TOKEN >/data/token && sync && echo written"
  pvc_bound data1 || fail "claim data1 not bound"
  local got
  got="$(run_pod reader "" data1 "cat /data/token")"
  [[ $got == "$TOKEN" ]] || fail "second pod read '$got', want '$TOKEN'"
  local pv dir size
  pv="$(pv_of data1)"
  [[ "$(pv_node "$pv")" == "$NODE1" ]] || fail "PV $pv pinned to '$(pv_node "$pv")', want $NODE1"
  [[ "$(k get pv "$pv" -o 'jsonpath={.metadata.annotations.pv\.kubernetes\.io/provisioned-by}')" == warren.csi.dev ]] ||
    fail "PV $pv lacks pv.kubernetes.io/provisioned-by: warren.csi.dev"
  dir="$(volume_dir "$pv" "$NODE1")"
  [[ -n $dir ]] || fail "no volume for $pv in $(warren_storage_root "$NODE1")"
  size="$(stat -c %s "$dir/disk.img")"
  ((size == 1073741824)) || fail "image is $size bytes, want 1 GiB (enforced capacity)"
  echo "PV $pv on $NODE1, image $dir/disk.img of $size bytes; pods read back the token"
  kn delete pod writer reader --wait=true >/dev/null
}

s_wffc_node2() {
  pvc data2 1Gi
  run_pod writer2 "$NODE2" data2 "echo $TOKEN >/data/token && sync"
  local pv
  pv="$(pv_of data2)"
  [[ "$(pv_node "$pv")" == "$NODE2" ]] || fail "PV $pv pinned to '$(pv_node "$pv")', want $NODE2"
  [[ -n "$(volume_dir "$pv" "$NODE2")" ]] || fail "no volume for $pv on $NODE2"
  [[ -z "$(volume_dir "$pv" "$NODE1")" ]] || fail "volume for $pv also on $NODE1"
  # A pod without a node selector follows the volume to its node.
  run_pod reader2 "" data2 "cat /data/token" | grep -qx "$TOKEN" || fail "reader on the volume's node did not see the token"
  [[ "$(jp pod reader2 '{.spec.nodeName}')" == "$NODE2" ]] || fail "reader2 ran on $(jp pod reader2 '{.spec.nodeName}')"
  echo "PV $pv on $NODE2 only; a pod without node selector was scheduled there"
  kn delete pod writer2 reader2 --wait=true >/dev/null
}

fs_kib() { kn exec "$1" -- df -k /data | awk 'NR == 2 {print $2}'; }

s_online_expansion() {
  [[ -z ${NO_RESIZER:-} ]] || skip "$NO_RESIZER"
  pvc grow 512Mi warren-xfs
  pod grower "$NODE1" grow "echo $TOKEN >/data/token; sync; sleep 3600"
  wait_until "pod grower running" 120 pod_running grower
  local before after
  before="$(fs_kib grower)"
  kn patch pvc grow --type merge -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}' >/dev/null
  grown() { [[ "$(jp pvc grow '{.status.capacity.storage}')" == 2Gi ]] && (($(fs_kib grower) > 1900000)); }
  wait_until "the claim's capacity and the pod's file system to reach 2Gi" 120 grown
  after="$(fs_kib grower)"
  [[ "$(kn exec grower -- cat /data/token)" == "$TOKEN" ]] || fail "data lost during expansion"
  kn exec grower -- dd if=/dev/zero of=/data/big bs=1M count=1200 2>/dev/null || fail "cannot use the new space"
  [[ -z "$(jp pvc grow '{.status.conditions[*].type}')" ]] || fail "conditions left on the claim: $(jp pvc grow '{.status.conditions[*].type}')"
  echo "file system inside the running pod: $before KiB -> $after KiB; 1200 MiB written after growth"
  kn delete pod grower --wait=true >/dev/null
}

snapshot_ready() { [[ "$(jp volumesnapshot "$1" '{.status.readyToUse}')" == true ]]; }

# volume_snapshot NAME CLAIM: a VolumeSnapshot of CLAIM in Warren's class.
volume_snapshot() {
  kn apply -f - >/dev/null <<EOF
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: $1}
spec:
  volumeSnapshotClassName: warren-snapshots
  source: {persistentVolumeClaimName: $2}
EOF
}

s_snapshot_restore() {
  volume_snapshot snap1 data1
  wait_until "snapshot snap1 ready to use" 60 snapshot_ready snap1
  local content
  content="$(jp volumesnapshot snap1 '{.status.boundVolumeSnapshotContentName}')"
  [[ -n "$(k get volumesnapshotcontent "$content" -o 'jsonpath={.status.snapshotHandle}')" ]] ||
    fail "content $content has no snapshot handle"
  # The source changes after the snapshot; the restore must show the old data.
  run_pod changer "$NODE1" data1 "echo changed >/data/token" >/dev/null
  pvc restored 1Gi warren-local "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap1}"
  # The reader prefers node 2, so the scheduler selects node 2 first; the snapshot's data
  # is on node 1, so Warren makes the volume there and the pod must follow it.
  local got
  got="$(run_pod restore-reader "" restored "cat /data/token" "$NODE2")"
  [[ $got == "$TOKEN" ]] || fail "restored claim has '$got', want the snapshot's '$TOKEN'"
  [[ "$(pv_node "$(pv_of restored)")" == "$NODE1" ]] || fail "restored volume not on the snapshot's node"
  [[ "$(jp pod restore-reader '{.spec.nodeName}')" == "$NODE1" ]] || fail "the reader ran on $(jp pod restore-reader '{.spec.nodeName}')"
  echo "snapshot $content ready; restored claim holds the data as of the snapshot;"
  echo "the scheduler first selected $(jp pvc restored '{.metadata.annotations.volume\.kubernetes\.io/selected-node}'), the volume was made on $NODE1 and the pod followed it"
  kn delete pod changer restore-reader --wait=true >/dev/null
}

s_clone() {
  pvc clone1 1Gi warren-local "  dataSource: {kind: PersistentVolumeClaim, name: data1}"
  local got
  got="$(run_pod clone-reader "" clone1 "cat /data/token; echo clone-only >/data/clone" "$NODE2")"
  [[ $got == changed ]] || fail "clone has '$got', want the source's current 'changed'"
  run_pod source-reader "" data1 "test ! -e /data/clone" >/dev/null || fail "a write to the clone reached the source"
  echo "clone of data1 has its data; writes to the clone stay in the clone"
  kn delete pod clone-reader source-reader --wait=true >/dev/null
}

s_xfs_copies_beside_source() {
  pvc xsrc 1Gi warren-xfs
  pod xholder "$NODE1" xsrc "echo $TOKEN >/data/token; sync; sleep 3600"
  wait_until "pod xholder running" 120 pod_running xholder
  # Copies of a volume land on its node and carry its xfs UUID: they must mount there
  # while the source is mounted (xfs refuses a duplicate UUID unless told not to check).
  pvc xclone 1Gi warren-xfs "  dataSource: {kind: PersistentVolumeClaim, name: xsrc}"
  local got
  got="$(run_pod xclone-reader "$NODE1" xclone "cat /data/token")"
  [[ $got == "$TOKEN" ]] || fail "the xfs clone beside its source read '$got', want '$TOKEN'"
  volume_snapshot xsnap xsrc
  wait_until "snapshot xsnap ready to use" 60 snapshot_ready xsnap
  pvc xrestored 1Gi warren-xfs "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: xsnap}"
  got="$(run_pod xrestore-reader "$NODE1" xrestored "cat /data/token")"
  [[ $got == "$TOKEN" ]] || fail "the xfs restore beside its source read '$got', want '$TOKEN'"
  echo "an xfs clone and an xfs restore mounted on $NODE1 beside their running source"
  kn delete pod xholder xclone-reader xrestore-reader --wait=true >/dev/null
  kn delete pvc xclone xrestored --wait=true >/dev/null
  kn delete volumesnapshot xsnap --wait=true >/dev/null
  kn delete pvc xsrc --wait=true >/dev/null
}

s_snapshot_outlives_claim() {
  pvc short 1Gi
  run_pod shorty "$NODE1" short "echo $TOKEN >/data/token && sync" >/dev/null
  volume_snapshot orphan short
  wait_until "snapshot orphan ready to use" 60 snapshot_ready orphan
  local content handle pv dir
  content="$(jp volumesnapshot orphan '{.status.boundVolumeSnapshotContentName}')"
  handle="$(k get volumesnapshotcontent "$content" -o 'jsonpath={.status.snapshotHandle}')"
  [[ $handle == snap#*#"$NODE1"#* ]] || fail "content $content has handle '$handle', want a local snapshot on $NODE1"
  dir="$(warren_storage_root "$NODE1")/snapshots/${handle##*#}"
  [[ -d $dir ]] || fail "no snapshot storage at $dir"
  pv="$(pv_of short)"
  kn delete pod shorty --wait=true >/dev/null
  kn delete pvc short --wait=true >/dev/null
  wait_until "PV $pv deleted" 60 gone pv "$pv"
  # The claim and its volume are gone; the snapshot's own handle says whose it is.
  kn delete volumesnapshot orphan --wait=false >/dev/null
  wait_until "VolumeSnapshot orphan deleted" 60 gone -n "$NS" volumesnapshot orphan
  wait_until "VolumeSnapshotContent $content deleted" 60 gone volumesnapshotcontent "$content"
  [[ ! -e $dir ]] || fail "the snapshot's data is left at $dir"
  echo "claim and PV deleted first; the snapshot, its content $content and its data at $dir went after"
}

# replica_dir HANDLE NODE: the directory of the replica of volume HANDLE (replicated#KEY)
# in NODE's replica root (empty if there is none).
replica_dir() {
  local dir
  dir="$(warren_storage_root "$2")/replicas/${1#replicated#}"
  [[ ${1#replicated#} != "$1" && -e $dir ]] && echo "$dir"
  return 0
}

# replica_nodes HANDLE: the nodes holding a replica of HANDLE, one per line.
replica_nodes() {
  local node
  for node in "${ALL_NODES[@]}"; do
    [[ ! -f "$(replica_dir "$1" "$node")/meta.json" ]] || echo "$node"
  done
}

# a node of the cluster not in the list given (first found), else the last argument's
# fallback: not_in FALLBACK NODE...
not_in() {
  local fallback="$1" node; shift
  for node in "${ALL_NODES[@]}"; do
    [[ " $* " == *" $node "* ]] || { echo "$node"; return; }
  done
  echo "$fallback"
}

s_replicated_move() {
  pvc rep1 256Mi warren-replicated
  # 32 MiB of random data and its checksum, written on node 1, synced.
  run_pod repw "$NODE1" rep1 \
    "head -c 33554432 /dev/urandom >/data/blob && sha256sum /data/blob | cut -d' ' -f1 >/data/blob.sum && sync && cat /data/blob.sum" \
    >"$W/rep1.sum"
  local pv handle sum holders
  pv="$(pv_of rep1)"
  handle="$(k get pv "$pv" -o 'jsonpath={.spec.csi.volumeHandle}')"
  [[ $handle == replicated#* ]] || fail "PV $pv has handle '$handle', want replicated#..."
  [[ -z "$(pv_node "$pv")" ]] || fail "PV $pv is pinned to $(pv_node "$pv"): a replicated volume may be used on any node"
  holders="$(replica_nodes "$handle" | tr '\n' ' ')"
  (($(wc -w <<<"$holders") == 2)) || fail "replicas of $pv on '$holders', want 2 nodes"
  # dataLocality (best-effort, the default): one replica on the first pod's node.
  [[ " $holders " == *" $NODE1 "* ]] || fail "no replica of $pv on the writer's node $NODE1 (replicas on $holders)"
  sum="$(cat "$W/rep1.sum")"
  [[ ${#sum} == 64 ]] || fail "the writer printed '$sum', not a checksum"
  kn delete pod repw --wait=true >/dev/null
  # The same volume on a node without a replica when there is one (every byte over the
  # network, through that node's engine), else on the other replica node.
  local reader got
  reader="$(not_in "$NODE2" "$NODE1" $holders)"
  got="$(run_pod repr "$reader" rep1 "sha256sum /data/blob | cut -d' ' -f1; cat /data/blob.sum")"
  [[ "$(sed -n 1p <<<"$got")" == "$sum" && "$(sed -n 2p <<<"$got")" == "$sum" ]] ||
    fail "the pod on $reader read checksums '${got//$'\n'/ }', want $sum"
  kn delete pod repr --wait=true >/dev/null
  kn delete pvc rep1 --wait=true >/dev/null
  wait_until "PV $pv deleted" 90 gone pv "$pv"
  no_replicas() { [[ -z "$(replica_nodes "$handle")" ]]; }
  wait_until "the replicas of $pv removed from every node" 30 no_replicas
  echo "PV $pv ($handle): replicas on ${holders% }; 32 MiB written on $NODE1 read back on $reader ($sum); deleted everywhere"
}

s_replicated_grow() {
  [[ -z ${NO_RESIZER:-} ]] || skip "$NO_RESIZER"
  pvc repg 320Mi warren-replicated-xfs
  pod repg "$NODE2" repg "echo $TOKEN >/data/token; sync; sleep 3600"
  wait_until "pod repg running" 120 pod_running repg
  local before after
  before="$(fs_kib repg)"
  kn patch pvc repg --type merge -p '{"spec":{"resources":{"requests":{"storage":"640Mi"}}}}' >/dev/null
  # The file system grows by what the device gained, 320 MiB (a little less when its last
  # allocation group is short). df's size leaves out the xfs log, 64 MiB here (xfsprogs
  # 6), so 640 MiB shows as 576 MiB: compare growth, not the size.
  grown() { [[ "$(jp pvc repg '{.status.capacity.storage}')" == 640Mi ]] && (($(fs_kib repg) - before >= 300 * 1024)); }
  wait_until "the claim's capacity to reach 640Mi and the pod's file system to grow by 300 MiB or more" 120 grown
  after="$(fs_kib repg)"
  [[ "$(kn exec repg -- cat /data/token)" == "$TOKEN" ]] || fail "data lost during expansion"
  kn exec repg -- dd if=/dev/zero of=/data/big bs=1M count=400 conv=fsync 2>/dev/null || fail "cannot use the new space"
  local handle node size
  handle="$(k get pv "$(pv_of repg)" -o 'jsonpath={.spec.csi.volumeHandle}')"
  for node in $(replica_nodes "$handle"); do
    size="$(stat -c %s "$(replica_dir "$handle" "$node")/data")"
    ((size == 671088640)) || fail "the replica on $node has $size bytes, want 640 MiB"
  done
  echo "replicated file system inside the running pod: $before KiB -> $after KiB; 400 MiB written after growth; every replica 640 MiB"
  kn delete pod repg --wait=true >/dev/null
  kn delete pvc repg --wait=true >/dev/null
}

# handle_of CLAIM: the CSI volume handle of CLAIM's PV.
handle_of() { k get pv "$(pv_of "$1")" -o 'jsonpath={.spec.csi.volumeHandle}'; }

s_replicated_copies() {
  pvc repsrc 256Mi warren-replicated
  # A pod keeps the source in use on node 1 (its engine runs there) while it is
  # snapshotted and cloned.
  pod repsrc "$NODE1" repsrc \
    "head -c 16777216 /dev/urandom >/data/blob && sha256sum /data/blob | cut -d' ' -f1 >/data/blob.sum && sync && sleep 3600"
  wait_until "pod repsrc running" 120 pod_running repsrc
  has_sum() { [[ "$(kn exec repsrc -- cat /data/blob.sum 2>/dev/null | wc -c)" == 65 ]]; }
  wait_until "the source's checksum written" 60 has_sum
  local sum content handle
  sum="$(kn exec repsrc -- cat /data/blob.sum)"
  volume_snapshot repsnap repsrc
  wait_until "snapshot repsnap of a replicated volume in use ready" 90 snapshot_ready repsnap
  content="$(jp volumesnapshot repsnap '{.status.boundVolumeSnapshotContentName}')"
  handle="$(k get volumesnapshotcontent "$content" -o 'jsonpath={.status.snapshotHandle}')"
  [[ $handle == replsnap#* ]] || fail "content $content has handle '$handle', want replsnap#..."
  # Written after the snapshot: in the clone, not in the restore.
  kn exec repsrc -- sh -c 'echo after >/data/after && sync'

  pvc represt 256Mi warren-replicated "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: repsnap}"
  local got
  got="$(run_pod represt "$NODE2" represt "sha256sum /data/blob | cut -d' ' -f1; test ! -e /data/after && echo no-after")"
  [[ "$got" == "$sum"$'\n'no-after ]] || fail "the restore read '${got//$'\n'/ }', want $sum and no file written after the snapshot"
  [[ "$(handle_of represt)" == replicated#* ]] || fail "the restore is not a replicated volume"

  pvc repclone 256Mi warren-replicated "  dataSource: {kind: PersistentVolumeClaim, name: repsrc}"
  got="$(run_pod repclone "$NODE3" repclone "sha256sum /data/blob | cut -d' ' -f1; cat /data/after")"
  [[ "$got" == "$sum"$'\n'after ]] || fail "the clone read '${got//$'\n'/ }', want $sum and the file written before the clone"

  # Across kinds: the local claim data1 (ext4 image on node 1; 'changed' since s_clone)
  # and its snapshot snap1 (the token), into replicated volumes used on node 2.
  pvc loc2rep 1Gi warren-replicated "  dataSource: {kind: PersistentVolumeClaim, name: data1}"
  got="$(run_pod loc2rep "$NODE2" loc2rep "cat /data/token")"
  [[ $got == changed ]] || fail "the local volume copied into a replicated one reads '$got', want 'changed'"
  [[ "$(handle_of loc2rep)" == replicated#* ]] || fail "the copy of a local volume is not a replicated volume"
  pvc snap2rep 1Gi warren-replicated "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap1}"
  got="$(run_pod snap2rep "$NODE3" snap2rep "cat /data/token")"
  [[ $got == "$TOKEN" ]] || fail "the local snapshot restored into a replicated volume reads '$got', want '$TOKEN'"

  kn delete pod repsrc represt repclone loc2rep snap2rep --wait=true >/dev/null
  kn delete volumesnapshot repsnap --wait=true >/dev/null
  kn delete pvc repsrc represt repclone loc2rep snap2rep --wait=true >/dev/null
  no_copies() {
    local node
    for node in "${ALL_NODES[@]}"; do
      [[ -z "$(ls -A "$(warren_storage_root "$node")/replicas/.snapshots" 2>/dev/null)" ]] || return 1
    done
  }
  wait_until "every snapshot copy removed from every node" 60 no_copies
  echo "snapshot $handle of a volume in use; its restore holds the data as of the snapshot, the clone as of the clone;"
  echo "a local volume and a local snapshot copied into replicated volumes read back on other nodes; no copy left"
}

# plugin_pod NODE: Warren's node plugin pod on NODE (edge: component edge*, standard: node*).
plugin_pod() {
  k -n warren-system get pods -l app.kubernetes.io/name=warren --field-selector "spec.nodeName=$1" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.labels.app\.kubernetes\.io/component}{"\n"}{end}' |
    awk '$2 !~ /^controller/ {print $1; exit}'
}
plugin_restarts() { k -n warren-system get pod "$(plugin_pod "$1")" -o 'jsonpath={.status.containerStatuses[?(@.name=="warren")].restartCount}'; }
plugin_ready() { [[ "$(k -n warren-system get pod "$(plugin_pod "$1")" -o 'jsonpath={.status.containerStatuses[?(@.name=="warren")].ready}')" == true ]]; }

# warren_pid_of NODE: the Warren process of NODE (every node's processes are visible from
# this host; each node's has that node's kubelet dir on its command line).
warren_pid_of() {
  local pid root
  root="$(node_rootdir "${1##*node}")"
  for pid in $(pgrep -x warren); do
    if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -A1 -x -- --kubelet-dir | grep -qx "$root"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

s_replicated_replica_killed() {
  local class=warren-replicated replicas=2
  ((NODES < 3)) || class=warren-replicated-3 replicas=3
  pvc repk 256Mi "$class"
  # 40 files of 1 MiB, each fsync'ed, over ~15 s; then their checksums; then it stays up
  # so that the volume stays staged (its engine running) while the replica is rebuilt.
  pod repk "$NODE1" repk 'for i in $(seq 40); do
  dd if=/dev/urandom of=/data/f$i bs=1M count=1 conv=fsync 2>/dev/null || { echo "write $i failed"; exit 1; }
  sleep 0.3
done
sha256sum /data/f* >/data/sums && sync && echo written; sleep 3600'
  wait_until "pod repk running" 120 pod_running repk
  local pv handle victim pid restarts
  pv="$(pv_of repk)"
  handle="$(k get pv "$pv" -o 'jsonpath={.spec.csi.volumeHandle}')"
  (($(replica_nodes "$handle" | wc -l) == replicas)) || fail "replicas of $pv on $(replica_nodes "$handle" | tr '\n' ' '), want $replicas"
  victim="$(replica_nodes "$handle" | grep -vx "$NODE1" | head -1)"
  sleep 3
  pid="$(warren_pid_of "$victim")" || fail "no warren process for $victim"
  restarts="$(plugin_restarts "$victim")"
  kill -9 "$pid"
  written() { kn logs repk 2>/dev/null | grep -qx written; }
  wait_until "the writer to finish" 120 written ||
    fail "the pod's writes failed after Warren on $victim was killed: $(kn logs repk 2>&1 | tail -3)"
  [[ "$(pod_phase repk)" == Running ]] || fail "pod repk is $(pod_phase repk): $(kn logs repk 2>&1 | tail -3)"
  back() { (($(plugin_restarts "$victim") > restarts)) && plugin_ready "$victim"; }
  wait_until "Warren on $victim restarted and ready" 120 back
  # The engine (in node 1's Warren) rebuilds the returned replica from what it missed.
  local key="${handle#replicated#}" line
  rebuilt() { kn_logs_engine | grep -F "$key" | grep -F "replica=$victim" | grep -q "replica rebuilt"; }
  kn_logs_engine() { k -n warren-system logs "$(plugin_pod "$NODE1")" -c warren 2>/dev/null; }
  wait_until "the replica on $victim rebuilt" 120 rebuilt
  line="$(kn_logs_engine | grep -F "$key" | grep -F "replica=$victim" | grep "replica rebuilt" | tail -1)"
  [[ $line == *incremental=true* ]] || fail "the rebuild was not incremental: $line"
  kn delete pod repk --wait=true >/dev/null
  # Unstaged: the engine closed every replica clean; they must hold the same bytes.
  local first="" node sum
  for node in $(replica_nodes "$handle"); do
    sum="$(sha256sum "$(replica_dir "$handle" "$node")/data" | cut -d' ' -f1)"
    [[ -z $first || $sum == "$first" ]] || fail "replica on $node differs from the others ($sum vs $first)"
    first="$sum"
  done
  local checked
  checked="$(run_pod repc "$(replica_nodes "$handle" | tail -1)" repk 'sha256sum -c /data/sums | grep -c ": OK$"')"
  [[ $checked == 40 ]] || fail "$checked of 40 files read back intact"
  kn delete pod repc --wait=true >/dev/null
  kn delete pvc repk --wait=true >/dev/null
  wait_until "PV $pv deleted" 90 gone pv "$pv"
  echo "$replicas replicas; Warren on $victim killed (kill -9) mid-write: no I/O error in the pod;" \
    "rebuilt incrementally (regions=${line##*regions=}); replicas byte-identical ($first); 40 files read back"
}

s_reclaim_delete() {
  local pv
  pv="$(pv_of data2)"
  [[ -n "$(volume_dir "$pv" "$NODE2")" ]] || fail "no volume for $pv on $NODE2 before the test"
  kn delete pvc data2 --wait=true >/dev/null
  wait_until "PV $pv deleted" 60 gone pv "$pv"
  [[ -z "$(volume_dir "$pv" "$NODE2")" ]] || fail "volume of deleted PV $pv still on $NODE2"
  echo "claim deleted -> PV $pv and its storage on $NODE2 removed"
}

pv_phase() { k get pv "$1" -o 'jsonpath={.status.phase}'; }

s_reclaim_retain() {
  pvc keep 1Gi warren-retain
  run_pod keeper "$NODE1" keep "echo $TOKEN >/data/token && sync" >/dev/null
  local pv
  pv="$(pv_of keep)"
  kn delete pod keeper --wait=true >/dev/null
  kn delete pvc keep --wait=true >/dev/null
  released() { [[ "$(pv_phase "$pv")" == Released ]]; }
  wait_until "PV $pv Released" 60 released
  # A check that something does NOT happen (Warren must not delete a Retain volume): there
  # is no event to wait for, so give the reclaimer a few of its watch turns.
  sleep 3
  [[ "$(pv_phase "$pv")" == Released ]] || fail "PV $pv is $(pv_phase "$pv") after its claim went"
  local kept
  kept="$(volume_dir "$pv" "$NODE1")"
  [[ -n $kept ]] || fail "storage of retained PV $pv removed"
  # s_all_gone checks that exactly this volume is left (scenarios run in subshells).
  echo "$kept" >"$W/retained-volume"
  # An administrator binds the retained volume to a new claim: the data is there.
  k patch pv "$pv" --type json -p '[{"op": "remove", "path": "/spec/claimRef"}]' >/dev/null
  pvc keep-again 1Gi warren-retain "  volumeName: $pv"
  wait_until "claim keep-again bound to $pv" 60 pvc_bound keep-again
  local got
  got="$(run_pod keeper-again "" keep-again "cat /data/token")"
  [[ $got == "$TOKEN" ]] || fail "retained volume holds '$got', want '$TOKEN'"
  echo "PV $pv Released with its storage; bound again, the data reads back"
  kn delete pod keeper-again --wait=true >/dev/null
  kn delete pvc keep-again --wait=true >/dev/null
  k delete pv "$pv" --wait=false >/dev/null
}

s_node_restart() {
  pvc live 1Gi
  pod liver "$NODE1" live "echo $TOKEN >/data/token; sync; sleep 3600"
  wait_until "pod liver running" 120 pod_running liver
  local pid restarts
  pid="$(warren_pid_of "$NODE1")" || fail "no warren process for $NODE1"
  restarts="$(plugin_restarts "$NODE1")"
  kill -9 "$pid"
  restarted() { (($(plugin_restarts "$NODE1") > restarts)) && plugin_ready "$NODE1" && csinode_has_warren "$NODE1"; }
  wait_until "Warren on $NODE1 restarted and ready" 120 restarted
  [[ "$(kn exec liver -- cat /data/token)" == "$TOKEN" ]] || fail "the running pod lost its data"
  kn exec liver -- sh -c 'echo after-restart >/data/after && sync' || fail "the running pod cannot write after the restart"
  # Publishing after the restart: a second pod on the same staged volume, and a new claim.
  [[ "$(run_pod liver2 "$NODE1" live "cat /data/after")" == after-restart ]] || fail "a new pod on the staged volume did not see the data"
  pvc fresh 1Gi
  run_pod fresher "$NODE1" fresh "echo ok >/data/ok && cat /data/ok" | grep -qx ok || fail "a new claim did not provision and publish"
  echo "warren (pid $pid) killed; restarted; the running pod kept reading and writing; new publishes work"
  kn delete pod liver liver2 fresher --wait=true >/dev/null
}

s_all_gone() {
  kn delete pod --all --wait=true >/dev/null
  kn delete volumesnapshot --all --wait=true >/dev/null
  kn delete pvc --all --wait=true >/dev/null
  no_warren_pvs() { [[ -z "$(k get pv -o name)" ]]; }
  wait_until "every PV deleted" 90 no_warren_pvs
  no_snapshot_contents() { [[ -z "$(k get volumesnapshotcontent -o name)" ]]; }
  wait_until "every VolumeSnapshotContent deleted" 60 no_snapshot_contents
  # The retained volume of s_reclaim_retain: its PV is gone, its storage stays by design.
  # Exactly that one is left on node 1 (when that scenario ran), nothing on node 2.
  local node root left want=""
  [[ -f "$W/retained-volume" ]] && want="$(cat "$W/retained-volume")"
  for node in "${ALL_NODES[@]}"; do
    root="$(warren_storage_root "$node")"
    # (A directory that was never made is not an error: pipefail is on.)
    left="$( (find "$root/volumes" "$root/snapshots" -mindepth 1 -maxdepth 1 || true
      find "$root/replicas" -mindepth 1 -maxdepth 1 ! -name .lock ! -name .fuse ! -name .snapshots || true
      # The directories of FUSE mounts and of snapshot copies stay; they must be empty.
      find "$root/replicas/.fuse" "$root/replicas/.snapshots" -mindepth 1 -maxdepth 1 || true) 2>/dev/null | sort)"
    if [[ $node == "$NODE1" && -n $want ]]; then
      [[ $left == "$want" ]] || fail "left in $root: '${left//$'\n'/ }', want only the retained volume $want"
    else
      [[ -z $left ]] || fail "left in $root: ${left//$'\n'/ }"
    fi
  done
  rm -f "$W/retained-volume"
  local loops
  loops="$(losetup -nO BACK-FILE | grep -c -e "$(warren_state_dir "$NODE1")/" -e "/var/lib/warren-warren-node" || true)"
  ((loops == 0)) || fail "$loops loop devices still attached to Warren volumes"
  local mounts
  mounts="$(grep -c 'kubernetes.io/csi' /proc/self/mountinfo || true)"
  ((mounts == 0)) || fail "$mounts CSI mounts left: $(grep 'kubernetes.io/csi' /proc/self/mountinfo)"
  echo "no PV, snapshot content, loop device, CSI mount, replica, snapshot copy or unretained volume left"
}

# Run once after both modes are torn down (not in SCENARIOS): nothing Warren attached during
# the run may be left (LOOPS_BEFORE: what was attached before it, left alone). Matched by
# file name, not by directory: a device attached from a container's mount namespace shows
# its path relative to that container's mount once the container has exited.
s_no_loops_left() {
  local left
  left="$(comm -13 <(sort <<<"${LOOPS_BEFORE:-}") <(losetup -nO NAME,BACK-FILE | sort) |
    awk '$2 ~ /\/disk\.img$/ || $0 ~ /\/disk\.img \(deleted\)$/' || true)"
  if [[ -n $left ]]; then
    # Leave the machine as it was found, then say what was left.
    awk '{print $1}' <<<"$left" | xargs -r -n1 losetup -d 2>/dev/null || true
    fail "loop devices left on Warren images: ${left//$'\n'/; }"
  fi
  echo "no loop device left on a Warren image"
}

# wrv PV JSONPATH: a field of the ReplicatedVolume object of PV (empty when there is none).
wrv() { k get replicatedvolumes "$1" -o "jsonpath=$2" 2>/dev/null; }

s_replicated_view() {
  pvc repv 64Mi warren-replicated
  pod repv "$NODE1" repv 'echo up; sleep 3600'
  wait_until "pod repv running" 120 pod_running repv
  local pv handle holders listed
  pv="$(pv_of repv)"
  handle="$(k get pv "$pv" -o 'jsonpath={.spec.csi.volumeHandle}')"
  holders="$(replica_nodes "$handle" | sort | tr '\n' ' ')"
  # Staged on node 1: its engine's node writes the status.
  healthy() {
    [[ "$(wrv "$pv" '{.status.state}')" == Healthy && "$(wrv "$pv" '{.status.engineNode}')" == "$NODE1" &&
      "$(wrv "$pv" '{.status.inSync}')" == 2 ]]
  }
  wait_until "ReplicatedVolume $pv Healthy, engine on $NODE1, 2 in sync" 60 healthy ||
    fail "ReplicatedVolume $pv: $(k get replicatedvolumes "$pv" -o yaml 2>&1 | tail -40)"
  listed="$(wrv "$pv" '{range .spec.replicas[*]}{.node}{"\n"}{end}' | sort | tr '\n' ' ')"
  [[ $listed == "$holders" ]] || fail "ReplicatedVolume $pv lists replicas on '$listed', they are on '$holders'"
  local states
  states="$(wrv "$pv" '{range .status.replicas[*]}{.state}{" "}{end}')"
  [[ $states == "InSync InSync " ]] || fail "replica states '$states', want both InSync"
  [[ "$(wrv "$pv" '{.metadata.ownerReferences[0].uid}')" == "$(k get pv "$pv" -o 'jsonpath={.metadata.uid}')" ]] ||
    fail "ReplicatedVolume $pv is not owned by its PV"
  k get replicatedvolumes "$pv" >&2
  # Unstaged: no engine runs, the replicas are still listed.
  kn delete pod repv --wait=true >/dev/null
  detached() { [[ "$(wrv "$pv" '{.status.state}')" == Detached && -z "$(wrv "$pv" '{.status.engineNode}')" ]]; }
  wait_until "ReplicatedVolume $pv Detached" 60 detached || fail "ReplicatedVolume $pv: $(wrv "$pv" '{.status}')"
  (($(wrv "$pv" '{range .status.replicas[*]}{.node}{"\n"}{end}' | grep -c .) == 2)) ||
    fail "a Detached volume no longer shows its replicas: $(wrv "$pv" '{.status}')"
  # The PV deleted: the garbage collector takes the object with it.
  kn delete pvc repv --wait=true >/dev/null
  wait_until "PV $pv deleted" 90 gone pv "$pv"
  wait_until "ReplicatedVolume $pv deleted with its PV" 60 gone replicatedvolumes "$pv"
  echo "ReplicatedVolume $pv: replicas on ${holders% }, Healthy with its engine on $NODE1, Detached when unstaged, deleted with its PV"
}
