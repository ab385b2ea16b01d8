#!/usr/bin/env bash
# Throughput of the built-in share against the same file read and written locally (see
# bench/src/share.rs). A benchmark, not a test: run it by hand on an idle machine, as
# root, and copy the line into docs/benchmarks.md ("NFS volumes").
#   bash bench/share.sh [MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p warren-bench
dir=$(mktemp -d /var/tmp/warren-share-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo "volume directory on $(stat -f -c %T "$dir")"
target/release/share-bench "$dir" "${1:-256}" "${2:-3}"
