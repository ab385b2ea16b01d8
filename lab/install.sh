#!/usr/bin/env bash
# Installs what the Warren kernel lab needs on Debian 12 (run as root).
# Idempotent: when everything is already present it only checks and exits.
#
#   - host packages: qemu (TCG emulation), busybox-static (guest userland),
#     cpio (initramfs packing), kmod (depmod, modprobe --show-depends),
#     xz-utils (6.12 ships .ko.xz modules), python3 (probe.sh's HTTP server),
#     the 6.1 cloud kernel;
#   - the bookworm-backports 6.12 cloud kernel, unpacked (not installed) into
#     $LAB_CACHE/k/6.12, because only 6.12 ships ublk_drv.
set -euo pipefail

LAB_CACHE=${LAB_CACHE:-/var/tmp/warren-lab}
K612_ROOT=$LAB_CACHE/k/6.12
PKGS=(qemu-system-x86 busybox-static cpio kmod xz-utils python3 linux-image-cloud-amd64)
BPO_LIST=/etc/apt/sources.list.d/bookworm-backports.sources

log() { echo "install.sh: $*"; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

updated=0
apt_update() {  # at most one 'apt-get update' per run, and only when needed
  if [ "$updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq
    updated=1
  fi
}

# 1. Host packages. dpkg-query is fast; apt is only touched for missing ones.
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_update
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "host packages present: ${PKGS[*]}"
fi

# 2. The 6.12 kernel, unpacked into the cache (never the host's kernel).
if compgen -G "$K612_ROOT/boot/vmlinuz-6.12*" >/dev/null; then
  log "6.12 kernel present: $(basename "$(compgen -G "$K612_ROOT/boot/vmlinuz-6.12*" | head -1)")"
  exit 0
fi

# The apt source for bookworm-backports, unless some source already has it.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding apt source $BPO_LIST"
  cat >"$BPO_LIST" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  updated=0
fi
apt_update

# The backports metapackage names the exact versioned image package; download
# the metapackage only to read that dependency, then the image itself.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # lets apt's sandbox user _apt write the download here
cd "$tmp"
apt-get download -qq linux-image-cloud-amd64/bookworm-backports
meta=$(ls linux-image-cloud-amd64_*.deb)
img=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | grep -o 'linux-image-6\.12[^ (]*' | head -1)
[ -n "$img" ] || { log "no 6.12 image in Depends of $meta"; exit 1; }
log "downloading $img"
apt-get download -qq "$img"
mkdir -p "$K612_ROOT.tmp"
dpkg-deb -x "$img"_*.deb "$K612_ROOT.tmp"
# dpkg-deb -x skips the postinst, which is what would create modules.dep.
depmod -b "$K612_ROOT.tmp" "${img#linux-image-}"
rm -rf "$K612_ROOT"
mv "$K612_ROOT.tmp" "$K612_ROOT"
log "unpacked $img into $K612_ROOT"
