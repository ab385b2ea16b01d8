#!/usr/bin/env bash
# Builds the binaries of the Warren e2e cluster from Go modules:
#   warren-k8s  one multi-call binary with kube-apiserver, kube-controller-manager,
#               kube-scheduler, kubelet, kube-proxy and kubectl (k8s.io/kubernetes,
#               version pinned in gomod/k8s/go.mod), plus a symlink per component;
#   kine        etcd API over SQLite (github.com/k3s-io/kine, gomod/kine/go.mod);
#   pause       the pod sandbox program (upstream build/pause/linux/pause.c).
#
# Output: $WARREN_E2E_BIN (default /var/cache/warren-e2e/bin). A binary is rebuilt
# only when its inputs changed (go.mod, go.sum, main.go, flags, Go version): the
# hash of those is kept next to it in <name>.stamp.
#
# Usage: e2e/cluster/build.sh            build what is missing or stale
#        FORCE=1 e2e/cluster/build.sh    rebuild everything
# Env:   WARREN_E2E_BIN, GOCACHE, GOMODCACHE (standard Go variables) are honoured.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${WARREN_E2E_BIN:-/var/cache/warren-e2e/bin}"
LOGDIR="${WARREN_E2E_BUILD_LOGS:-$BIN/../build-logs}"
mkdir -p "$BIN" "$LOGDIR"
LOGDIR="$(cd "$LOGDIR" && pwd)"

command -v go >/dev/null || { echo "build.sh: go not found in PATH" >&2; exit 1; }

# Smaller and faster to build: no DWARF/symbol table (-s -w), no absolute paths
# (-trimpath, also makes the build cache reusable across checkouts), no VCS
# stamping (the wrapper modules live inside the Warren git repo; stamping would
# make every commit a cache miss for the main package).
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -buildvcs=false"
# Never let `go build` edit go.mod/go.sum: a stale go.sum must fail loudly.
export GOFLAGS="$GOFLAGS -mod=readonly"

# modversion MODULE GOMOD: the version GOMOD requires of MODULE.
modversion() { awk -v m="$1" '!/^[[:space:]]*\/\// { for (i = 1; i < NF; i++) if ($i == m) { print $(i+1); exit } }' "$2"; }
k8s_version="$(modversion k8s.io/kubernetes "$HERE/gomod/k8s/go.mod")"
kine_version="$(modversion github.com/k3s-io/kine "$HERE/gomod/kine/go.mod")"
[[ -n "$k8s_version" && -n "$kine_version" ]] || { echo "build.sh: cannot read versions from gomod/*/go.mod" >&2; exit 1; }
k8s_minor="${k8s_version#v1.}"; k8s_minor="${k8s_minor%%.*}"

# Version stamping as upstream hack/lib/version.sh does it: without it every
# component reports v0.0.0-master, kubectl warns about skew and the node shows a
# bogus kubeletVersion.
k8s_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
kine_ldflags="-s -w -X github.com/k3s-io/kine/pkg/version.Version=$kine_version"

# stamp NAME FILES... : hash of everything that determines the binary.
stamp() {
  local name="$1"; shift
  { go version; echo "$GOFLAGS"; echo "$k8s_ldflags"; echo "$kine_ldflags"
    echo "${CGO_ENABLED_K8S:-0} ${KINE_CGO:-1} ${KINE_TAGS-libsqlite3}"; cat "$@"; } | sha256sum | cut -d' ' -f1
}
up_to_date() { # NAME HASH
  [[ -z "${FORCE:-}" && -x "$BIN/$1" && -f "$BIN/$1.stamp" && "$(cat "$BIN/$1.stamp")" == "$2" ]]
}

# build NAME HASH DIR CMD... : runs CMD in DIR with output to a log, then
# installs $BIN/NAME.tmp as NAME and writes the stamp. Prints the wall time.
build() {
  local name="$1" hash="$2" dir="$3"; shift 3
  local log="$LOGDIR/$name.log" t0=$SECONDS
  echo "build.sh: building $name (log: $log)"
  if ! (cd "$dir" && "$@") >"$log" 2>&1; then
    echo "build.sh: building $name FAILED after $((SECONDS - t0)) s; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    return 1
  fi
  mv -f "$BIN/$name.tmp" "$BIN/$name"
  echo "$hash" >"$BIN/$name.stamp"
  echo "build.sh: built $name in $((SECONDS - t0)) s, $(du -h "$BIN/$name" | cut -f1)"
}

t_start=$SECONDS
pids=()

# kine: cgo build against Debian's libsqlite3 (tag libsqlite3): compiling
# mattn/go-sqlite3's bundled SQLite amalgamation costs minutes of one core, and
# the pure-Go fallback (modernc.org/sqlite, used with CGO_ENABLED=0) is even
# bigger to compile. Needs libsqlite3-dev at build time, libsqlite3-0 at run time.
kine_hash="$(stamp kine "$HERE/gomod/kine/go.mod" "$HERE/gomod/kine/go.sum")"
if up_to_date kine "$kine_hash"; then
  echo "build.sh: kine $kine_version up to date"
else
  # Runs next to the k8s build: that one is link-bound at its end and leaves a
  # core idle, so the two overlap well on 2 cores.
  build kine "$kine_hash" "$HERE/gomod/kine" \
    env CGO_ENABLED="${KINE_CGO:-1}" go build -tags "${KINE_TAGS-libsqlite3}" \
    -ldflags "$kine_ldflags" -o "$BIN/kine.tmp" github.com/k3s-io/kine &
  pids+=($!)
fi

k8s_hash="$(stamp warren-k8s "$HERE/gomod/k8s/go.mod" "$HERE/gomod/k8s/go.sum" "$HERE/gomod/k8s/main.go")"
if up_to_date warren-k8s "$k8s_hash"; then
  echo "build.sh: warren-k8s (k8s.io/kubernetes $k8s_version) up to date"
else
  # CGO_ENABLED=0: upstream builds all of these static except kubelet; the
  # kubelet needs no cgo either (pure-Go DNS resolver and os/user are fine here)
  # and skipping cgo saves compiling the cgo parts of net, os/user, runtime/cgo.
  build warren-k8s "$k8s_hash" "$HERE/gomod/k8s" \
    env CGO_ENABLED="${CGO_ENABLED_K8S:-0}" go build -ldflags "$k8s_ldflags" -o "$BIN/warren-k8s.tmp" . &
  pids+=($!)
fi

rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
[[ $rc == 0 ]] || { echo "build.sh: FAILED" >&2; exit 1; }

# pause: the sandbox ("infra") container's program, upstream
# build/pause/linux/pause.c of the same k8s.io/kubernetes release, static.
pause_src="$(cd "$HERE/gomod/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
pause_hash="$(stamp pause "$pause_src")"
if up_to_date pause "$pause_hash"; then
  echo "build.sh: pause up to date"
else
  build pause "$pause_hash" "$HERE" \
    gcc -Os -Wall -Werror -static -DVERSION="v3.10.1-warren-e2e" -o "$BIN/pause.tmp" "$pause_src"
fi

for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  ln -sfn warren-k8s "$BIN/$c"
done
echo "$k8s_version" >"$BIN/k8s-version"
echo "$kine_version" >"$BIN/kine-version"

echo "build.sh: done in $((SECONDS - t_start)) s wall; binaries in $BIN:"
stat -L -c '%s %n' "$BIN/warren-k8s" "$BIN/kine" | awk '{printf "  %-60s %6.1f MiB\n", $2, $1/1048576}'
