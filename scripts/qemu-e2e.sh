#!/usr/bin/env bash
# End-to-end test in a real guest: vgrace serves a gh100 (non-power-of-two memory, file backing),
# QEMU 11 (from a cached Debian sid chroot) boots a busybox guest under TCG with the device, the
# guest checks identity, BAR layout and memory semantics, and the host checks the backing file.
# Exits 0 only if every check passed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CACHE=${VGRACE_QEMU_CACHE:-$HOME/.cache/vgrace-qemu}
ROOT=$CACHE/root
log() { printf '[qemu-e2e] %s\n' "$*" >&2; }

bash "$here/qemu-setup.sh"

# A gh100 whose usemem (1.5 GiB) and resmem (1 GiB + 100 MiB) are both below their power-of-two
# BARs (2 GiB each), so both BARs have a tail that must read all ones.
MEM_SIZE=${VGRACE_E2E_MEM_SIZE:-$(( 2660 << 20 ))}
PRE_OFF=$(( 0x1000 )); PRE_VAL=0xc0ffee11
GW_OFF=$(( 0x2000 )); GW_VAL=0x5eed1234

log "building vgrace (release)"
(cd "$repo" && cargo build --release -q -p vgrace)
VGRACE=${CARGO_TARGET_DIR:-$repo/target}/release/vgrace

# The split, BAR sizes and file offsets as vgrace itself lays them out (`vgrace layout --json`),
# so this script cannot drift from the device model.
layout_json=$("$VGRACE" layout --profile gh100 --mem-size "$MEM_SIZE" --json)
layout_vals=$(python3 -c '
import json, sys
v = json.load(sys.stdin)
r = {x["kind"]: x for x in v["regions"]}
u, s = r["usemem"], r["resmem"]
print(v["device_id"], u["memlength"], u["bar_size"], u["fd_offset"], s["memlength"], s["bar_size"])
' <<<"$layout_json")
read -r DEVID USEMEM BAR4 USEMEM_FD RES BAR2 <<<"$layout_vals"

work=$ROOT/tmp/vgrace-e2e
vg_pid=""
cleanup() {
  [ -n "$vg_pid" ] && kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null || true
  for m in "$ROOT/proc" "$ROOT/dev"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work" && mkdir -p "$work"
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"

# Guest initramfs: busybox and our /init.
initrd=$work/initrd
mkdir -p "$initrd/bin" "$initrd/proc" "$initrd/sys" "$initrd/dev" "$initrd/tmp"
cp "$CACHE/busybox" "$initrd/bin/busybox"
cp "$here/guest/init" "$initrd/init"
chmod +x "$initrd/init" "$initrd/bin/busybox"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
cp "$CACHE/vmlinuz" "$work/vmlinuz"

# The backing file, with a value the guest must find in usemem (at its file offset).
backing=$work/gpu.mem
truncate -s $MEM_SIZE "$backing"
printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(( PRE_VAL & 0xff )) $(( (PRE_VAL >> 8) & 0xff )) $(( (PRE_VAL >> 16) & 0xff )) $(( (PRE_VAL >> 24) & 0xff )))" |
  dd of="$backing" bs=1 seek=$(( USEMEM_FD + PRE_OFF )) conv=notrunc status=none

RUST_LOG=${RUST_LOG:-info} "$VGRACE" serve --socket "$work/gpu.sock" --profile gh100 \
  --mem-size $MEM_SIZE --backing "$backing" >"$work/vgrace.log" 2>&1 &
vg_pid=$!
for _ in $(seq 100); do [ -S "$work/gpu.sock" ] && break; sleep 0.1; done
[ -S "$work/gpu.sock" ] || { log "vgrace did not start"; cat "$work/vgrace.log"; exit 1; }

append="console=ttyS0 panic=-1 quiet vgrace.devid=$(printf 0x%x "$DEVID") vgrace.bar2=$BAR2 vgrace.bar4=$BAR4 vgrace.mem2=$RES vgrace.mem4=$USEMEM vgrace.preoff=$PRE_OFF vgrace.preval=$PRE_VAL vgrace.gwoff=$GW_OFF vgrace.gwval=$GW_VAL"
log "booting the guest (TCG)"
set +e
timeout 300 chroot "$ROOT" qemu-system-x86_64 -nodefaults -display none -serial stdio \
  -accel tcg,thread=multi -smp 2 -m 512 \
  -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \
  -kernel /tmp/vgrace-e2e/vmlinuz -initrd /tmp/vgrace-e2e/initrd.gz -append "$append" -no-reboot \
  -device '{"driver":"vfio-user-pci","socket":{"path":"/tmp/vgrace-e2e/gpu.sock","type":"unix"}}' \
  </dev/null >"$work/console.log" 2>&1
qemu_rc=$?
set -e
tr -d '\r' <"$work/console.log" | grep -E 'VGRACE-|vfio|error|Kernel panic' || true

host_ok=1
got=$(od -An -tx4 -j $(( USEMEM_FD + GW_OFF )) -N4 "$backing" | tr -d ' ')
if [ "$(printf '%08x' $(( 0x$got )))" = "$(printf '%08x' $(( GW_VAL )))" ]; then
  echo "VGRACE-HOST guest-write-in-backing-file PASS 0x$got at file offset $(printf '0x%x' $(( USEMEM_FD + GW_OFF )))"
else
  echo "VGRACE-HOST guest-write-in-backing-file FAIL 0x$got at file offset $(printf '0x%x' $(( USEMEM_FD + GW_OFF ))), expected $GW_VAL"
  host_ok=0
fi

if [ $qemu_rc -eq 0 ] && [ $host_ok = 1 ] && grep -q 'VGRACE-RESULT PASS' "$work/console.log"; then
  echo "qemu-e2e: 1 passed, 0 failed"
  exit 0
fi
log "FAILED (qemu exit $qemu_rc); full console and vgrace log follow"
cat "$work/console.log"
cat "$work/vgrace.log"
echo "qemu-e2e: 0 passed, 1 failed"
exit 1
