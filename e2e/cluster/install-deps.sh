#!/usr/bin/env bash
# install-deps.sh: Debian 12 packages the e2e cluster needs (build.sh, up.sh,
# down.sh). Idempotent: apt-get skips what is installed; the package index is
# refreshed only when a package is missing. Go itself is expected on PATH
# (the machine image has Go 1.26; kine v0.17.5 needs go >= 1.26.5).
set -euo pipefail

pkgs=(
  containerd                  # container runtime with CRI (1.6.20 in bookworm)
  runc                        # OCI runtime used by containerd's runc shim
  containernetworking-plugins # CNI plugins: bridge, host-local, loopback (/usr/lib/cni)
  iptables                    # kube-proxy (iptables mode, nft backend) and up.sh's egress guard
  conntrack                   # kube-proxy clears stale UDP conntrack entries with it
  iproute2                    # ip: bridges, veths, network namespaces, routes
  util-linux                  # nsenter, mount, setsid
  procps                      # sysctl
  openssl                     # cluster CA and certificates
  busybox-static              # rootfs of the busybox test image
  gcc                         # build.sh: static pause binary, kine's cgo SQLite driver
  libc6-dev                   # static libc for pause
  libsqlite3-dev              # build.sh: kine links Debian's SQLite (tag libsqlite3)
  libsqlite3-0                # kine at run time
  curl                        # debugging the API server by hand
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps.sh: all ${#pkgs[@]} packages present"
fi

command -v go >/dev/null || { echo "install-deps.sh: go not found on PATH (needed by build.sh)" >&2; exit 1; }
