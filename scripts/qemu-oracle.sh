#!/usr/bin/env bash
# The real driver as the oracle: an arm64 `virt` L1 Grace host (QEMU from the arm64 setup's sid
# chroot, UEFI, TCG) boots the cached guest kernel (linux-source-7.2 with VFIO, no-IOMMU and
# NVGRACE_GPU_VFIO_PCI: scripts/guest/kernel-arm64.config) on a GPU that `vgrace serve --view
# host` serves, with the SSDT of `vgrace acpi` and the machine of `vgrace qemu-args --view host`.
# In the guest (guest/init-oracle) the real nvgrace_gpu_vfio_pci binds it, then an aarch64
# `vgrace transcript --vfio-device` and `vgrace check --vfio-device` run against the driver.
# On the host the same transcript runs against `vgrace serve --linux 7.2` (the VFIO view, same
# profile and memory size), and the two are diffed.
#   VGRACE_ORACLE_PROFILE  gh100 (default) | gb200 | gb200-cxl
#   VGRACE_ORACLE_CLIENT=0 skip the aarch64 vgrace (probe and bind only)
#   VGRACE_ORACLE_KERNEL   the guest kernel image (default: the cached 7.2 build)
#   VGRACE_ORACLE_LINUX    the version vgrace and `vgrace check` judge by (default 7.2; the older
#                          kernel's run, scripts/qemu-oracle-6.12.sh, uses 6.9)
# Exits 0 when the driver bound, the guest's checks (vgrace check --vfio-device included) passed,
# both transcripts were made and every line that differs is a known class
# (scripts/oracle/known-differences.txt, explained in DESIGN.md). The diff is printed and saved
# ($CACHE/oracle-<profile>.diff).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CACHE=${VGRACE_QEMU_ARM64_CACHE:-$HOME/.cache/vgrace-qemu-arm64}
ROOT=$CACHE/root
PROFILE=${VGRACE_ORACLE_PROFILE:-gh100}
LINUX=${VGRACE_ORACLE_LINUX:-7.2}
KERNEL=${VGRACE_ORACLE_KERNEL:-}
# Output files: oracle-<profile>-* for 7.2, oracle-<profile>-linux<version>-* otherwise.
NAME=$PROFILE
[ "$LINUX" = 7.2 ] || NAME=$PROFILE-linux$LINUX
MEM_SIZE=${VGRACE_ORACLE_MEM_SIZE:-2660M}
GUEST_MEM_MIB=512
TIMEOUT=${VGRACE_ORACLE_TIMEOUT:-600}
log() { printf '[qemu-oracle] %s\n' "$*" >&2; }

bash "$here/qemu-setup-arm64.sh"

log "building vgrace (release)"
(cd "$repo" && cargo build --release -q -p vgrace)
VGRACE=${CARGO_TARGET_DIR:-$repo/target}/release/vgrace
guest_vgrace=""
if [ "${VGRACE_ORACLE_CLIENT:-1}" = 1 ]; then
  log "building the aarch64 vgrace for the guest"
  guest_vgrace=$(bash "$here/qemu-oracle-build.sh")
fi

work=$CACHE/oracle-run
vg_pid=""; host_pid=""
cleanup() {
  for p in $vg_pid $host_pid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  for m in "$ROOT$work" "$ROOT/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
cleanup
mkdir -p "$work" "$ROOT$work"
mount --bind "$work" "$ROOT$work"
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"

case $PROFILE in
  gh100) profile=gh100; cxl="" ;;
  gb200) profile=gb200; cxl="" ;;
  gb200-cxl) profile=gb200; cxl="cxl = true" ;;
  *) log "unknown profile $PROFILE"; exit 2 ;;
esac
# virt's RAM starts at 1 GiB; the GPU's memory is the next NUMA node's RAM, right after ours.
mem_base=$(printf '0x%x' $(( 0x40000000 + GUEST_MEM_MIB * 1024 * 1024 )))
config=$work/host.toml
cat >"$config" <<TOML
[[device]]
socket = "$work/gpu0.sock"
profile = "$profile"
mem_size = "$MEM_SIZE"
mem_base = "$mem_base"
backing = "$work/gpu0.mem"
view = "host"
bar1_size = "1G"
$cxl
TOML

"$VGRACE" acpi --config "$config" -o "$work/ssdt.aml" >&2
json=$("$VGRACE" qemu-args --view host --config "$config" --guest-mem "${GUEST_MEM_MIB}M" --json)
"$VGRACE" qemu-args --view host --config "$config" --guest-mem "${GUEST_MEM_MIB}M" >"$work/qemu-args.txt"
mapfile -d '' l1_args < <(python3 -c '
import json, shlex, sys
for line in json.load(sys.stdin)["args"]:
    for word in shlex.split(line):
        sys.stdout.write(word + "\0")
' <<<"$json")
kernel_args=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["kernel_args"])' <<<"$json")
scope=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["gpus"][0]["acpi_scope"].split(".")[2])' <<<"$json")

