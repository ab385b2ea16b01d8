#!/usr/bin/env bash
# Replicated volumes through CSI inside kernel-lab guests, once per block-device
# frontend: the same `replicated-csi-bench` as bench/replicated.sh (controller + three
# node processes on 127.0.0.1, a local `layout: image` volume as the anchor), but in a
# QEMU/TCG guest whose kernel offers ublk or NBD. A benchmark, not a test. Under TCG the
# absolute numbers mean nothing: report only ratios (replicated / local, same guest).
#
#   lab/bench-replicated.sh [COUNT] [IO_SECONDS] [REPS]        (default 10 5 3)
#
# Per frontend, one 6.12 guest (--mem 2048 --smp 2) whose module set decides what the
# node's `auto` frontend picks (ublk, then NBD, then FUSE + loop):
#   ublk: ublk_drv + loop    nbd: nbd + loop    fuse: loop only (fuse is built in)
# `loop` is for the local image volume. The node's log line "volume attached as a block
# device frontend=..." is counted in every guest and the run fails if any attach used
# another frontend than the one asked for.
#
# Storage: a sparse raw image (LAB_BENCH_DISK_GIB, default 4) on the host's /var/tmp, given
# to the guest as a virtio disk (run-guest.sh --disk, qemu's writeback cache), made ext4
# in the guest; all storage roots and the kubelet directory live on it, so the local and
# the replicated volumes share one disk. LAB_BENCH_STORAGE=tmpfs puts them on a tmpfs in
# guest RAM instead (both alike).
#
# Environment: LAB_BENCH_FRONTENDS (default "ublk nbd"; add fuse for the guest's FUSE
# path), BENCH_PHASES (latency,rss,io), BENCH_IO_VOLUME_MIB (default 256 here: the I/O
# file is half of it), LAB_BENCH_KERNEL (6.12), LAB_BENCH_MEM (2048), LAB_BENCH_SMP (2),
# BENCH_SMAPS=1 (each node's largest mappings by RSS with the 10 volumes staged),
# LAB_BENCH_TIMEOUT (seconds per guest, 3600), BENCH_NO_BUILD=1 skips the release build,
# LAB_BENCH_BIN takes `warren` and `replicated-csi-bench` from another directory (with
# BENCH_NO_BUILD=1: a build of another tree).
# Console logs go to LAB_BENCH_OUT (default /var/tmp/warren-lab/bench-replicated/DATE/).
# Needs lab/install.sh done and e2fsprogs on the host (copied into the guest).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10}
io_seconds=${2:-5}
reps=${3:-3}
frontends=${LAB_BENCH_FRONTENDS:-ublk nbd}
kernel=${LAB_BENCH_KERNEL:-6.12}
storage=${LAB_BENCH_STORAGE:-disk}
out=${LAB_BENCH_OUT:-/var/tmp/warren-lab/bench-replicated/$(date +%Y%m%d-%H%M%S)}
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release -q -p warren -p warren-bench
bin=${LAB_BENCH_BIN:-$PWD/target/release}
for b in warren replicated-csi-bench; do [ -x "$bin/$b" ] || { echo "no $bin/$b" >&2; exit 2; }; done
for t in mke2fs e2fsck resize2fs; do command -v "$t" >/dev/null || { echo "$t missing (e2fsprogs)" >&2; exit 2; }; done
mkdir -p "$out"
work=$(mktemp -d /var/tmp/warren-lab-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The guest's script: busybox sh. Parameters are substituted here, on the host.
cat >"$work/guest.sh" <<EOF
want=\$(cat /lab/frontend)
storage=$storage
count=$count io_seconds=$io_seconds reps=$reps
export BENCH_PHASES=${BENCH_PHASES:-latency,rss,io}
export BENCH_IO_VOLUME_MIB=${BENCH_IO_VOLUME_MIB:-256}
export BENCH_WAIT_STEPS=0 BENCH_SMAPS=${BENCH_SMAPS:-}
EOF
cat >>"$work/guest.sh" <<'EOF'
set -u
export PATH=/opt/warren:$PATH WARREN_LOG=info
echo "guest: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
echo "guest: ublk-control $([ -e /dev/ublk-control ] && echo yes || echo no), nbd0 $([ -e /dev/nbd0 ] && echo yes || echo no), fuse $([ -e /dev/fuse ] && echo yes || echo no); expecting frontend=$want"
mkdir -p /data
if [ "$storage" = disk ]; then
  [ -b /dev/vda ] || { echo "guest: no /dev/vda"; exit 3; }
  # Inode tables and journal written now, not by ext4lazyinit during the runs.
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || exit 3
  mount -t ext4 /dev/vda /data || exit 3
  echo "guest: storage roots on ext4 on /dev/vda ($(df -m /data | awk 'NR==2 {print $2}') MiB)"
else
  mount -t tmpfs tmpfs /data || exit 3
  echo "guest: storage roots on tmpfs (guest RAM)"
fi
w=/data/bench
mkdir -p $w
echo 5f0c2d8e9a7b4c1d3e6f8091a2b3c4d5 >$w/token
chmod 600 $w/token
wait_sock() {
  i=0
  while [ ! -S "$1" ]; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "guest: no socket $1"; return 1; }
    sleep 0.1
  done
}
node_pids=''
agents=''
for n in 1 2 3; do
  mkdir -p $w/n$n/kubelet
  warren node --node-id n$n --endpoint unix://$w/n$n.sock \
    --storage-root $w/n$n/storage --state-dir $w/n$n/state --kubelet-dir $w/n$n/kubelet \
    --agent-listen 127.0.0.1:$((7000 + n)) --agent-token-file $w/token \
    --replica-listen 127.0.0.1:$((7100 + n)) --replica-token-file $w/token \
    2>$w/n$n.log &
  node_pids="$node_pids${node_pids:+,}n$n=$!"
  agents="$agents --node-agent n$n=http://127.0.0.1:$((7000 + n))"
  wait_sock $w/n$n.sock || exit 4
