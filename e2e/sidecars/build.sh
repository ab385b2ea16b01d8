#!/usr/bin/env bash
# Builds the kubernetes-csi sidecars that Warren's standard mode runs, from Go
# modules (no container registry is reachable here), and packs each one as an
# OCI archive named exactly as deploy/manifests/standard.yaml references it:
#   csi-provisioner      github.com/kubernetes-csi/external-provisioner/v6  (gomod/external-provisioner)
#   csi-snapshotter      github.com/kubernetes-csi/external-snapshotter/v8  (gomod/external-snapshotter)
#   snapshot-controller  the same external-snapshotter release
# The versions are pinned in gomod/*/go.mod (+ go.sum); the image tag is that
# version. Not buildable here (the Go module proxy refuses these module paths,
# see README.md): csi-node-driver-registrar, livenessprobe, csi-resizer.
#
# Output, in $WARREN_E2E_SIDECARS (default /var/cache/warren-e2e/sidecars):
#   bin/NAME (+ NAME.stamp)              static binaries
#   images/NAME.tar (+ NAME.tar.stamp)   OCI archives (e2e/cluster/mkimage.sh): /NAME, entrypoint /NAME
#   images.txt                           one line per image: "REF TARBALL"
#   build-logs/NAME.log
# A binary is rebuilt only when its inputs changed (go.mod, go.sum, flags, Go
# version: hashed into NAME.stamp), an archive only when its binary or ref did,
# so a second run is a no-op (~1 s).
#
# Usage: e2e/sidecars/build.sh           build what is missing or stale
#        FORCE=1 e2e/sidecars/build.sh   rebuild everything
# Env:   WARREN_E2E_SIDECARS, GOCACHE, GOMODCACHE (standard Go variables) are honoured.
#        Import an image: ctr --address /run/warren-e2e/nodeN/containerd.sock -n k8s.io images import TARBALL
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${WARREN_E2E_SIDECARS:-/var/cache/warren-e2e/sidecars}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
BIN="$CACHE/bin" IMAGES="$CACHE/images" LOGDIR="$CACHE/build-logs"
mkdir -p "$BIN" "$IMAGES" "$LOGDIR"
MKIMAGE="$REPO/e2e/cluster/mkimage.sh"
REGISTRY=registry.k8s.io/sig-storage

command -v go >/dev/null || { echo "sidecars/build.sh: go not found in PATH" >&2; exit 1; }

# As e2e/cluster/build.sh (same GOCACHE, so the standard library and shared
# packages compile once): static, no DWARF/symbol table, no absolute paths, no
# VCS stamping, and go.mod/go.sum are never edited (a stale go.sum fails loudly).
# Upstream (release-tools/build.make) builds with CGO_ENABLED=0 and
# -ldflags '-X main.version=TAG' too.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -buildvcs=false -mod=readonly"
export CGO_ENABLED=0

# NAME WRAPPER MODULE PACKAGE: one line per binary, built one after another.
SIDECARS=(
  "csi-provisioner     external-provisioner github.com/kubernetes-csi/external-provisioner/v6 cmd/csi-provisioner"
  "csi-snapshotter     external-snapshotter github.com/kubernetes-csi/external-snapshotter/v8 cmd/csi-snapshotter"
  "snapshot-controller external-snapshotter github.com/kubernetes-csi/external-snapshotter/v8 cmd/snapshot-controller"
)
# NAME MODULE TAG-IN-THE-CHART: sidecars the chart references that cannot be
# built here: `go mod download` of any version of these modules gets
# "403 Forbidden: This module version is not available" from the module proxy.
UNAVAILABLE=(
  "csi-node-driver-registrar github.com/kubernetes-csi/node-driver-registrar"
  "livenessprobe             github.com/kubernetes-csi/livenessprobe"
  "csi-resizer               github.com/kubernetes-csi/external-resizer"
)

# modversion MODULE GOMOD: the version GOMOD requires of MODULE.
modversion() { awk -v m="$1" '!/^[[:space:]]*\/\// { for (i = 1; i < NF; i++) if ($i == m) { print $(i+1); exit } }' "$2"; }

ldflags_for() { echo "-s -w -X main.version=$1"; }

# stamp FILES... : hash of everything that determines a binary (plus the words
# passed through $STAMP_EXTRA).
stamp() {
  { go version; echo "$GOFLAGS CGO_ENABLED=$CGO_ENABLED"; echo "$STAMP_EXTRA"; cat "$@"; } | sha256sum | cut -d' ' -f1
}
up_to_date() { # FILE HASH
  [[ -z "${FORCE:-}" && -s "$1" && -f "$1.stamp" && "$(cat "$1.stamp")" == "$2" ]]
}

