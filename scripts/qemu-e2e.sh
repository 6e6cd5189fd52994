#!/usr/bin/env bash
# End-to-end test in a real guest: vgrace serves a device, QEMU 11 (from a cached Debian sid
# chroot) boots a busybox guest under TCG with it, the guest checks identity, BAR layout and memory
# semantics, and the host checks the backing file. Exits 0 only if every check passed.
#
# VGRACE_E2E_PROFILE picks the case:
#   gh100    (default) non-power-of-two memory, file backing: resmem at BAR2, usemem at BAR4
#   gb200    Blackwell: all memory is usemem at BAR4, the real BAR1 at region 2 (BAR2),
#            VGRACE_E2E_BAR1_SIZE (default 256M, small so that the guest's aperture has room)
#   linkdown the C2C link is down (memory size 0): a plain vfio-pci function, BAR0 only
# VGRACE_E2E_MEM_SIZE sets the memory size (gh100, gb200; default 2660 MiB). VGRACE_E2E_KEEP=1
# keeps the work directory (console, vgrace log) in the chroot's /tmp/vgrace-e2e;
# VGRACE_E2E_QEMU_ARGS adds QEMU arguments (split at blanks), e.g. "-trace vfio_user_*".
#
# gh100 adds a live phase (VGRACE_E2E_LIVE=0 skips it): vgrace serves a control socket too, and
# after its checks the guest (scripts/guest/live) asks the host for one change at a time with a
# "VGRACE-SYNC <step>?" line on the console; the host, watching the console, changes the running
# device with `vgrace ctl` and pokes the step's token into a mailbox word in BAR4, which the guest
# polls. Steps: link-down (ctl fault link-down: BAR0+0x1498 must not read 0xff), link-up (ctl
# fault --clear: 0xff again), poke (ctl poke a value at the BAR4 offset the guest names: the guest
# reads it). The host checks with `ctl peek` what the guest wrote and with `ctl stats` that the
# guest's BAR0 readiness read was one vfio-user REGION_READ (its page is not mapped) while polling BAR4 (mmap)
# sent none. Every wait is bounded (VGRACE_E2E_WAIT seconds per step, default 120).
# VGRACE_E2E_REPLY_DELAY=1 (with the live phase) ends it with the reply-delay probe: vgrace delays
# its next reply by 6 s, past QEMU's x-msg-timeout (5 s), while the guest reads BAR0; see
# README's "Fault injection" for what happens.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/qemu-lib.sh"
CASE=${VGRACE_E2E_PROFILE:-gh100}
log() { printf '[qemu-e2e] %s\n' "$*" >&2; }

# A gh100 whose usemem (1.5 GiB) and resmem (1 GiB + 100 MiB) are both below their power-of-two
# BARs (2 GiB each), so both BARs have a tail that must read all ones. On gb200 the same size is
# all usemem (2660 MiB in a 4 GiB BAR4: a tail too).
MEM_SIZE=${VGRACE_E2E_MEM_SIZE:-$(( 2660 << 20 ))}
BAR1_SIZE=${VGRACE_E2E_BAR1_SIZE:-256M}
# BAR0 is 16 MiB on every profile (vgrace-device's BAR0_SIZE; `vgrace layout` does not print it).
BAR0_SIZE=$(( 16 << 20 ))
case $CASE in
  gh100) profile_args=(--profile gh100 --mem-size "$MEM_SIZE") ;;
  gb200) profile_args=(--profile gb200 --mem-size "$MEM_SIZE" --bar1-size "$BAR1_SIZE") ;;
  linkdown) profile_args=(--profile gh100 --mem-size 0) ;;
  *) log "unknown VGRACE_E2E_PROFILE '$CASE' (gh100, gb200 or linkdown)"; exit 2 ;;
esac
log "case $CASE"

bash "$here/qemu-setup.sh"

