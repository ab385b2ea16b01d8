#!/usr/bin/env bash
# Replicated volumes through CSI, next to a local image volume: provisioning latency,
# direct I/O inside the mounted volume, node memory with volumes staged. A benchmark, not a
# test: run it by hand on an idle machine and copy the tables into docs/benchmarks.md
# ("Replicated volumes through CSI"). Needs root, e2fsprogs, /dev/fuse (or ublk/nbd).
#   bash bench/replicated.sh [COUNT] [IO_SECONDS] [REPS]     (default 30 5 3)
# Starts `warren controller` and three `warren node` processes on 127.0.0.1 (as
# sanity-tests' split() does), each with its own storage root, agent and replica service;
# n1 is the pod's node. BENCH_PHASES=latency,rss,io picks parts; BENCH_NO_BUILD=1 skips
# the build; BENCH_WAIT_STEPS=0 skips the wait for a quiet machine (smoke runs).
# BENCH_IO_VOLUME_MIB (I/O volume size) and BENCH_SMAPS=1 (largest mappings by RSS) reach
# the binary (see its header). The same benchmark through ublk and NBD, in kernel-lab
# guests: lab/bench-replicated.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-30}
io_seconds=${2:-5}
reps=${3:-3}
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release -q -p warren -p warren-bench
bin=$PWD/target/release

# Other agents build Rust on this machine: wait (up to 10 min) for the 1-minute load to
# drop under 1.5, and say what it was.
for _ in $(seq "${BENCH_WAIT_STEPS:-60}"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  awk -v l="$load" 'BEGIN { exit !(l <= 1.5) }' && break
  echo "load $load > 1.5, waiting" >&2
  sleep 10
done
echo "load at start: $(cat /proc/loadavg)"
echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
if command -v fio >/dev/null; then
  echo "fio: $(fio --version) is installed, but the I/O runs use the bench's own direct-I/O threads (the same runs on every host)"
else
  echo "fio: not installed; the I/O runs use the bench's own direct-I/O threads (psync-like, one thread per queue slot)"
fi

work=$(mktemp -d /var/tmp/warren-replicated-bench.XXXXXX)
echo "work dir: $work on $(stat -f -c %T "$work") ($(df --output=source "$work" | tail -1))"
pids=()
cleanup() {
  set +e
  # File systems on the volumes first (ext4 on loop devices), then the loop devices, while
  # the node processes still serve the FUSE files under them; then the processes, then
  # whatever FUSE mounts are left.
  grep " $work" /proc/self/mounts | grep -v " fuse" | awk '{print $2}' | sort -r |
    xargs -r -n1 umount -l 2>/dev/null
  losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work" 'index($2, w) == 1 {print $1}' |
    xargs -r -n1 losetup -d 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  grep " $work" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  left=$(losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work" 'index($2, w) == 1' | wc -l)
  [ "$left" = 0 ] || echo "WARNING: $left loop devices still attached to files under $work" >&2
  rm -rf "$work"
}
trap cleanup EXIT

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/token"
chmod 600 "$work/token"
agents=()
node_pids=()
for n in 1 2 3; do
  agent=$(free_port)
  replica=$(free_port)
  mkdir -p "$work/n$n/kubelet"
  WARREN_LOG=${WARREN_LOG:-info} "$bin/warren" node --node-id "n$n" --endpoint "unix://$work/n$n.sock" \
    --storage-root "$work/n$n/storage" --state-dir "$work/n$n/state" --kubelet-dir "$work/n$n/kubelet" \
    --agent-listen "127.0.0.1:$agent" --agent-token-file "$work/token" \
    --replica-listen "127.0.0.1:$replica" --replica-token-file "$work/token" \
    2>"$work/n$n.log" &
  pids+=($!)
  node_pids+=("n$n=$!")
  agents+=(--node-agent "n$n=http://127.0.0.1:$agent")
  wait_sock "$work/n$n.sock"
done
"$bin/warren" controller --endpoint "unix://$work/controller.sock" --state-dir "$work/controller-state" \
  --agent-token-file "$work/token" "${agents[@]}" 2>"$work/controller.log" &
pids+=($!)
wait_sock "$work/controller.sock"

status=0
"$bin/replicated-csi-bench" "$work/controller.sock" "$work/n1.sock" "$work/n1/kubelet" \
  "$(IFS=,; echo "${node_pids[*]}")" "$count" "$io_seconds" "$reps" || status=$?
echo
echo "frontends the pod's node used: $(sed "s/\x1b\[[0-9;]*m//g" "$work/n1.log" | grep -o "frontend=[a-z]*" | sort | uniq -c | tr '\n' ' ')"
echo "load at end: $(cat /proc/loadavg)"
if [ $status != 0 ]; then
  echo "benchmark failed ($status); last lines of the logs:" >&2
  tail -n 20 "$work"/*.log >&2
fi
exit $status