t_start=$SECONDS
images_txt="$CACHE/images.txt.tmp"
: >"$images_txt"
built=0

for line in "${SIDECARS[@]}"; do
  read -r name wrapper module pkg <<<"$line"
  dir="$HERE/gomod/$wrapper"
  version="$(modversion "$module" "$dir/go.mod")"
  [[ -n "$version" ]] || { echo "sidecars/build.sh: no version of $module in $dir/go.mod" >&2; exit 1; }
  ldflags="$(ldflags_for "$version")"
  ref="$REGISTRY/$name:$version"

  # 1. binary
  STAMP_EXTRA="$name $module/$pkg $ldflags"
  hash="$(stamp "$dir/go.mod" "$dir/go.sum")"
  if up_to_date "$BIN/$name" "$hash"; then
    echo "sidecars/build.sh: $name $version up to date"
  else
    log="$LOGDIR/$name.log" t0=$SECONDS
    echo "sidecars/build.sh: building $name $version (log: $log)"
    if ! (cd "$dir" && go build -ldflags "$ldflags" -o "$BIN/$name.tmp" "$module/$pkg") >"$log" 2>&1; then
      echo "sidecars/build.sh: building $name FAILED after $((SECONDS - t0)) s; last lines of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    mv -f "$BIN/$name.tmp" "$BIN/$name"
    echo "$hash" >"$BIN/$name.stamp"
    built=1
    echo "sidecars/build.sh: built $name in $((SECONDS - t0)) s, $(du -h "$BIN/$name" | cut -f1)"
  fi

  # 2. smoke test (milliseconds): the binary runs and prints its usage.
  # Go's flag package exits 0 on --help; klog/pflag-based ones may exit 2.
  set +e
  out="$("$BIN/$name" --help 2>&1)"; rc=$?
  set -e
  if [[ $rc -gt 2 ]] || ! grep -q -- '-leader-election' <<<"$out"; then
    echo "sidecars/build.sh: $BIN/$name --help failed (exit $rc):" >&2
    head -n 20 <<<"$out" >&2
    exit 1
  fi

  # 3. image: rootfs = just the static binary at /NAME, entrypoint /NAME (as
  # upstream's Dockerfile on distroless/static has it).
  tar="$IMAGES/$name.tar"
  STAMP_EXTRA="$ref"
  ihash="$(stamp "$BIN/$name" "$MKIMAGE")"
  if up_to_date "$tar" "$ihash"; then
    echo "sidecars/build.sh: image $ref up to date"
  else
    rootfs="$(mktemp -d)"
    install -m 0755 "$BIN/$name" "$rootfs/$name"
    bash "$MKIMAGE" "$tar" "$ref" "$rootfs" "/$name"
    rm -rf "$rootfs"
    echo "$ihash" >"$tar.stamp"
    echo "sidecars/build.sh: packed $ref -> $tar ($(du -h "$tar" | cut -f1))"
  fi
  echo "$ref $tar" >>"$images_txt"
done
mv -f "$images_txt" "$CACHE/images.txt"

# The chart must reference exactly the images built here, or pods would wait
# for an image that no node has (ImagePullBackOff, no registry): say so loudly.
values="$REPO/deploy/helm/warren/values.yaml"
if [[ -f "$values" ]]; then
  while read -r ref _; do
    name="${ref##*/}"; name="${name%%:*}"
    want="$(grep -oE "$REGISTRY/$name:[^\"' ]+" "$values" | head -n 1 || true)"
    if [[ -n "$want" && "$want" != "$ref" ]]; then
      echo "sidecars/build.sh: MISMATCH: $values references $want, built $ref" >&2
      echo "  (update the pin in e2e/sidecars/gomod/*/go.mod or the tag in values.yaml)" >&2
      exit 1
    fi
  done <"$CACHE/images.txt"
fi

for line in "${UNAVAILABLE[@]}"; do
  read -r name module <<<"$line"
  want="$(grep -oE "$REGISTRY/$name:[^\"' ]+" "$values" 2>/dev/null | head -n 1 || true)"
  echo "sidecars/build.sh: NOT BUILT: ${want:-$REGISTRY/$name} (module $module is not served by the Go module proxy here)" >&2
done

echo "sidecars/build.sh: done in $((SECONDS - t_start)) s wall$([[ $built == 1 ]] || echo ' (nothing to build)'); images ($CACHE/images.txt):"
cat "$CACHE/images.txt"
