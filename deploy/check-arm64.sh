#!/usr/bin/env bash
# Checks that Warren builds for 64-bit ARM (Raspberry Pi 4/5, Graviton, Ampere: the edge
# hardware K3s often runs on): a release build of the `warren` binary for
# aarch64-unknown-linux-gnu, linked with Debian's cross gcc.
#
#   deploy/check-arm64.sh           # cargo build --release (compiles and links)
#   deploy/check-arm64.sh --check   # cargo check only: no cross linker needed, faster
#
# Installs what is missing (as root): the rustup target, and for a build the Debian
# package gcc-aarch64-linux-gnu (the linker, and glibc for arm64 to link against; also the
# C compiler for any dependency that compiles C for the target).
# Environment: CARGO_TARGET_DIR (default /var/tmp/warren-deploy-target).
# The arm64 container image is made by deploy/image/build.sh --arch arm64 (musl, static).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
triple=aarch64-unknown-linux-gnu
mode=build
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/warren-deploy-target}"
start=$(date +%s)

rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"

# A build links (cross gcc as the linker, arm64 glibc); a check needs a C cross compiler
# only if a dependency compiles C for the target (ring, through kube's rustls, does; build
# scripts run under `cargo check` too).
needs_gcc=0
if [ "$mode" = build ] ||
    cargo tree --locked --manifest-path "$repo/Cargo.toml" -p warren --target "$triple" \
        -e normal,build --prefix none 2>/dev/null | grep -q '^cc v'; then
    needs_gcc=1
fi
if [ "$needs_gcc" = 1 ]; then
    if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
        echo "==> installing gcc-aarch64-linux-gnu (Debian cross toolchain)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross >&2 || {
            apt-get update >&2
            apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross >&2
        }
    fi
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
fi

echo "==> cargo $mode --release --target $triple -p warren (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
cargo "$mode" --manifest-path "$repo/Cargo.toml" --release --locked --target "$triple" -p warren

if [ "$mode" = build ]; then
    bin="$CARGO_TARGET_DIR/$triple/release/warren"
    machine="$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')"
    case "$machine" in
        *AArch64*) ;;
        *) echo "check-arm64: $bin is for '$machine', not AArch64" >&2; exit 1 ;;
    esac
    echo "==> $bin: AArch64 ELF, $(stat -c %s "$bin") bytes" >&2
    # If qemu-user is around, run it too.
    if command -v qemu-aarch64 >/dev/null; then
        qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" --version
    fi
fi
echo "==> arm64 $mode OK in $(( $(date +%s) - start )) s" >&2
