#!/usr/bin/env bash
# Builds Warren's container image WITHOUT Docker or any registry: an OCI image tarball
# that `ctr -n k8s.io images import` (containerd, K3s), `docker load` (Docker >= 25) and
# K3s' air-gap image directory accept.
#
#   deploy/image/build.sh                       # amd64
#   deploy/image/build.sh --arch arm64          # aarch64, cross-compiled
#   deploy/image/build.sh --arch all            # both, as one multi-platform image
#   deploy/image/build.sh --tag dev --out /tmp/img
#
# What goes in (one layer):
#   /warren                 static binary (target *-unknown-linux-musl, linked by rust-lld;
#                           C of dependencies by musl-gcc / aarch64-linux-gnu-gcc)
#   /usr/sbin/mkfs.ext4 e2fsck resize2fs     e2fsprogs  } the programs the node plugin
#   /usr/sbin/mkfs.xfs xfs_growfs            xfsprogs   } runs (node-plugin/src/filesystem.rs,
#   /usr/bin/cp                              coreutils  } copy.rs: GNU cp for --reflink)
#   /etc/mke2fs.conf, and the shared libraries those programs need (glibc, libext2fs, ...)
# The tools and their libraries come from Debian 12 (bookworm) packages of the target
# architecture, fetched with `apt-get download` into a private apt state (the host's apt
# configuration is not changed) and unpacked with `dpkg-deb -x`; only the files listed
# above and the libraries they load (found by following ELF NEEDED entries) are kept.
#
# Output: $OUT/warren-<tag>-<arch>.oci.tar (and the OCI layout directory beside it);
# with --arch all also $OUT/warren-<tag>.oci.tar, holding both. On a node of another
# architecture than the image, `ctr images import` needs --platform linux/<arch>.
# Environment: CARGO_TARGET_DIR (default /var/tmp/warren-deploy-target),
#              WARREN_IMAGE_CACHE (default /var/tmp/warren-image-cache: .debs and apt lists;
#                delete it to pick up newer Debian packages),
#              SOURCE_DATE_EPOCH (default: the last commit's time; makes the tarball reproducible).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

arch=amd64
repository="ghcr.io/warren-csi/warren"
tag=""
out="$repo/deploy/image/out"
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --repository) repository="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --no-build) build=0; shift ;;   # reuse the binary already in CARGO_TARGET_DIR
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

# The image tag defaults to the workspace version, which is also the chart's appVersion.
if [ -z "$tag" ]; then
    tag="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")"
fi

if [ "$arch" = all ]; then
    # Both architectures, then one multi-platform image (an OCI index of the two
    # manifests) in one tarball: import the same file on every node of a mixed cluster.
    opts=(--repository "$repository" --tag "$tag" --out "$out")
    [ "$build" = 0 ] && opts+=(--no-build)
    bash "$0" --arch amd64 "${opts[@]}" >/dev/null
    bash "$0" --arch arm64 "${opts[@]}" >/dev/null
    layout="$out/warren-$tag.oci"
    archive="$out/warren-$tag.oci.tar"
    rm -rf "$layout" "$archive"
    python3 - "$layout" "$repository" "$tag" "$out/warren-$tag-amd64.oci" "$out/warren-$tag-arm64.oci" <<'PY'
import hashlib, json, os, shutil, sys
layout, repository, tag, *parts = sys.argv[1:]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)
manifests = []
for part in parts:
    for name in os.listdir(os.path.join(part, "blobs", "sha256")):
        shutil.copyfile(os.path.join(part, "blobs", "sha256", name), os.path.join(blobs, name))
    desc = json.load(open(os.path.join(part, "index.json")))["manifests"][0]
    desc.pop("annotations", None)
    manifests.append(desc)
index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": manifests}, sort_keys=True, separators=(",", ":")).encode()
digest = hashlib.sha256(index).hexdigest()
open(os.path.join(blobs, digest), "wb").write(index)
top = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
       "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                      "digest": "sha256:" + digest, "size": len(index),
                      "annotations": {"io.containerd.image.name": f"{repository}:{tag}",
                                      "org.opencontainers.image.ref.name": tag}}]}
open(os.path.join(layout, "index.json"), "w").write(json.dumps(top, sort_keys=True, separators=(",", ":")))
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
    export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$layout" -cf "$archive" .
    echo "==> image $repository:$tag (linux/amd64, linux/arm64): $(stat -c %s "$archive") bytes: $archive" >&2
    echo "$archive"
    exit 0
fi

case "$arch" in
    amd64) triple=x86_64-unknown-linux-musl; gnu=x86_64-linux-gnu; interp=/lib64/ld-linux-x86-64.so.2 ;;
    arm64) triple=aarch64-unknown-linux-musl; gnu=aarch64-linux-gnu; interp=/lib/ld-linux-aarch64.so.1 ;;
    *) echo "--arch must be amd64, arm64 or all" >&2; exit 2 ;;
esac

