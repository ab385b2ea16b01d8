#!/usr/bin/env bash
# Boots one QEMU/TCG guest with a busybox initramfs, runs a script in it and
# exits with that script's exit code (125 if the guest never reported one).
#
#   run-guest.sh --kernel 6.1|6.12 --script FILE [--modules "nbd ..."]
#                [--copy HOST[:GUEST]]... [--net user] [--mem MB] [--smp N]
#                [--disk FILE] [--timeout SECONDS] [--log FILE]
#
# The initrd is two concatenated cpio archives (the kernel unpacks both):
#   base: busybox, /init, kernel modules - cached in $LAB_CACHE/initrd/,
#         keyed by kernel, module list and the hashes of busybox and this file;
#   run:  the guest script and --copy files - rebuilt on every run, so they
#         are always current.
set -euo pipefail

LAB_CACHE=${LAB_CACHE:-/var/tmp/warren-lab}
KERNEL='' MODULES='' SCRIPT='' NET='' MEM=512 SMP=2 TIMEOUT=300 LOG='' DISK=''
COPIES=()

die() { echo "run-guest: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "missing value for $1"
  case $1 in
    --kernel) KERNEL=$2 ;;
    --modules) MODULES=$2 ;;
    --copy) COPIES+=("$2") ;;
    --script) SCRIPT=$2 ;;
    --net) NET=$2 ;;
    --mem) MEM=$2 ;;
    --smp) SMP=$2 ;;
    --disk) DISK=$2 ;;
    --timeout) TIMEOUT=$2 ;;
    --log) LOG=$2 ;;
    *) die "unknown argument $1" ;;
  esac
  shift 2
done
[ -f "$SCRIPT" ] || die "--script FILE is required (got '$SCRIPT')"
[ -z "$NET" ] || [ "$NET" = user ] || die "--net supports only 'user'"
[ -z "$DISK" ] || [ -f "$DISK" ] || die "--disk: no such file $DISK"

# Kernel tree: 6.1 is the host-installed package, 6.12 is unpacked by install.sh.
case $KERNEL in
  6.1) KROOT=/ ; KPAT='^6\.1\..*-cloud-amd64$' ;;
  6.12) KROOT=$LAB_CACHE/k/6.12 ; KPAT='^6\.12\..*-cloud-amd64$' ;;
  *) die "--kernel must be 6.1 or 6.12" ;;