# The initrd: the SSDT in an uncompressed cpio (the kernel's table upgrade looks there), then the
# gzip'd busybox initramfs with the oracle /init and the aarch64 vgrace.
initrd=$work/initrd
mkdir -p "$initrd/bin" "$initrd/proc" "$initrd/sys" "$initrd/dev" "$initrd/tmp" "$work/acpi/kernel/firmware/acpi"
cp "$CACHE/busybox" "$initrd/bin/busybox"
cp "$here/guest/init-oracle" "$initrd/init"
[ -z "$guest_vgrace" ] || cp "$guest_vgrace" "$initrd/bin/vgrace"
chmod +x "$initrd/init" "$initrd/bin/busybox"
cp "$work/ssdt.aml" "$work/acpi/kernel/firmware/acpi/ssdt.aml"
(cd "$work/acpi" && find kernel | cpio -o -H newc --quiet) >"$work/initrd.img"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >>"$work/initrd.img"
cp "${KERNEL:-$CACHE/Image}" "$work/Image"

RUST_LOG=${RUST_LOG:-info} "$VGRACE" serve --config "$config" >"$work/vgrace.log" 2>&1 &
vg_pid=$!
for _ in $(seq 100); do [ -S "$work/gpu0.sock" ] && break; sleep 0.1; done
[ -S "$work/gpu0.sock" ] || { log "vgrace did not start"; cat "$work/vgrace.log"; exit 1; }

append="console=ttyAMA0 loglevel=1 panic=-1 $kernel_args vgrace.scope=$scope vgrace.check_args=--linux,$LINUX"
log "booting the L1 Grace host (TCG): $PROFILE, $MEM_SIZE at $mem_base, ACPI scope ...$scope"
start=$(date +%s)
set +e
timeout "$TIMEOUT" chroot "$ROOT" qemu-system-aarch64 -nodefaults -display none -serial stdio \
  -accel tcg -smp 2 "${l1_args[@]}" \
  -kernel "$work/Image" -initrd "$work/initrd.img" -append "$append" -no-reboot \
  </dev/null >"$work/console.log" 2>&1
qemu_rc=$?
set -e
tr -d '\r' <"$work/console.log" >"$CACHE/oracle-$NAME-console.log"
console=$CACHE/oracle-$NAME-console.log
log "guest ran $(( $(date +%s) - start )) s (qemu exit $qemu_rc)"
kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null || true; vg_pid=""
grep -aE '^VGRACE-(CHECK|INFO|DMESG|RESULT)' "$console" || true

ok=1
grep -aq 'VGRACE-RESULT PASS' "$console" || ok=0
if [ -n "$guest_vgrace" ] && [ $ok = 1 ]; then
  sed -n 's/^VGRACE-T //p' "$console" >"$CACHE/oracle-$NAME-guest.txt"
  # The same transcript against vgrace's own VFIO view: same profile, memory and BAR1.
  host_args=(--socket "$work/vfio.sock" --profile "$profile" --mem-size "$MEM_SIZE" --mem-base "$mem_base" --bar1-size 1G --linux "$LINUX")
  [ -z "$cxl" ] || host_args+=(--cxl)
  "$VGRACE" serve "${host_args[@]}" >"$work/vfio.log" 2>&1 &
  host_pid=$!
  for _ in $(seq 100); do [ -S "$work/vfio.sock" ] && break; sleep 0.1; done
  "$VGRACE" transcript --socket "$work/vfio.sock" >"$CACHE/oracle-$NAME-host.txt"
  guest_lines=$(wc -l <"$CACHE/oracle-$NAME-guest.txt")
  host_lines=$(wc -l <"$CACHE/oracle-$NAME-host.txt")
  [ "$guest_lines" -gt 200 ] && [ "$host_lines" -gt 200 ] || {
    log "a transcript is incomplete: guest $guest_lines lines, host $host_lines"; ok=0; }
  if diff -u "$CACHE/oracle-$NAME-guest.txt" "$CACHE/oracle-$NAME-host.txt" >"$CACHE/oracle-$NAME.diff"; then
    log "transcripts identical ($host_lines operations)"
  else
    cat "$CACHE/oracle-$NAME.diff"
    log "transcript diff (- real driver, + vgrace): $(grep -c '^-[^-]' "$CACHE/oracle-$NAME.diff") of $host_lines lines differ"
    # Every differing line must be a known, explained class (scripts/oracle/known-differences.txt).
    unexplained=$(grep -E '^[-+][^-+]' "$CACHE/oracle-$NAME.diff" | cut -c2- \
      | grep -Ev -f <(grep -v '^#' "$here/oracle/known-differences.txt") || true)
    if [ -n "$unexplained" ]; then
      log "differences not explained in DESIGN.md (scripts/oracle/known-differences.txt):"
      printf '%s\n' "$unexplained" >&2
      ok=0
    else
      log "every difference is a known class (DESIGN.md, The real driver as the oracle)"
    fi
  fi
fi

if [ $qemu_rc -eq 0 ] && [ $ok = 1 ]; then
  echo "qemu-oracle ($NAME): 1 passed, 0 failed"
  exit 0
fi
log "FAILED (qemu exit $qemu_rc); arguments, console and vgrace log follow"
cat "$work/qemu-args.txt"
cat "$console"
cat "$work/vgrace.log"
echo "qemu-oracle ($NAME): 0 passed, 1 failed"
exit 1