export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/warren-deploy-target}"
cache="${WARREN_IMAGE_CACHE:-/var/tmp/warren-image-cache}/$arch"
for tool in cargo rustup apt-get dpkg-deb readelf python3 tar gzip sha256sum; do
    command -v "$tool" >/dev/null || { echo "build.sh needs $tool" >&2; exit 1; }
done

log() { echo "==> $*" >&2; }

# ---------------------------------------------------------------- 1. the static binary
bin="$CARGO_TARGET_DIR/$triple/release/warren"
if [ "$build" = 1 ]; then
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
    # rust-lld (shipped with rustup) links musl targets with the crt objects and libc.a that
    # rustup ships for them (self-contained): no musl-gcc or aarch64 gcc as the linker.
    target_env="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_LINKER"
    # A dependency that compiles C for the target (ring, through kube's rustls, does)
    # needs a C compiler for it: musl-gcc (Debian musl-tools) for x86_64, Debian's
    # aarch64 gcc for arm64 (ring's C is freestanding, so glibc's cross gcc builds it for
    # musl too). Installed when missing.
    if cargo tree --locked --manifest-path "$repo/Cargo.toml" -p warren --target "$triple" \
            -e normal,build --prefix none 2>/dev/null | grep -q '^cc v'; then
        case "$arch" in
            amd64) cc=musl-gcc; ar=ar; pkg=musl-tools ;;
            arm64) cc=aarch64-linux-gnu-gcc; ar=aarch64-linux-gnu-ar; pkg=gcc-aarch64-linux-gnu ;;
        esac
        if ! command -v "$cc" >/dev/null; then
            log "installing $pkg (a dependency compiles C for $triple)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$pkg" >&2
        fi
        export "CC_${triple//-/_}=$cc" "AR_${triple//-/_}=$ar"
    fi
    log "cargo build --release --target $triple -p warren (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    env "$target_env=rust-lld" \
        cargo build --manifest-path "$repo/Cargo.toml" --release --locked --target "$triple" -p warren
fi
[ -x "$bin" ] || { echo "no binary at $bin (build first, or drop --no-build)" >&2; exit 1; }
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
    echo "$bin is dynamically linked; expected a static binary" >&2; exit 1
fi

# ---------------------------------------------------------------- 2. the tools, from Debian
# Packages that hold the programs and every library they load (checked below: a missing
# library fails the build, it does not make a broken image).
packages=(libc6 e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1
          xfsprogs libinih1 liburcu8
          coreutils libselinux1 libpcre2-8-0 libacl1 libattr1)
