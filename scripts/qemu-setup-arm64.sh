#!/usr/bin/env bash
# Builds (once) the cached environment for the arm64 node test (scripts/qemu-node-arm64.sh): a
# Debian sid chroot with qemu-system-aarch64 (which has the vfio-user-pci client) and UEFI
# (qemu-efi-aarch64), an arm64 busybox, and a small arm64 guest kernel built from Debian's
# linux-source with CONFIG_NODES_SHIFT=6 (every Debian arm64 kernel has 4: 16 NUMA nodes, and a
# node of four GPUs needs 33). Idempotent: each finished step leaves a stamp, a half-made step is
# redone. Its own cache (not qemu-setup.sh's): VGRACE_QEMU_ARM64_CACHE.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
CACHE=${VGRACE_QEMU_ARM64_CACHE:-$HOME/.cache/vgrace-qemu-arm64}
ROOT=$CACHE/root
JOBS=${VGRACE_KERNEL_JOBS:-2}
NODES_SHIFT=6
here=$(cd "$(dirname "$0")" && pwd)
log() { printf '[qemu-setup-arm64] %s\n' "$*" >&2; }

. "$here/qemu-setup-lib.sh"
setup_private_mounts "$@"

# Host tools: the chroot, the initramfs, and the cross build of the guest kernel.
setup_host_packages debootstrap cpio gzip zstd xz-utils python3 make bc bison flex libssl-dev \
  libelf-dev gcc gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu
setup_sid_chroot

if [ ! -f "$CACHE/.qemu-done" ]; then
  log "installing qemu-system-arm and qemu-efi-aarch64 in the chroot"
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99no-valid-until"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  # arm64 as a foreign architecture, for busybox-static:arm64 below.
  chroot "$ROOT" dpkg --add-architecture arm64
  chroot "$ROOT" apt-get update -qq
  chroot "$ROOT" apt-get install -y -qq --no-install-recommends qemu-system-arm qemu-efi-aarch64 >/dev/null
  chroot "$ROOT" qemu-system-aarch64 -device help 2>/dev/null | grep -q vfio-user-pci || {
    log "the chroot's qemu-system-aarch64 has no vfio-user-pci"; exit 1; }
  [ -f "$ROOT/usr/share/qemu-efi-aarch64/QEMU_EFI.fd" ] || {
    log "no /usr/share/qemu-efi-aarch64/QEMU_EFI.fd in the chroot"; exit 1; }
  touch "$CACHE/.qemu-done"
fi

if [ ! -f "$CACHE/.busybox-done" ]; then
  log "fetching busybox-static:arm64"
  setup_unpack_debs busybox-static:arm64
  setup_copy_busybox
  rm -rf "$CACHE/x"
  touch "$CACHE/.busybox-done"
fi

# The guest kernel: allnoconfig plus exactly what the tests need (guest/kernel-arm64.config), so
# that it builds in minutes on two cores. Cached as $CACHE/Image; the stamp holds the fragment's
# hash, so a changed fragment rebuilds the kernel (one kernel serves the node test and the oracle).
kernel_stamp=$(sha256sum "$here/guest/kernel-arm64.config" | cut -d' ' -f1)
if [ "$(cat "$CACHE/.kernel-done" 2>/dev/null)" != "$kernel_stamp" ]; then
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  src_pkg=$(chroot "$ROOT" apt-cache depends linux-source | awk '/Depends: linux-source-/ { print $2; exit }')
  [ -n "$src_pkg" ] || { log "no linux-source-X.Y package behind linux-source"; exit 1; }
  log "fetching $src_pkg"
  setup_unpack_debs "$src_pkg"
  build=$CACHE/kbuild
  rm -rf "$build" && mkdir -p "$build"
  tarball=$(find "$CACHE/x" -name 'linux-source-*.tar.*' | head -1)
  [ -n "$tarball" ] || { log "no source tarball in $src_pkg"; exit 1; }
  tar -xf "$tarball" -C "$build"
  rm -rf "$CACHE/x"
  ksrc=$(find "$build" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -1)
  kmake() { make -C "$ksrc" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- -j"$JOBS" "$@"; }
  KCONFIG_ALLCONFIG="$here/guest/kernel-arm64.config" kmake allnoconfig >"$CACHE/kconfig.log" 2>&1 || {
    tail -20 "$CACHE/kconfig.log" >&2; exit 1; }
  # Every line of the fragment must have survived (a dependency kconfig dropped is a broken kernel).
  check_kernel_config "$ksrc" "$here/guest/kernel-arm64.config"
  grep -qx "CONFIG_NODES_SHIFT=$NODES_SHIFT" "$ksrc/.config" || { log "NODES_SHIFT is not $NODES_SHIFT"; exit 1; }
  log "building the arm64 guest kernel from $src_pkg (make -j$JOBS Image, a few minutes)"
  start=$(date +%s)
  kmake Image >"$CACHE/kbuild.log" 2>&1 || { tail -40 "$CACHE/kbuild.log" >&2; exit 1; }
  log "kernel built in $(( $(date +%s) - start )) s"
  cp "$ksrc/arch/arm64/boot/Image" "$CACHE/Image"
  cp "$ksrc/.config" "$CACHE/Image.config"
  # VGRACE_KEEP_KBUILD=1 keeps the configured tree (about 1.5 GB) for a quick rebuild by hand.
  [ "${VGRACE_KEEP_KBUILD:-0}" = 1 ] || rm -rf "$build"
  echo "$kernel_stamp" >"$CACHE/.kernel-done"
fi
log "ready: $CACHE"
