#!/usr/bin/env bash
# mkimage.sh OUT.tar IMAGE_REF ROOTFS_DIR [ENTRYPOINT ARG...]
#
# Packs ROOTFS_DIR as a one-layer OCI image archive (linux/amd64) that
# `ctr -n k8s.io images import OUT.tar` loads under the name IMAGE_REF.
# There is no image registry here, so every image the e2e cluster runs is
# built this way from files on this machine. The archive is reproducible:
# same rootfs -> same digests (sorted tar, owner 0, mtime 0).
set -euo pipefail

[[ $# -ge 3 ]] || { echo "usage: $0 OUT.tar IMAGE_REF ROOTFS_DIR [ENTRYPOINT ARG...]" >&2; exit 2; }
out="$1" ref="$2" rootfs="$3"; shift 3

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/blobs/sha256"

# blob FILE -> moves FILE into blobs/ and prints "DIGEST SIZE"
blob() {
  local d s
  d="$(sha256sum "$1" | cut -d' ' -f1)"
  s="$(stat -c %s "$1")"
  mv "$1" "$tmp/blobs/sha256/$d"
  echo "$d $s"
}

# JSON string array from the arguments (entrypoint); arguments must not
# contain '"' or '\' (not needed by our images).
json_array() {
  local first=1 a
  printf '['
  for a in "$@"; do
    [[ $first == 1 ]] || printf ','
    first=0
    printf '"%s"' "$a"
  done
  printf ']'
}

# Uncompressed layer: no gzip time, and containerd accepts it as is.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -C "$rootfs" -cf "$tmp/layer.tar" .
read -r layer_digest layer_size < <(blob "$tmp/layer.tar")

cat >"$tmp/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":$(json_array "$@"),"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_digest"]}}
EOF
read -r config_digest config_size < <(blob "$tmp/config.json")

cat >"$tmp/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer_digest","size":$layer_size}]}
EOF
read -r manifest_digest manifest_size < <(blob "$tmp/manifest.json")

# io.containerd.image.name is the full name ctr import registers the image as.
cat >"$tmp/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"$ref","org.opencontainers.image.ref.name":"${ref##*:}"}}]}
EOF
echo '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci-layout"

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -C "$tmp" -cf "$out.tmp" oci-layout index.json blobs
mv -f "$out.tmp" "$out"
