#!/usr/bin/env bash
# Provisioning latency per layout and idle memory of `warren all` / `warren node`.
# A benchmark, not a test: run it by hand on an idle machine and copy the lines into
# docs/benchmarks.md ("Local volumes"). Needs root, e2fsprogs and xfsprogs.
#   bash bench/run.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-100}
cargo build --release -q -p warren -p warren-bench
bin=target/release
work=$(mktemp -d /var/tmp/warren-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  grep " $work" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  for img in "$work"/storage*/volumes/*/disk.img; do
    [ -e "$img" ] && losetup -j "$img" | cut -d: -f1 | xargs -r -n1 losetup -d 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# With the built-in share's listener on, as the chart's share.enabled runs it.
"$bin/warren" all --node-id bench --endpoint "unix://$work/all.sock" --state-dir "$work/state" \
  --storage-root "$work/storage" --kubelet-dir "$work/kubelet" \
  --share-listen 127.0.0.1:0 --share-address 127.0.0.1 2>"$work/all.log" &
pids+=($!); all_pid=$!
wait_sock "$work/all.sock"
sleep 2
echo "idle RSS warren all (share listening):  $(( $(rss_kib "$all_pid") / 1024 )) MiB ($(rss_kib "$all_pid") KiB)"

echo "token-for-the-benchmark-0123456789" > "$work/token"
"$bin/warren" node --node-id bench2 --endpoint "unix://$work/node.sock" --state-dir "$work/nstate" \
  --storage-root "$work/storage2" --kubelet-dir "$work/kubelet2" --agent-listen 127.0.0.1:0 \
  --agent-token-file "$work/token" 2>"$work/node.log" &
pids+=($!); node_pid=$!
wait_sock "$work/node.sock"
sleep 2
echo "idle RSS warren node: $(( $(rss_kib "$node_pid") / 1024 )) MiB ($(rss_kib "$node_pid") KiB)"

echo "backing file system: $(stat -f -c %T "$work") on $(df --output=source "$work" | tail -1)"
"$bin/provision-bench" "$work/all.sock" "$work/kubelet" image "$count" 64 ext4
"$bin/provision-bench" "$work/all.sock" "$work/kubelet" image "$count" 320 xfs
"$bin/provision-bench" "$work/all.sock" "$work/kubelet" dir "$count" 64
sleep 1
echo "RSS warren all after the runs: $(( $(rss_kib "$all_pid") / 1024 )) MiB"
