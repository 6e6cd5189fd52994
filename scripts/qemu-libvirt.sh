#!/usr/bin/env bash
# libvirt end to end: `vgrace qemu-args --format libvirt` writes the domain XML of a node of GPUs
# (default two 96 GiB GH100s, memfd backing) for the guest kernel and busybox initramfs of
# qemu-e2e.sh; libvirt (Debian sid's, installed once in the cached x86 chroot of qemu-setup.sh)
# validates it against its schema, `virsh define`s and `virsh start`s it under TCG; the guest runs
# the node checks (scripts/guest/node: each GPU alone behind its root port, BARs assigned and
# sized, memory read/write through BAR4, the SRAT generic initiators on the NUMA cells) and prints
# them on the serial console, which the domain writes to a file. `vgrace serve` gives the sockets
# the group of libvirt's QEMU user (its number, which only the chroot knows) and mode 0660.
#
# libvirtd and virtlogd run without systemd in the chroot, in their own mount and network
# namespaces: /proc, /dev and /sys (read-only; libvirt reads the host's CPUs there) are mounted
# there only (other runs' chroot mounts are left alone), no cgroup file system is, and nothing
# libvirt does reaches the host's network. Everything is undone on exit (domain,
# daemons, server, work directory); every wait is bounded.
#
# VGRACE_LIBVIRT_GPUS (default 2), VGRACE_LIBVIRT_MEM_SIZE (96G), VGRACE_LIBVIRT_WAIT (seconds for
# the guest, default 300), VGRACE_LIBVIRT_KEEP=1 keeps the work directory (domain.xml, console,
# logs) in the chroot's /tmp/vgrace-libvirt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/qemu-lib.sh"
log() { printf '[qemu-libvirt] %s\n' "$*" >&2; }
GPUS=${VGRACE_LIBVIRT_GPUS:-2}
MEM_SIZE=${VGRACE_LIBVIRT_MEM_SIZE:-96G}
WAIT=${VGRACE_LIBVIRT_WAIT:-300}
NAME=vgrace-ci
export DEBIAN_FRONTEND=noninteractive

bash "$here/qemu-setup.sh"

# Runs "$@" in a private mount namespace with the chroot's /proc and /dev mounted.
in_chroot() {
  unshare --mount --propagation private sh -c \
    'r=$1; shift; mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" && exec chroot "$r" "$@"' \
    sh "$ROOT" "$@"
}
if [ ! -x "$ROOT/usr/sbin/libvirtd" ] || [ ! -x "$ROOT/usr/bin/virsh" ]; then
  log "installing libvirt-daemon-system and libvirt-clients in the chroot"
  # No service may start from the packages' scripts.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"
  rc=0
  in_chroot apt-get update -qq && in_chroot apt-get install -y -qq --no-install-recommends \
    libvirt-daemon-system libvirt-clients >/dev/null || rc=$?
  rm -f "$ROOT/usr/sbin/policy-rc.d"
  [ $rc = 0 ] || { log "installing libvirt failed"; exit 1; }
fi

log "building vgrace (release)"
qemu_build_vgrace