PRE_OFF=$(( 0x1000 )); PRE_VAL=0xc0ffee11
GW_OFF=$(( 0x2000 )); GW_VAL=0x5eed1234
B1_VAL=0xb1a55e7e
# The live phase: the BAR4 mailbox the guest polls, the value the host pokes, the wait per step.
LIVE=0; [ "$CASE" = gh100 ] && LIVE=${VGRACE_E2E_LIVE:-1}
REPLY_DELAY=${VGRACE_E2E_REPLY_DELAY:-0}; [ "$LIVE" = 1 ] || REPLY_DELAY=0
MBOX_OFF=$(( 0x3000 )); POKE_VAL=0x9a7ec0de
WAIT=${VGRACE_E2E_WAIT:-120}

log "building vgrace (release)"
qemu_build_vgrace

# The split, BAR sizes and file offsets as vgrace itself lays them out (`vgrace layout --json`),
# so this script cannot drift from the device model. A BAR the layout does not have is size 0.
layout_json=$("$VGRACE" layout "${profile_args[@]}" --json)
layout_vals=$(python3 -c '
import json, sys
v = json.load(sys.stdin)
r = {x["kind"]: x for x in v["regions"]}
none = {"memlength": 0, "bar_size": 0, "fd_offset": 0}
u, s = r.get("usemem", none), r.get("resmem", none)
print(v["device_id"], u["memlength"], u["bar_size"], u["fd_offset"], s["memlength"], s["bar_size"],
      v.get("bar1_size") or 0, v.get("core_only") or "-")
' <<<"$layout_json")
read -r DEVID USEMEM BAR4 USEMEM_FD RES BAR2 BAR1 CORE_ONLY <<<"$layout_vals"
# The layout must be the case's shape, or the guest would check the wrong thing.
case $CASE in
  gh100) shape_ok=$([ "$CORE_ONLY" = - ] && [ "$BAR2" -gt 0 ] && [ "$BAR4" -gt 0 ] && [ "$BAR1" = 0 ] && echo 1 || echo 0) ;;
  gb200) shape_ok=$([ "$CORE_ONLY" = - ] && [ "$BAR2" = 0 ] && [ "$BAR4" -gt 0 ] && [ "$BAR1" -gt 0 ] && echo 1 || echo 0) ;;
  linkdown) shape_ok=$([ "$CORE_ONLY" = link-down ] && [ "$BAR2" = 0 ] && [ "$BAR4" = 0 ] && [ "$BAR1" = 0 ] && echo 1 || echo 0) ;;
esac
[ "$shape_ok" = 1 ] || { log "vgrace layout is not a $CASE shape:"; echo "$layout_json" >&2; exit 1; }

work=$ROOT/tmp/vgrace-e2e
trap 'qemu_cleanup "${VGRACE_E2E_KEEP:-}"' EXIT
rm -rf "$work" && mkdir -p "$work"
qemu_mount_chroot

# Guest initramfs: busybox and our /init.
qemu_make_guest "$work"

# With memory: a backing file, with a value the guest must find in usemem (at its file offset).
# Link down has no memory region, so nothing to back and nothing to check on the host.
backing=""
serve_args=("${profile_args[@]}")
if [ "$USEMEM" -gt 0 ]; then
  backing=$work/gpu.mem
  truncate -s $MEM_SIZE "$backing"
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(( PRE_VAL & 0xff )) $(( (PRE_VAL >> 8) & 0xff )) $(( (PRE_VAL >> 16) & 0xff )) $(( (PRE_VAL >> 24) & 0xff )))" |
    dd of="$backing" bs=1 seek=$(( USEMEM_FD + PRE_OFF )) conv=notrunc status=none
  serve_args+=(--backing "$backing")
fi

RUST_LOG=${RUST_LOG:-info} "$VGRACE" serve --socket "$work/gpu.sock" --control "$work/ctl.sock" \
  --trace "$work/gpu.trace" "${serve_args[@]}" >"$work/vgrace.log" 2>&1 &
