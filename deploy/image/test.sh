#!/usr/bin/env bash
# Tests an image tarball made by deploy/image/build.sh, with containerd's own client:
#   1. `ctr -n k8s.io images import` accepts it (what K3s and kubelet+containerd use);
#   2. every program the node plugin runs works inside it (mkfs.ext4, mkfs.xfs, e2fsck,
#      resize2fs, xfs_growfs, GNU cp with --reflink);
#   3. `warren all` runs from it as a privileged container (as the node plugin does in a
#      cluster) and passes the official csi-sanity in the image (xfs, ext4, raw block) and
#      dir layouts: mkfs, loop devices, mounts, expansion and snapshots, all from the image;
#   4. it stops on SIGTERM within the grace period.
#
#   deploy/image/test.sh [IMAGE_TARBALL]     (default: the amd64 tarball build.sh writes)
#
# Needs root, containerd + runc (Debian: apt-get install containerd), csi-sanity (installed
# from the Go module proxy when missing). Starts a private containerd on a temporary root
# unless CONTAINERD_ADDRESS names a running one; removes everything it made.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")"
tarball="${1:-$here/out/warren-$version-amd64.oci.tar}"
[ -f "$tarball" ] || { echo "no image tarball at $tarball (run deploy/image/build.sh)" >&2; exit 1; }
for tool in ctr containerd runc; do
    command -v "$tool" >/dev/null || { echo "test.sh needs $tool (apt-get install containerd)" >&2; exit 1; }
done
sanity="$(command -v csi-sanity || true)"
if [ -z "$sanity" ]; then
    sanity="$(go env GOPATH)/bin/csi-sanity"
    [ -x "$sanity" ] || go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.5.0
fi

work="$(mktemp -d /var/tmp/warren-image-test.XXXXXX)"
containerd_pid=""
container=""
cleanup() {
    set +e
    if [ -n "$container" ]; then
        $ctr task kill -s SIGKILL "$container" >/dev/null 2>&1
        sleep 1
        $ctr task rm "$container" >/dev/null 2>&1
        $ctr container rm "$container" >/dev/null 2>&1
    fi
    if [ -n "$containerd_pid" ]; then
        kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
        # Shims of our private containerd outlive it: end exactly those (their command
        # line names our socket).
        for cmdline in /proc/[0-9]*/cmdline; do
            if { tr '\0' ' ' < "$cmdline"; } 2>/dev/null | grep -q -- "-address $address "; then
                pid="${cmdline#/proc/}"; kill "${pid%/cmdline}" 2>/dev/null
            fi
        done
    fi
    # Anything csi-sanity left mounted below the work dir (nothing, when all went well).
    grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

address="${CONTAINERD_ADDRESS:-}"
if [ -z "$address" ]; then
    address="$work/containerd.sock"
    cat > "$work/containerd.toml" <<EOF
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$address"
[ttrpc]
  address = "$address.ttrpc"
[debug]
  address = "$work/containerd-debug.sock"
EOF
    containerd -c "$work/containerd.toml" > "$work/containerd.log" 2>&1 &
    containerd_pid=$!
    for _ in $(seq 50); do [ -S "$address" ] && break; sleep 0.1; done
fi
ctr="ctr --address $address -n k8s.io"

echo "== import" >&2
out="$($ctr images import "$tarball")"
echo "$out" >&2
image="$(echo "$out" | sed -n 's/^unpacking \([^ ]*\) .*/\1/p' | head -n1)"
[ -n "$image" ] || { echo "could not tell the imported image's name" >&2; exit 1; }
$ctr images check | grep -F "$image" | grep -q complete

echo "== tools in the image" >&2
in_image() { # ARGS... : runs one command in a fresh container of the image
    $ctr run --rm "$image" "warren-tool-$$-$RANDOM$RANDOM" "$@"
}
in_image /warren --version
in_image /usr/sbin/mkfs.ext4 -q -F -m 0 -E lazy_itable_init=1,lazy_journal_init=1,nodiscard /tmp/e.img 16M
in_image /usr/sbin/mkfs.xfs -q -f -K -d file,name=/tmp/x.img,size=320m
in_image /usr/sbin/e2fsck -V
in_image /usr/sbin/xfs_growfs -V
{ in_image /usr/sbin/resize2fs -P /dev/null 2>&1 || true; } | grep -q '^resize2fs 1\.' 
in_image /usr/bin/cp --reflink=auto --sparse=always -- /etc/mke2fs.conf /tmp/copy

echo "== csi-sanity against warren all in a privileged container" >&2
mkdir -p "$work/csi/kubelet/pods" "$work/csi/kubelet/plugins" "$work/csi/state" "$work/csi/sock"
container="warren-test-$$"
sock="$work/csi/sock/csi.sock"
# Host /dev (loop devices appear there on demand), and the work dir at the same path (the
# kubelet paths csi-sanity hands over must mean the same inside and out). The log goes to
# a file: a container whose stdout nobody reads blocks once the pipe is full.
$ctr run -d --privileged --net-host \
    --log-uri "file://$work/warren.log" \
    --mount "type=bind,src=/dev,dst=/dev,options=rbind:rw" \
    --mount "type=bind,src=$work/csi,dst=$work/csi,options=rbind:rw" \
    "$image" "$container" /warren all --node-id image-test \
    --endpoint "unix://$sock" --state-dir "$work/csi/state" \
    --storage-root "$work/csi/state/storage" --kubelet-dir "$work/csi/kubelet"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/warren.log" >&2; echo "warren did not start" >&2; exit 1; }

run_sanity() { # NAME ACCESS SIZE PARAMS...
    local name="$1" access="$2" size="$3"; shift 3
    printf '%s\n' "$@" > "$work/params-$name.yaml"
    if ! timeout 600 "$sanity" --csi.endpoint="$sock" \
        --csi.mountdir="$work/csi/kubelet/pods/target" \
        --csi.stagingdir="$work/csi/kubelet/plugins/staging" \
        --csi.testvolumeparameters="$work/params-$name.yaml" \
        --csi.testvolumeaccesstype="$access" \
        --csi.testvolumesize="$size" --csi.testvolumeexpandsize="$((size * 2))" \
        --ginkgo.no-color > "$work/sanity-$name.out" 2>&1; then
        tail -n 40 "$work/sanity-$name.out" >&2
        echo "--- warren log:" >&2; tail -n 40 "$work/warren.log" >&2
        echo "csi-sanity ($name) failed" >&2
        return 1
    fi
    echo "  $name: $(grep -E '^(SUCCESS|FAIL)' "$work/sanity-$name.out")" >&2
}
run_sanity image-xfs mount $((320 << 20)) "layout: image" "fsType: xfs"
run_sanity image-ext4 mount $((64 << 20)) "layout: image" "fsType: ext4"
run_sanity image-block block $((64 << 20)) "layout: image"
run_sanity dir mount $((64 << 20)) "layout: dir"

echo "== SIGTERM" >&2
start=$(date +%s%N)
$ctr task kill -s SIGTERM "$container"
for _ in $(seq 100); do
    $ctr task ls | grep -q "^$container .*RUNNING" || break
    sleep 0.1
done
if $ctr task ls | grep -q "^$container .*RUNNING"; then
    echo "warren did not stop within 10 s of SIGTERM" >&2; exit 1
fi
echo "  stopped in $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
echo "deploy/image/test.sh: $image OK" >&2