inside=/tmp/vgrace-libvirt
work=$ROOT$inside
lv_pid=""; vg_pid=""
# "$@" in the chroot, in libvirtd's mount namespace; virsh there, against it (each call bounded).
in_lv() { timeout 60 nsenter -t "$lv_pid" -m chroot "$ROOT" "$@"; }
vsh() { in_lv virsh -q -c qemu:///system "$@"; }
# Waits up to $2 tenths of a second for process $1 to end, then kills it.
stop_pid() {
  local i
  kill "$1" 2>/dev/null || return 0
  for i in $(seq "$2"); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
cleanup() {
  if [ -n "$lv_pid" ]; then
    { vsh destroy "$NAME"; vsh undefine "$NAME"; } >/dev/null 2>&1 || true
    stop_pid "$lv_pid" 100
    [ -s "$work/virtlogd.pid" ] && stop_pid "$(cat "$work/virtlogd.pid")" 50
  fi
  [ -n "$vg_pid" ] && stop_pid "$vg_pid" 50
  [ -n "${VGRACE_LIBVIRT_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work" && mkdir -p "$work"
# libvirt's QEMU user must reach the kernel, the initramfs and the sockets in here.
chmod 755 "$work"
qemu_make_guest "$work"

for side in guest host; do
  prefix=""; [ $side = host ] && prefix=$ROOT
  for i in $(seq 0 $((GPUS - 1))); do
    printf '[[device]]\nsocket = "%s/gpu%d.sock"\nprofile = "gh100"\nmem_size = "%s"\nbacking = "memfd"\n\n' \
      "$prefix$inside" "$i" "$MEM_SIZE"
  done >"$work/node-$side.toml"
done
# Each GPU's BAR sizes and NUMA nodes, from the node qemu-args lays out.
read -r BAR2 BAR4 GIS < <("$VGRACE" qemu-args --config "$work/node-guest.toml" --machine q35 --json | python3 -c '
import json, sys
g = json.load(sys.stdin)["node"]["gpus"][0]
b = dict((x[0], x[1]) for x in g["bars"])
print(b.get(2, 0), b.get(4, 0), g["numa_nodes"][1] - g["numa_nodes"][0] + 1)
')

ok=1
host_check() { # name ok detail
  if [ "$2" = 1 ]; then echo "VGRACE-HOST $1 PASS $3"; else echo "VGRACE-HOST $1 FAIL $3"; ok=0; fi
}
append="console=ttyS0 panic=-1 quiet vgrace.case=node vgrace.gpus=$GPUS vgrace.bar2=$BAR2 vgrace.bar4=$BAR4 vgrace.gis=$GIS"
"$VGRACE" qemu-args --config "$work/node-guest.toml" --machine q35 --guest-mem 2G --format libvirt \
  --name "$NAME" --domain-type qemu --vcpus 2 --kernel "$inside/vmlinuz" --initrd "$inside/initrd.gz" \
  --cmdline "$append" --serial-log "$inside/console.log" >"$work/domain.xml"

# Debian's qemu.conf, but QEMU without a mount namespace of its own: libvirt cannot set one up
# inside a chroot. Bind-mounted over the original in libvirtd's namespace only.
{ cat "$ROOT/etc/libvirt/qemu.conf"; echo 'namespaces = []'; } >"$work/qemu.conf"
log "starting virtlogd and libvirtd in the chroot"
unshare --mount --net --propagation private sh -c \
  'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && mount -t sysfs -o ro sysfs "$1/sys" &&
   mount --bind "$2/qemu.conf" "$1/etc/libvirt/qemu.conf" || exit 1
   chroot "$1" /usr/sbin/virtlogd & echo $! >"$2/virtlogd.pid"
   exec chroot "$1" /usr/sbin/libvirtd' sh "$ROOT" "$work" >"$work/libvirtd.log" 2>&1 &
lv_pid=$!
for _ in $(seq 60); do vsh version >/dev/null 2>&1 && break; sleep 0.5; done
vsh version >/dev/null || { log "libvirtd did not answer"; cat "$work/libvirtd.log"; exit 1; }
log "$(vsh version | grep -E 'library|hypervisor' | tr -s ' ' | paste -sd ';')"

if [ -x "$ROOT/usr/bin/virt-xml-validate" ]; then
  v=$(in_lv virt-xml-validate "$inside/domain.xml" domain 2>&1) && m=1 || m=0
  host_check domain-xml-validates $m "virt-xml-validate: $v"
fi
vsh define "$inside/domain.xml" >/dev/null && m=1 || m=0
host_check virsh-define $m "domain $NAME"

# Serves the node with the extra serve flags given, until every socket is there.
serve() {
  rm -f "$work"/gpu*.sock
  RUST_LOG=${RUST_LOG:-info} "$VGRACE" serve --config "$work/node-host.toml" "$@" >>"$work/vgrace.log" 2>&1 &
  vg_pid=$!
  local n i
  for _ in $(seq 100); do
    n=0; for i in $(seq 0 $((GPUS - 1))); do [ -S "$work/gpu$i.sock" ] && n=$((n + 1)); done
    [ $n = "$GPUS" ] && return 0; sleep 0.1
  done
  log "vgrace serve did not start"; cat "$work/vgrace.log"; exit 1
}

# Without a socket group the sockets are 0600, root's: libvirt's QEMU user cannot connect.
serve
err=$(vsh start "$NAME" 2>&1) && m=0 || m=1
echo "$err" | grep -q 'Permission denied' || m=0
vsh destroy "$NAME" >/dev/null 2>&1 || true
host_check no-socket-group-no-start $m "virsh start refused: $(echo "$err" | grep -o "Failed to connect to '[^']*': Permission denied" | head -1)"
stop_pid "$vg_pid" 50

# The group libvirt runs QEMU with (Debian: libvirt-qemu), by number: the host has no such group.
qemu_gid=$(chroot "$ROOT" id -g libvirt-qemu)
serve --socket-group "$qemu_gid" --socket-mode 0660
modes=$(stat -c '%g %a' "$work"/gpu*.sock | sort -u | tr '\n' ' ')
[ "$modes" = "$qemu_gid 660 " ] && m=1 || m=0
host_check socket-group-and-mode $m "sockets: gid and mode ${modes% } (libvirt-qemu is gid $qemu_gid in the chroot)"

log "virsh start $NAME (TCG; the guest powers off after its checks)"
t0=$(date +%s)
if vsh start "$NAME" >/dev/null; then
  # The domain ends when the guest powers off (on_poweroff destroy); a panic reboots it, so the
  # console is watched too.
  for _ in $(seq "$WAIT"); do
    [ "$(vsh domstate "$NAME" 2>/dev/null)" = "shut off" ] && break
    grep -q 'Kernel panic' "$work/console.log" 2>/dev/null && break
    sleep 1
  done
  state=$(vsh domstate "$NAME" 2>/dev/null || echo gone)
  host_check virsh-start-and-guest-poweroff "$([ "$state" = "shut off" ] && echo 1 || echo 0)" \
    "domain $state after $(( $(date +%s) - t0 )) s"
else
  host_check virsh-start-and-guest-poweroff 0 "virsh start failed"
fi
tr -d '\r' <"$work/console.log" 2>/dev/null | grep -E '^VGRACE-|Kernel panic' || true
tr -d '\r' <"$work/console.log" 2>/dev/null | grep -q '^VGRACE-RESULT PASS' || ok=0

if [ $ok = 1 ]; then
  echo "qemu-libvirt: 1 passed, 0 failed"
  exit 0
fi
log "FAILED; the domain XML, QEMU's log, libvirtd's log, the console and vgrace's log follow"
cat "$work/domain.xml"
for f in "$ROOT/var/log/libvirt/qemu/$NAME.log" "$work/libvirtd.log" "$work/console.log" "$work/vgrace.log"; do
  echo "--- $f"; tail -50 "$f" 2>/dev/null || true
done
echo "qemu-libvirt: 0 passed, 1 failed"
exit 1