esac
KVER=$(find "$KROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null \
  | grep -E "$KPAT" | sort -V | tail -1 || true)
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
if [ -z "$KVER" ] || [ ! -f "$VMLINUZ" ]; then die "kernel $KERNEL not found; run lab/install.sh"; fi

# virtio-net is a module in 6.1 (built in partly in 6.12): load it for --net.
[ -n "$NET" ] && MODULES="virtio_pci virtio_net $MODULES"
# --disk: a raw image as the guest's /dev/vda (virtio_blk is a module in both kernels).
[ -n "$DISK" ] && MODULES="virtio_pci virtio_blk $MODULES"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# On INT/TERM stop our guest (if one runs), then exit through the EXIT trap.
trap 'kill "$(cat "$WORK/qemu.pid" 2>/dev/null)" 2>/dev/null; exit 130' INT TERM

# cpio of directory $1 into file $2, all files owned by root.
pack() { (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$2"; }

# ---- base archive (cached) --------------------------------------------------
BUSYBOX=$(command -v busybox)
read -ra MODS <<<"$MODULES"
KEY=$( { echo "$KVER $KROOT ${MODS[*]}"; sha256sum "$BUSYBOX" "$0"; } | sha256sum | cut -c1-16)
BASE=$LAB_CACHE/initrd/base-$KERNEL-$KEY.cpio.gz
if [ ! -f "$BASE" ]; then
  echo "run-guest: building $BASE"
  R=$WORK/base
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,lab}
  cp "$BUSYBOX" "$R/bin/busybox"
  for a in $("$BUSYBOX" --list-full); do
    # The 'busybox' applet itself would overwrite the binary with a self-link.
    [ "${a##*/}" = busybox ] || ln -sf /bin/busybox "$R/$a"
  done
  # Modules plus dependencies, as modules.dep (through modprobe) orders them.
  MD=lib/modules/$KVER
  mkdir -p "$R/$MD"
  : >"$R/lab/modules"
  for m in "${MODS[@]}"; do
    deps=$(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m") || die "no module $m in $KVER"
    # "builtin X" lines need no file and no modprobe in the guest.
    grep -q '^insmod ' <<<"$deps" && echo "$m" >>"$R/lab/modules"
    awk '$1 == "insmod" { print $2 }' <<<"$deps" | while read -r f; do
      rel=${f#"${KROOT%/}"/}
      mkdir -p "$R/$(dirname "$rel")"
      case $f in
        *.xz) xz -dc "$f" >"$R/${rel%.xz}" ;;   # busybox modprobe wants plain .ko
        *.zst) zstd -qdc "$f" >"$R/${rel%.zst}" ;;
        *) cp "$f" "$R/$rel" ;;
      esac
    done
  done
  cp "$KROOT/$MD"/modules.{order,builtin,builtin.modinfo} "$R/$MD/" 2>/dev/null || true
  depmod -b "$R" "$KVER"
  cat >"$R/init" <<'INIT'
#!/bin/sh
# PID 1 in the guest. Must never exit: that panics the kernel. It always ends
# with "LAB-EXIT=<rc>" on the console, which run-guest.sh turns into its exit code.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /root && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
echo "LAB-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /lab/modules); do modprobe "$m" || echo "lab: modprobe $m failed"; done
ip link set lo up
if [ -f /lab/net ]; then
  # eth0 appears asynchronously after virtio_net loads.
  i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 \
    || echo "lab: network setup failed"
  echo "nameserver 10.0.2.3" >/etc/resolv.conf
fi
sh /lab/script
echo "LAB-EXIT=$?"
sync
poweroff -f
INIT
  chmod +x "$R/init"
  mkdir -p "$LAB_CACHE/initrd"
  pack "$R" "$WORK/base.cpio"
  # gzip output is padded to 4 bytes so the appended archive starts aligned.
  gzip -1 -c "$WORK/base.cpio" >"$BASE.$$"
  truncate -s %4 "$BASE.$$"
  mv "$BASE.$$" "$BASE"   # atomic: concurrent runs never see a partial file
fi

# ---- per-run archive (always rebuilt) ---------------------------------------
R=$WORK/run
mkdir -p "$R/lab"
cp "$SCRIPT" "$R/lab/script"
[ -n "$NET" ] && touch "$R/lab/net"
add() {  # add host file $1 at guest path $2, creating parent directories
  mkdir -p "$R/$(dirname "$2")"
  cp -aL "$1" "$R/$2"
}
for c in "${COPIES[@]}"; do
  host=${c%%:*}; guest=${c#*:}
  [ "$guest" = "$c" ] && guest=$(realpath "$host")
  [ -e "$host" ] || die "--copy: no such file $host"
  add "$host" "$guest"
  # Dynamic binaries: their libraries and the loader, at the paths ldd names.
  if [ -f "$host" ] && [ -x "$host" ]; then
    for lib in $(ldd "$host" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$R/$lib" ] || add "$lib" "$lib"
    done
  fi
done
pack "$R" "$WORK/run.cpio"
cat "$BASE" "$WORK/run.cpio" >"$WORK/initrd"

# ---- boot -------------------------------------------------------------------
# panic=-1 + -no-reboot: a panic ends qemu at once; oops=panic: an oops does
# too, instead of leaving a half-dead guest to run into the timeout.
NETARGS=(-nic none)
[ -n "$NET" ] && NETARGS=(-netdev "user,id=n0" -device "virtio-net-pci,netdev=n0,romfile=")
# (romfile= skips the iPXE option ROM: nobody netboots, and it costs boot time)
# qemu's default cache mode (writeback): the guest's flushes reach the host file's disk.
DISKARGS=()
[ -n "$DISK" ] && DISKARGS=(-drive "file=$DISK,if=virtio,format=raw")
LOG=${LOG:-/dev/null}
[ "$LOG" = /dev/null ] || : >"$LOG"
start=$(date +%s%N)
for attempt in 1 2; do
  alog=$WORK/console-$attempt.log
  rm -f "$WORK/qemu.pid"  # never signal a stale PID from attempt 1
  # --foreground keeps qemu in our process group, so killing run-guest.sh's
  # group also kills the guest. -cpu ...,-cx16: QEMU 7.2 TCG corrupts EFLAGS
  # around CMPXCHG16B (SLUB's fast path); 6.12 guests oopsed in ~1 of 3 boots
  # with it and 0 of 20 without it.
  # Runs in the background + wait, so that a TERM/INT to this script is handled
  # at once (the trap below) instead of after qemu exits.
  {
    timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu qemu64,-cx16 \
      -m "$MEM" -smp "$SMP" -pidfile "$WORK/qemu.pid" \
      -nographic -no-reboot "${NETARGS[@]}" "${DISKARGS[@]}" \
      -kernel "$VMLINUZ" -initrd "$WORK/initrd" \
      -append "console=ttyS0 panic=-1 oops=panic loglevel=4" </dev/null 2>&1
    echo $? >"$WORK/qrc"
  } | tee -a "$alog" "$LOG" &
  wait $! || true
  qrc=$(cat "$WORK/qrc")
  # TCG flake safety net: if the kernel died before /init, retry the boot once.
  if ! grep -q 'LAB-INIT' "$alog" && [ "$qrc" != 124 ] && [ "$attempt" = 1 ]; then
    echo "run-guest: guest died before /init (qemu rc=$qrc); retrying boot once" | tee -a "$LOG"
    continue
  fi
  break
done
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
elapsed=$(printf '%d.%03d' $((elapsed / 1000)) $((elapsed % 1000)))
init_at=$(tr -d '\r' <"$alog" | sed -n 's/.*LAB-INIT uptime=\([0-9.]*\).*/\1/p' | head -1)
rc=$(tr -d '\r' <"$alog" | grep -o 'LAB-EXIT=[0-9]*' | tail -1 | cut -d= -f2 || true)
summary="kernel=$KVER attempts=$attempt init-at=${init_at:-never}s wall=${elapsed}s"
if [ -z "$rc" ]; then
  why="no LAB-EXIT marker"
  [ "$qrc" = 124 ] && why="timeout after ${TIMEOUT}s"
  grep -q 'Kernel panic' "$alog" && why="kernel panic"
  echo "run-guest: FAILED: $why ($summary); exit 125" | tee -a "$LOG" >&2
  exit 125
fi
echo "run-guest: guest script exit=$rc ($summary)" | tee -a "$LOG"
exit "$rc"
