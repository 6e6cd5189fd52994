#!/usr/bin/env bash
# README's copy-paste run, in a real guest: `vgrace serve` with README's flags, QEMU with exactly
# what README's `vgrace qemu-args` prints, and a busybox guest that runs pciutils' `lspci -v` on
# the GPU. The guest's lines must be README's block whose marker begins `<!-- output(captured):
# the guest of scripts/qemu-readme.sh`; a difference is printed as a diff and fails the run.
# VGRACE_BLESS_DOCS=1 writes the guest's lines into README instead. VGRACE_README_KEEP=1 keeps
# the work directory (console, vgrace log) in the chroot's /tmp/vgrace-readme.
#
# Needs what scripts/qemu-e2e.sh needs (root, apt, a Debian mirror; the cached chroot under
# ~/.cache/vgrace-qemu) and the host's pciutils (installed when missing): its lspci, libraries and
# pci.ids go into the guest's initramfs, so the names are the host's pci.ids.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/qemu-lib.sh"
log() { printf '[qemu-readme] %s\n' "$*" >&2; }
readme=$repo/README.md
marker='<!-- output(captured): the guest of scripts/qemu-readme.sh'

# README's flags: the socket as the guest's QEMU (in the chroot) sees it.
SOCK=/tmp/vgrace/gpu0.sock
DEVICE_FLAGS=(--mem-size 2G)
QEMU_FLAGS=(--machine q35 --guest-mem 1G)

bash "$here/qemu-setup.sh"
command -v lspci >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends pciutils >/dev/null; }
log "building vgrace (release)"
qemu_build_vgrace

work=$ROOT/tmp/vgrace-readme
trap 'qemu_cleanup "${VGRACE_README_KEEP:-}"; rm -rf "$ROOT$(dirname "$SOCK")"' EXIT
rm -rf "$work" && mkdir -p "$work"
qemu_mount_chroot

# The guest: busybox, lspci with the libraries it links and pci.ids, and an /init that lists the
# GPU between two markers and powers off.
initrd=$work/initrd
mkdir -p "$initrd/bin" "$initrd/proc" "$initrd/sys" "$initrd/dev" "$initrd/usr/share/misc"
cp "$CACHE/busybox" "$initrd/bin/busybox"
lspci_bin=$(command -v lspci)
cp "$lspci_bin" "$initrd/bin/lspci"
for lib in $(ldd "$lspci_bin" | grep -o '/[^ ]*'); do
  mkdir -p "$initrd$(dirname "$lib")" && cp -L "$lib" "$initrd$lib"
done
cp -L /usr/share/misc/pci.ids "$initrd/usr/share/misc/pci.ids"
cat >"$initrd/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo VGRACE-LSPCI-BEGIN
# Without the host's kernel modules lspci -v warns once on stderr (libkmod); the lines are stdout.
lspci -v -d 10de: 2>/dev/null
echo VGRACE-LSPCI-END
poweroff -f
EOF
chmod +x "$initrd/init" "$initrd/bin/busybox"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
cp "$CACHE/vmlinuz" "$work/vmlinuz"

# README's `vgrace serve` (its socket inside the chroot).
mkdir -p "$ROOT$(dirname "$SOCK")"
"$VGRACE" serve --socket "$ROOT$SOCK" "${DEVICE_FLAGS[@]}" >"$work/vgrace.log" 2>&1 &
vg_pid=$!
for _ in $(seq 100); do [ -S "$ROOT$SOCK" ] && break; sleep 0.1; done
[ -S "$ROOT$SOCK" ] || { log "vgrace did not start"; cat "$work/vgrace.log"; exit 1; }

# README's QEMU command: what `vgrace qemu-args` prints (comments dropped, each line shell words),
# then the direct kernel boot.
args=$("$VGRACE" qemu-args --socket "$SOCK" "${DEVICE_FLAGS[@]}" "${QEMU_FLAGS[@]}" | grep -v '^#' | tr '\n' ' ')
log "booting the guest (TCG): qemu-system-x86_64 $args"
(
  eval "timeout 300 chroot \"\$ROOT\" qemu-system-x86_64 $args -accel tcg -nographic \
    -kernel /tmp/vgrace-readme/vmlinuz -initrd /tmp/vgrace-readme/initrd.gz \
    -append 'console=ttyS0 quiet panic=-1' -no-reboot" </dev/null >"$work/console.log" 2>&1 &
  echo $! >"$work/qemu.pid"
  wait $!
) &
qemu_pid=$!
wait "$qemu_pid" && qemu_rc=0 || qemu_rc=$?
qemu_pid=""

got=$(tr -d '\r' <"$work/console.log" | sed -n '/VGRACE-LSPCI-BEGIN$/,/^VGRACE-LSPCI-END$/p' | sed '1d;$d')
if [ $qemu_rc -ne 0 ] || [ -z "$got" ]; then
  log "the guest did not list the GPU (QEMU exit $qemu_rc); console and vgrace log follow"
  cat "$work/console.log" "$work/vgrace.log"
  exit 1
fi
printf '%s\n' "$got"

# README's block: the fenced lines after the marker.
want=$(awk -v m="$marker" 'index($0, m) == 1 { on = 1; next } on && /^```/ { if (in_block) exit; in_block = 1; next } in_block' "$readme")
if [ "$got" = "$want" ]; then
  log "README's guest block is what the guest printed"
  exit 0
fi
if [ "${VGRACE_BLESS_DOCS:-}" = 1 ]; then
  printf '%s\n' "$got" >"$work/got"
  awk -v m="$marker" -v f="$work/got" '
    index($0, m) == 1 { print; on = 1; next }
    on == 1 && /^```/ { print; while ((getline l < f) > 0) print l; on = 2; next }
    on == 2 && /^```/ { print; on = 0; next }
    on == 2 { next }
    { print }' "$readme" >"$work/readme" && cp "$work/readme" "$readme"
  log "README's guest block rewritten"
  exit 0
fi
log "README's guest block differs from what the guest printed (- README, + guest);"
log "refresh it with VGRACE_BLESS_DOCS=1 bash scripts/qemu-readme.sh"
diff <(printf '%s\n' "$want") <(printf '%s\n' "$got") || true
exit 1
