#!/usr/bin/env bash
# Proves the kernel lab works end to end. Each check prints PASS or FAIL with
# a reason; the exit code is non-zero if any check failed.
#   1. 6.1 + nbd:       /dev/nbd0 exists after the module is loaded
#   2. 6.12 + ublk_drv: /dev/ublk-control exists
#   3. --net user:      the guest fetches a file from a server on host 127.0.0.1
#   4. --copy:          a glibc-linked host binary runs in the guest
set -euo pipefail

LAB=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d)
SERVER_PID=''
cleanup() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
failures=0

# check NAME EXPECT-IN-OUTPUT run-guest-args... : run a guest; PASS needs exit 0
# and the expected text in its console output.
check() {
  local name=$1 expect=$2 rc=0 t0
  shift 2
  echo "=== $name: run-guest.sh $*"
  t0=$(date +%s)
  "$LAB/run-guest.sh" "$@" --log "$T/$name.log" >/dev/null 2>&1 || rc=$?
  local secs=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ] && tr -d '\r' <"$T/$name.log" | grep -qF -- "$expect"; then
    echo "PASS $name (${secs}s): found '$expect'"
    grep -h '^run-guest:' "$T/$name.log" | sed 's/^/    /' || true
  else
    failures=$((failures + 1))
    echo "FAIL $name (${secs}s): exit $rc, expected '$expect'; console tail:"
    tail -n 15 "$T/$name.log" | sed 's/^/    /'
  fi
}

cat >"$T/nbd.sh" <<'EOF'
modprobe nbd && test -b /dev/nbd0 && echo "nbd0 is a block device"
EOF
check nbd-6.1 "nbd0 is a block device" --kernel 6.1 --modules nbd --script "$T/nbd.sh"

cat >"$T/ublk.sh" <<'EOF'
modprobe ublk_drv && test -c /dev/ublk-control && echo "ublk-control is a char device"
EOF
check ublk-6.12 "ublk-control is a char device" --kernel 6.12 --modules ublk_drv --script "$T/ublk.sh"

# A host HTTP server on 127.0.0.1 serving a random token; the guest sees it at 10.0.2.2.
mkdir "$T/www"
token=lab-$RANDOM$RANDOM
echo "$token" >"$T/www/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$T/www" "$port" >"$T/http.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cat >"$T/net.sh" <<EOF
# Not 'wget -T': it segfaults in Debian's busybox 1.35. busybox timeout instead.
out=\$(timeout 20 wget -q -O - http://10.0.2.2:$port/token) || exit 1
echo "got: \$out"
EOF
check net-user "got: $token" --kernel 6.1 --net user --script "$T/net.sh"

cat >"$T/copy.sh" <<'EOF'
/opt/bin/stat -c 'stat says %n' /opt/bin/stat
EOF
check copy-glibc "stat says /opt/bin/stat" --kernel 6.12 --copy /usr/bin/stat:/opt/bin/stat --script "$T/copy.sh"

if [ "$failures" = 0 ]; then echo "probe: all checks PASS"; else echo "probe: $failures check(s) FAILED"; fi
[ "$failures" = 0 ]
