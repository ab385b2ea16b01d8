#!/usr/bin/env bash
# Replication throughput/latency (1-3 replicas vs the raw file), rebuild speed, and the
# replica service's idle cost. A benchmark, not a test: run on an idle machine and copy the
# lines into docs/benchmarks.md ("Replicated block volumes").
#   bash bench/replication.sh [SCALE_MIB]     (default 512: volume 1 GiB, 512 MiB sequential)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-512}
cargo build --release -q -p warren -p warren-bench
work=$(mktemp -d /var/tmp/warren-repl-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) CPUs, $(uname -r), work dir on $(stat -f -c %T "$work") ($(df --output=source "$work" | tail -1))"
target/release/replication-bench target/release/warren "$work" "$scale"
