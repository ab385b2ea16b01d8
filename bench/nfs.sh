#!/usr/bin/env bash
# Provisioning latency of `backend: nfs` volumes and the snapshot copy rate, against
# NFS-Ganesha (Debian's nfs-ganesha + nfs-ganesha-vfs, and rpcbind) in a network
# namespace of its own, with a release `warren all` inside it.
# A benchmark, not a test: run it by hand on an idle machine, as root, and copy the lines
# into docs/benchmarks.md ("NFS volumes").
#   bash bench/nfs.sh [COUNT] [DATA_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200}
data_mib=${2:-256}
cargo build --release -q -p warren -p warren-bench
bin=$PWD/target/release
ns=warren-nfs-bench
work=$(mktemp -d /var/tmp/warren-nfs-bench.XXXXXX)
export_dir=$work/export
mkdir -p "$export_dir" "$work/recovery"
cleanup() {
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true   # Ganesha logs until it has exited: keep its directory till then
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
# Ganesha finds no address for 127.0.0.1 when loopback's is the only one.
ip -n "$ns" addr add 127.0.0.2/8 dev lo
cat >"$work/ganesha.conf" <<CONF
NFS_CORE_PARAM { Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; }
NFSv4 { Graceless = true; RecoveryRoot = $work/recovery; Only_Numeric_Owners = true; }
EXPORT_DEFAULTS { Access_Type = RW; Squash = No_Root_Squash; SecType = sys; }
EXPORT { Export_Id = 1; Path = $export_dir; Pseudo = $export_dir; Protocols = 3, 4; Transports = TCP; FSAL { Name = VFS; } }
CONF
ip netns exec "$ns" rpcbind -f -w &
for _ in $(seq 100); do ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/111' 2>/dev/null && break; sleep 0.1; done
ip netns exec "$ns" ganesha.nfsd -F -f "$work/ganesha.conf" -L "$work/ganesha.log" -p "$work/ganesha.pid" -N NIV_EVENT &
ip netns exec "$ns" "$bin/warren" all --node-id bench --endpoint "unix://$work/csi.sock" \
  --state-dir "$work/state" --storage-root "$work/storage" --kubelet-dir "$work/kubelet" 2>"$work/warren.log" &
for _ in $(seq 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done
# Ganesha serves a moment after it starts: wait until a volume can be made.
mkdir -p "$export_dir/bench-data"
head -c $((data_mib << 20)) /dev/urandom >"$export_dir/bench-data/data.bin"
for _ in $(seq 100); do
  "$bin/nfs-bench" "$work/csi.sock" 127.0.0.1 "$export_dir" 1 0 >/dev/null 2>&1 && break
  sleep 0.3
done
echo "export on $(stat -f -c %T "$export_dir"); server NFS-Ganesha $(dpkg-query -W -f '${Version}' nfs-ganesha) on loopback"
"$bin/nfs-bench" "$work/csi.sock" 127.0.0.1 "$export_dir" "$count" "$data_mib"