vg_pid=$!
for _ in $(seq 100); do [ -S "$work/gpu.sock" ] && break; sleep 0.1; done
[ -S "$work/gpu.sock" ] || { log "vgrace did not start"; cat "$work/vgrace.log"; exit 1; }

# The expectations go to the guest's /init on the kernel command line (it reads /proc/cmdline).
# A BAR size of 0 means the BAR must be absent.
append="console=ttyS0 panic=-1 quiet vgrace.case=$CASE vgrace.devid=$(printf 0x%x "$DEVID")"
case $CASE in
  gh100) append+=" vgrace.bar2=$BAR2 vgrace.bar4=$BAR4 vgrace.mem2=$RES vgrace.mem4=$USEMEM" ;;
  # BAR2 is BAR1: ordinary memory over the whole BAR (memory = size, no tail).
  gb200) append+=" vgrace.bar0=$BAR0_SIZE vgrace.bar1=$BAR1 vgrace.bar2=$BAR1 vgrace.bar4=$BAR4 vgrace.mem2=$BAR1 vgrace.mem4=$USEMEM vgrace.b1val=$B1_VAL" ;;
  linkdown) append+=" vgrace.bar0=$BAR0_SIZE vgrace.bar2=0 vgrace.bar4=0" ;;
esac
if [ "$USEMEM" -gt 0 ]; then
  append+=" vgrace.preoff=$PRE_OFF vgrace.preval=$PRE_VAL vgrace.gwoff=$GW_OFF vgrace.gwval=$GW_VAL"
fi
if [ "$LIVE" = 1 ]; then
  append+=" vgrace.live=1 vgrace.mbox=$MBOX_OFF vgrace.pokeval=$POKE_VAL vgrace.wait=$WAIT vgrace.delay=$REPLY_DELAY"
fi
# No 64-bit hole options are needed: the guest firmware puts the 64-bit BARs in a window above
# RAM sized from the CPU's physical address bits, which fits even the default 128 GiB BAR1 (a BAR
# that does not fit is left unassigned, start 0, and the guest reports it as a FAIL).
log "booting the guest (TCG)$([ "$LIVE" = 1 ] && echo ", then the live phase")"
t_boot=$(date +%s)
# In the background, so that the host can drive the live phase; $qemu_pid is the subshell (its
# status is QEMU's), $work/qemu.pid the `timeout` that runs QEMU.
(
  timeout 300 chroot "$ROOT" qemu-system-x86_64 -nodefaults -display none -serial stdio \
    -accel tcg,thread=multi -smp 2 -m 512 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \
    -kernel /tmp/vgrace-e2e/vmlinuz -initrd /tmp/vgrace-e2e/initrd.gz -append "$append" -no-reboot \
    -device '{"driver":"vfio-user-pci","socket":{"path":"/tmp/vgrace-e2e/gpu.sock","type":"unix"}}' \
    ${VGRACE_E2E_QEMU_ARGS:-} </dev/null >"$work/console.log" 2>&1 &
  echo $! >"$work/qemu.pid"
  wait $!
) &
qemu_pid=$!

host_ok=1
host_check() { # name ok detail
  if [ "$2" = 1 ]; then echo "VGRACE-HOST $1 PASS $3"; else echo "VGRACE-HOST $1 FAIL $3"; host_ok=0; fi
}
[ "$LIVE" = 1 ] && . "$here/qemu-e2e-live.sh"

# QEMU ends when the guest powers off (or `timeout` stops it).
wait "$qemu_pid" && qemu_rc=0 || qemu_rc=$?
qemu_pid=""
t_end=$(date +%s)
tr -d '\r' <"$work/console.log" | grep -E 'VGRACE-|vfio|error|Kernel panic|^qemu-system' || true
log "guest run $(( t_end - t_boot )) s"
[ "$REPLY_DELAY" = 1 ] && reply_delay_host_checks