done
# shellcheck disable=SC2086 # $agents is a list of arguments
warren controller --endpoint unix://$w/controller.sock --state-dir $w/controller-state \
  --agent-token-file $w/token $agents 2>$w/controller.log &
wait_sock $w/controller.sock || exit 4
echo "guest: load before $(cat /proc/loadavg)"
status=0
replicated-csi-bench $w/controller.sock $w/n1.sock $w/n1/kubelet "$node_pids" \
  $count $io_seconds $reps || status=$?
echo "guest: load after $(cat /proc/loadavg)"
# Without the log's colours (busybox sed knows no \x1b).
plain() { sed "s/$(printf '\033')\[[0-9;]*m//g" "$1"; }
frontends=$(plain $w/n1.log | grep -o 'frontend=[a-z]*' | sort | uniq -c | tr '\n' ' ')
echo "frontends the pod's node used: $frontends"
others=$(plain $w/n1.log | grep -o 'frontend=[a-z]*' | grep -vc "frontend=$want$")
if [ -z "$frontends" ] || [ "$others" != 0 ]; then
  echo "guest: expected every attach with frontend=$want"
  [ $status = 0 ] && status=5
fi
if [ $status != 0 ]; then
  for f in $w/n1.log $w/n2.log $w/n3.log $w/controller.log; do
    echo "---- last lines of $f"
    plain $f | tail -n 30
  done
  dmesg | tail -n 30
fi
exit $status
EOF

copies=(--copy "$bin/warren:/opt/warren/warren"
  --copy "$bin/replicated-csi-bench:/opt/warren/replicated-csi-bench"
  --copy "$(command -v mke2fs):/sbin/mkfs.ext4"
  --copy "$(command -v e2fsck):/sbin/e2fsck"
  --copy "$(command -v resize2fs):/sbin/resize2fs")
echo "results: $out; host load $(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD)"
failed=0
for f in $frontends; do
  case $f in
    ublk) modules="ublk_drv loop" ;;
    nbd) modules="nbd loop" ;;
    fuse) modules="loop" ;;
    *) echo "unknown frontend $f (ublk, nbd, fuse)" >&2; exit 2 ;;
  esac
  echo "$f" >"$work/frontend"
  disk=()
  if [ "$storage" = disk ]; then
    rm -f "$work/disk.img"
    truncate -s "${LAB_BENCH_DISK_GIB:-4}G" "$work/disk.img"
    disk=(--disk "$work/disk.img")
  fi
  echo "=== frontend $f: kernel $kernel, modules '$modules', storage $storage"
  rc=0
  lab/run-guest.sh --kernel "$kernel" --modules "$modules" --mem "${LAB_BENCH_MEM:-2048}" \
    --smp "${LAB_BENCH_SMP:-2}" --timeout "${LAB_BENCH_TIMEOUT:-3600}" "${disk[@]}" \
    --copy "$work/frontend:/lab/frontend" "${copies[@]}" \
    --script "$work/guest.sh" --log "$out/$f.log" >/dev/null || rc=$?
  # The bench's tables and the guest's own lines, without the kernel's.
  tr -d '\r' <"$out/$f.log" | grep -E '^(\||#|- |guest:|frontends|pod|run-guest|benchmark|n[123].s largest)' || true
  if [ $rc != 0 ]; then
    echo "frontend $f FAILED (exit $rc), console log $out/$f.log" >&2
    failed=$((failed + 1))
  fi
done
echo "console logs: $out"
[ $failed = 0 ]
