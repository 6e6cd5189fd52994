# Helpers for a bash guest run that is not on the Rust harness yet (the QEMU guest tests are
# crates/vgrace/tests/qemu_*.rs on test-support's `qemu` module, launched by qemu-run.sh); sourced,
# not run.
# Expects $here (the scripts directory) and $repo to be set, and `set -euo pipefail`.
CACHE=${VGRACE_QEMU_CACHE:-$HOME/.cache/vgrace-qemu}
ROOT=$CACHE/root

# Builds vgrace (release) and sets $VGRACE to the binary.
qemu_build_vgrace() {
  (cd "$repo" && cargo build --release -q -p vgrace)
  VGRACE=${CARGO_TARGET_DIR:-$repo/target}/release/vgrace
}

# Mounts /proc and /dev in the chroot (QEMU needs both); qemu_umount_chroot undoes only what
# this process mounted, so a concurrent run keeps its mounts.
qemu_mounted=()
qemu_mount_chroot() {
  if ! mountpoint -q "$ROOT/proc"; then mount -t proc proc "$ROOT/proc"; qemu_mounted+=("$ROOT/proc"); fi
  if ! mountpoint -q "$ROOT/dev"; then mount --bind /dev "$ROOT/dev"; qemu_mounted+=("$ROOT/dev"); fi
}
qemu_umount_chroot() {
  local m
  for m in "${qemu_mounted[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true; done
  qemu_mounted=()
}

# The guest's busybox initramfs with scripts/guest/* at its root (/init first) and the cached
# kernel, as $1/initrd.gz and $1/vmlinuz.
qemu_make_guest() {
  local work=$1 initrd=$1/initrd
  mkdir -p "$initrd/bin" "$initrd/proc" "$initrd/sys" "$initrd/dev" "$initrd/tmp"
  cp "$CACHE/busybox" "$initrd/bin/busybox"
  cp "$here"/guest/* "$initrd/"
  chmod +x "$initrd/init" "$initrd/bin/busybox"
  (cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
  cp "$CACHE/vmlinuz" "$work/vmlinuz"
}

# A guest run's processes: $qemu_pid is the `timeout` that runs QEMU (QEMU writes its own pid to
# $work/qemu.pid), $vg_pid the vgrace server.
qemu_pid=""; vg_pid=""

# Stops QEMU (if running) through the `timeout` that runs it (it passes the signal on).
qemu_stop() {
  [ -n "$qemu_pid" ] || return 0
  kill -0 "$qemu_pid" 2>/dev/null && [ -s "$work/qemu.pid" ] && kill "$(cat "$work/qemu.pid")" 2>/dev/null
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=""
}

# The EXIT trap of a guest run: QEMU, the server, this run's chroot mounts, and $work unless $1
# (the script's "keep" setting) is non-empty.
qemu_cleanup() {
  qemu_stop
  [ -n "$vg_pid" ] && kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null || true
  qemu_umount_chroot
  [ -n "${1:-}" ] || rm -rf "$work"
}