# The protocol trace (`serve --trace`): QEMU's realize sequence, as `vgrace trace --list` lists
# it, and the summary. The trace is written behind the device: wait for QEMU's disconnect in it.
for _ in $(seq 50); do grep -q '"event":"disconnected"' "$work/gpu.trace" 2>/dev/null && break; sleep 0.1; done
"$VGRACE" trace "$work/gpu.trace" --list >"$work/trace.list" 2>&1 || true
realize=$(python3 - "$work/trace.list" <<'PY'
import re, sys
# The first 40 messages QEMU sent ("->" lines): command, and the region of a region access.
msgs = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*[\d.]+ -> (\S+)\s+#\d+\s*(.*)", line)
    if m:
        region = re.search(r"region=(\d+)", m.group(2))
        msgs.append(m.group(1) + (f" region={region.group(1)}" if region and m.group(1).startswith("REGION_") else ""))
    if len(msgs) == 40:
        break
def first(name):
    return next((i for i, x in enumerate(msgs) if x == name or (name.endswith("*") and x.startswith(name[:-1]))), None)
steps = ["VERSION", "DEVICE_GET_INFO", "DEVICE_GET_REGION_INFO*", "REGION_READ region=7"]
at = [first(x) for x in steps]
ok = None not in at and at == sorted(at) and at[0] == 0
# Runs of one command, "DEVICE_GET_REGION_INFO x9".
runs = []
for x in msgs[:24]:
    if runs and runs[-1][0] == x: runs[-1][1] += 1
    else: runs.append([x, 1])
print(int(ok), ", ".join(n if c == 1 else f"{n} x{c}" for n, c in runs) + ", ...")
PY
) || realize="0 (the trace could not be read)"
host_check trace-realize-sequence "${realize%% *}" "first messages: ${realize#* }"
"$VGRACE" trace "$work/gpu.trace" 2>&1 | sed 's/^/[qemu-e2e]   trace: /' >&2 || host_check trace-summary 0 "vgrace trace failed"
[ "$LIVE" = 1 ] && live_trace_checks "$work/trace.list"

if [ -n "$backing" ]; then
  got=$(od -An -tx4 -j $(( USEMEM_FD + GW_OFF )) -N4 "$backing" | tr -d ' ')
  if [ "$(printf '%08x' $(( 0x$got )))" = "$(printf '%08x' $(( GW_VAL )))" ]; then
    echo "VGRACE-HOST guest-write-in-backing-file PASS 0x$got at file offset $(printf '0x%x' $(( USEMEM_FD + GW_OFF )))"
  else
    echo "VGRACE-HOST guest-write-in-backing-file FAIL 0x$got at file offset $(printf '0x%x' $(( USEMEM_FD + GW_OFF ))), expected $GW_VAL"
    host_ok=0
  fi
fi

# QEMU left the device as it does on its way out (memory decode off in `vfio_pci_pre_reset`,
# then a reset). The next client gets a freshly opened device (`vfio_pci_core_enable`), so the
# conformance client passes against the same server, without a restart. (It writes memory, so
# it runs after the backing file check.)
if "$VGRACE" check --socket "$work/gpu.sock" >"$work/check.log" 2>&1; then
  host_check check-after-qemu 1 "$(grep -c '^PASS' "$work/check.log") rules passed against the device QEMU left behind"
else
  host_check check-after-qemu 0 "$(grep '^FAIL' "$work/check.log" | head -3 | tr -s ' ' | tr '\n' ';')"
  cat "$work/check.log" >&2
fi

if [ $qemu_rc -eq 0 ] && [ $host_ok = 1 ] && grep -q 'VGRACE-RESULT PASS' "$work/console.log"; then
  echo "qemu-e2e: 1 passed, 0 failed"
  exit 0
fi
log "$CASE FAILED (qemu exit $qemu_rc); full console and vgrace log follow"
cat "$work/console.log"
cat "$work/vgrace.log"
echo "qemu-e2e: 0 passed, 1 failed"
exit 1