apt_opts=(
    -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
    -o "Dir::State=$cache/apt/state" -o "Dir::State::status=$cache/apt/status"
    -o "Dir::Cache=$cache/apt/cache" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -q
)
mkdir -p "$cache/apt/state/lists/partial" "$cache/apt/cache/archives/partial" "$cache/debs"
touch "$cache/apt/status"
if ! ls "$cache"/debs/*.deb >/dev/null 2>&1; then
    log "apt-get download (bookworm, $arch): ${packages[*]}"
    apt-get "${apt_opts[@]}" update >&2
    (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "${packages[@]/%/:$arch}" >&2)
fi
work="$(mktemp -d /var/tmp/warren-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs"
for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$work/debs"; done

rootfs="$work/rootfs"
mkdir -p "$rootfs"/{usr/bin,usr/sbin,"usr/lib/$gnu",etc,tmp,proc,sys,dev,var/lib/warren}
chmod 1777 "$rootfs/tmp"
# merged /usr, as on Debian 12 itself
ln -s usr/bin "$rootfs/bin"; ln -s usr/sbin "$rootfs/sbin"; ln -s usr/lib "$rootfs/lib"
if [ "$arch" = amd64 ]; then mkdir -p "$rootfs/usr/lib64"; ln -s usr/lib64 "$rootfs/lib64"; fi

find_in_debs() { # NAME DIRS... -> the first existing path (symlinks resolved inside the tree)
    local name="$1"; shift
    local d
    for d in "$@"; do
        if [ -e "$work/debs/$d/$name" ] || [ -L "$work/debs/$d/$name" ]; then
            python3 - "$work/debs" "$d/$name" <<'PY'
import os, sys
root, rel = sys.argv[1], sys.argv[2]
path = os.path.join(root, rel)
for _ in range(40):                      # resolve symlinks inside the unpacked tree
    if not os.path.islink(path):
        print(path); sys.exit(0)
    target = os.readlink(path)
    if target.startswith("/"):
        path = os.path.join(root, target.lstrip("/"))
    else:
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
sys.exit("symlink loop at " + rel)
PY
            return 0
        fi
    done
    return 1
}

install_program() { # NAME DEST_DIR
    local src
    src="$(find_in_debs "$1" sbin usr/sbin bin usr/bin)" || { echo "no $1 in the packages" >&2; exit 1; }
    install -m 0755 "$src" "$rootfs/$2/$1"
}
for p in mkfs.ext4 e2fsck resize2fs mkfs.xfs xfs_growfs; do install_program "$p" usr/sbin; done
install_program cp usr/bin
install -m 0644 "$work/debs/etc/mke2fs.conf" "$rootfs/etc/mke2fs.conf"
# The dynamic loader, at the path the programs ask for (PT_INTERP).
install -m 0755 "$(find_in_debs "$(basename "$interp")" "lib/$gnu" "usr/lib/$gnu" lib64 lib)" "$rootfs/usr$interp"

# Every library the programs load, transitively, by their ELF NEEDED entries.
declare -A seen=()
queue=("$rootfs"/usr/sbin/* "$rootfs"/usr/bin/*)
while [ ${#queue[@]} -gt 0 ]; do
    f="${queue[0]}"; queue=("${queue[@]:1}")
    for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        [ -n "${seen[$lib]:-}" ] && continue
        seen[$lib]=1
        [ "$lib" = "$(basename "$interp")" ] && continue   # the loader itself, placed above
        src="$(find_in_debs "$lib" "lib/$gnu" "usr/lib/$gnu")" || {
            echo "library $lib (needed by ${f#$rootfs}) is in none of: ${packages[*]}" >&2; exit 1; }
        install -m 0644 "$src" "$rootfs/usr/lib/$gnu/$lib"
        queue+=("$rootfs/usr/lib/$gnu/$lib")
    done
done
log "libraries: ${!seen[*]}"

install -m 0755 "$bin" "$rootfs/warren"
# Debian's copyright files for what the image carries (their licences ask for it).
mkdir -p "$rootfs/usr/share/doc"
for pkg in "${packages[@]}"; do
    [ -f "$work/debs/usr/share/doc/$pkg/copyright" ] &&
        install -D -m 0644 "$work/debs/usr/share/doc/$pkg/copyright" "$rootfs/usr/share/doc/$pkg/copyright"
done

# ---------------------------------------------------------------- 3. the OCI image
layout="$out/warren-$tag-$arch.oci"
archive="$out/warren-$tag-$arch.oci.tar"
rm -rf "$layout" "$archive"
mkdir -p "$layout/blobs/sha256"
layer_tar="$work/layer.tar"
# Reproducible: sorted names, fixed owner and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$layer_tar" .
gzip -9 -n -c "$layer_tar" > "$work/layer.tar.gz"

python3 - "$layout" "$layer_tar" "$work/layer.tar.gz" "$arch" "$repository" "$tag" "$SOURCE_DATE_EPOCH" <<'PY'
import hashlib, json, os, shutil, sys, time
layout, layer_tar, layer_gz, arch, repository, tag, epoch = sys.argv[1:]

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def put_blob(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)

def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
diff_id = "sha256:" + sha256_file(layer_tar)
layer_digest = sha256_file(layer_gz)
shutil.copyfile(layer_gz, os.path.join(layout, "blobs", "sha256", layer_digest))
layer_size = os.path.getsize(layer_gz)

config = {
    "architecture": arch,
    "os": "linux",
    "created": created,
    "config": {
        "Entrypoint": ["/warren"],
        "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
        "Labels": {
            "org.opencontainers.image.title": "warren",
            "org.opencontainers.image.description": "Warren CSI driver (warren.csi.dev)",
            "org.opencontainers.image.version": tag,
            "org.opencontainers.image.licenses": "Apache-2.0",
        },
    },
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created": created, "created_by": "deploy/image/build.sh"}],
}
config_digest, config_size = put_blob(dumps(config))

manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": config_digest, "size": config_size},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + layer_digest, "size": layer_size}],
}
manifest_digest, manifest_size = put_blob(dumps(manifest))

name = f"{repository}:{tag}"
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {
            # containerd (ctr import, K3s) names the image from this one...
            "io.containerd.image.name": name,
            # ...and the OCI spec's own name for the reference.
            "org.opencontainers.image.ref.name": tag,
        },
    }],
}
with open(os.path.join(layout, "index.json"), "wb") as f:
    f.write(dumps(index))
with open(os.path.join(layout, "oci-layout"), "wb") as f:
    f.write(dumps({"imageLayoutVersion": "1.0.0"}))
# docker load (and older tools) read manifest.json; with it the same tarball loads there too.
with open(os.path.join(layout, "manifest.json"), "wb") as f:
    f.write(json.dumps([{
        "Config": "blobs/sha256/" + config_digest.split(":")[1],
        "RepoTags": [name],
        "Layers": ["blobs/sha256/" + layer_digest],
    }]).encode())
print(manifest_digest)
PY

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    -C "$layout" -cf "$archive" .
layer_bytes=$(stat -c %s "$work/layer.tar.gz")
rootfs_bytes=$(du -sb "$rootfs" | cut -f1)
log "image $repository:$tag ($arch)"
log "  binary:   $(stat -c %s "$bin") bytes ($bin)"
log "  rootfs:   $rootfs_bytes bytes unpacked"
log "  layer:    $layer_bytes bytes compressed"
log "  archive:  $(stat -c %s "$archive") bytes: $archive"
log "import: ctr -n k8s.io images import $archive   (K3s: k3s ctr images import ...)"
echo "$archive"
