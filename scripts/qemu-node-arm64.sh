#!/usr/bin/env bash
# A whole Grace node in an arm64 `virt` guest: one `vgrace serve --config` serves four 480 GiB
# GPUs (memfd, sparse), QEMU (qemu-system-aarch64 from the cached Debian sid chroot of
# qemu-setup-arm64.sh) boots a busybox guest under TCG with exactly the arguments
# `vgrace qemu-args --config ... --machine virt` prints, plus generic boot arguments only. The
# guest (guest/init-node) checks each GPU alone at 00.0 behind a root port, every BAR assigned,
# BAR4 memory through each GPU, the SRAT's generic initiators and the kernel's NUMA view.
# Exits 0 only if every check passed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CACHE=${VGRACE_QEMU_ARM64_CACHE:-$HOME/.cache/vgrace-qemu-arm64}
ROOT=$CACHE/root
GPUS=4
MEM_SIZE=480G
GUEST_MEM=${VGRACE_NODE_GUEST_MEM:-2G}
TIMEOUT=${VGRACE_NODE_TIMEOUT:-900}
log() { printf '[qemu-node-arm64] %s\n' "$*" >&2; }

bash "$here/qemu-setup-arm64.sh"

log "building vgrace (release)"
(cd "$repo" && cargo build --release -q -p vgrace)
VGRACE=${CARGO_TARGET_DIR:-$repo/target}/release/vgrace

# The work directory is bind-mounted at the same path inside the chroot, so that the socket paths
# in the config are the ones both `vgrace serve` (on the host) and QEMU (in the chroot) see, and
# the arguments `vgrace qemu-args` prints are used as they are.
work=$CACHE/run
vg_pid=""
cleanup() {
  [ -n "$vg_pid" ] && kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null || true
  for m in "$ROOT$work" "$ROOT/proc" "$ROOT/dev"; do
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

config=$work/node.toml
: >"$config"
for i in $(seq 0 $((GPUS - 1))); do
  printf '[[device]]\nsocket = "%s/gpu%d.sock"\nprofile = "gh100"\nmem_size = "%s"\nbacking = "memfd"\n\n' \
    "$work" "$i" "$MEM_SIZE" >>"$config"
done

# What the guest must find, from vgrace itself.
json=$("$VGRACE" qemu-args --config "$config" --machine virt --guest-mem "$GUEST_MEM" --json)
echo "$json" >"$work/qemu-args.json"
"$VGRACE" qemu-args --config "$config" --machine virt --guest-mem "$GUEST_MEM" >"$work/qemu-args.txt"
expect=$(python3 -c '
import json, sys
n = json.load(sys.stdin)["node"]
g = n["gpus"]
bars = {b: s for b, s in g[0]["bars"]}
per = g[0]["numa_nodes"][1] - g[0]["numa_nodes"][0] + 1
print(len(g), per, "0x" + g[0]["device"].split(":")[1], bars[2], bars[4])
' <<<"$json")
read -r N_GPUS PER_GPU DEVID BAR2 BAR4 <<<"$expect"
# --json gives the argv tokens as QEMU gets them (the device JSON is one token).
mapfile -d '' node_args < <(python3 -c '
import json, sys
for word in json.load(sys.stdin)["args"]:
    sys.stdout.write(word + "\0")
' <<<"$json")

# Guest initramfs: arm64 busybox and the node /init.
initrd=$work/initrd
mkdir -p "$initrd/bin" "$initrd/proc" "$initrd/sys" "$initrd/dev" "$initrd/tmp"
cp "$CACHE/busybox" "$initrd/bin/busybox"
cp "$here/guest/init-node" "$initrd/init"
chmod +x "$initrd/init" "$initrd/bin/busybox"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
cp "$CACHE/Image" "$work/Image"

RUST_LOG=${RUST_LOG:-info} "$VGRACE" serve --config "$config" >"$work/vgrace.log" 2>&1 &
vg_pid=$!
for _ in $(seq 100); do
  up=0; for i in $(seq 0 $((GPUS - 1))); do [ -S "$work/gpu$i.sock" ] && up=$((up + 1)); done
  [ $up = $GPUS ] && break; sleep 0.1
done
[ $up = $GPUS ] || { log "vgrace did not start"; cat "$work/vgrace.log"; exit 1; }

append="console=ttyAMA0 panic=-1 vgrace.gpus=$N_GPUS vgrace.pergpu=$PER_GPU vgrace.devid=$DEVID vgrace.bar2=$BAR2 vgrace.bar4=$BAR4"
log "booting the arm64 virt guest (TCG): $N_GPUS x $MEM_SIZE GPUs, $(( N_GPUS * PER_GPU + 1 )) NUMA nodes"
start=$(date +%s)
set +e
timeout "$TIMEOUT" chroot "$ROOT" qemu-system-aarch64 -nodefaults -display none -serial stdio \
  -accel tcg -smp 2 \
  "${node_args[@]}" \
  -kernel "$work/Image" -initrd "$work/initrd.gz" -append "$append" -no-reboot \
  </dev/null >"$work/console.log" 2>&1
qemu_rc=$?
set -e
# The whole console outlives the run directory, for a look after a pass too.
tr -d '\r' <"$work/console.log" >"$CACHE/last-console.log"
log "guest ran $(( $(date +%s) - start )) s (qemu exit $qemu_rc)"
tr -d '\r' <"$work/console.log" | grep -aE 'VGRACE-|vfio|error|Kernel panic' || true

if [ $qemu_rc -eq 0 ] && grep -aq 'VGRACE-RESULT PASS' "$work/console.log" \
  && ! grep -aq 'VGRACE-CHECK .* FAIL' "$work/console.log"; then
  echo "qemu-node-arm64: 1 passed, 0 failed"
  exit 0
fi
log "FAILED (qemu exit $qemu_rc); arguments, full console and vgrace log follow"
cat "$work/qemu-args.txt"
tr -d '\r' <"$work/console.log"
cat "$work/vgrace.log"
echo "qemu-node-arm64: 0 passed, 1 failed"
exit 1
