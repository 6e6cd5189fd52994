#!/usr/bin/env bash
# Builds (once) the cached environment for the QEMU end-to-end test: a Debian sid chroot with
# QEMU 11.x (which has the vfio-user-pci client), a guest kernel and busybox. Idempotent: each
# finished step leaves a stamp, a half-made step is redone.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
CACHE=${VGRACE_QEMU_CACHE:-$HOME/.cache/vgrace-qemu}
ROOT=$CACHE/root
here=$(cd "$(dirname "$0")" && pwd)
log() { printf '[qemu-setup] %s\n' "$*" >&2; }
. "$here/qemu-setup-lib.sh"
setup_private_mounts "$@"

# pciutils: the host lspci that the guest of qemu_readme.rs runs.
setup_host_packages debootstrap cpio gzip zstd pciutils
setup_sid_chroot

if [ ! -f "$CACHE/.qemu-done" ]; then
  log "installing qemu-system-x86 in the chroot"
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99no-valid-until"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  chroot "$ROOT" apt-get update -qq
  chroot "$ROOT" apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
  chroot "$ROOT" qemu-system-x86_64 -device help 2>/dev/null | grep -q vfio-user-pci || {
    log "the chroot's QEMU has no vfio-user-pci"; exit 1; }
  touch "$CACHE/.qemu-done"
fi

if [ ! -f "$CACHE/.guest-done" ]; then
  log "fetching the guest kernel and busybox"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  kpkg=$(chroot "$ROOT" apt-cache search --names-only '^linux-binary-unsigned-.*-cloud-amd64$' | awk '{print $1}' | sort -V | tail -1)
  [ -n "$kpkg" ] || { log "no linux-binary-unsigned cloud kernel package found"; exit 1; }
  setup_unpack_debs "$kpkg" busybox-static
  vmlinuz=$(find "$CACHE/x" -name 'vmlinuz*' | head -1)
  [ -n "$vmlinuz" ] || { log "no vmlinuz in $kpkg"; exit 1; }
  cp "$vmlinuz" "$CACHE/vmlinuz"
  setup_copy_busybox
  rm -rf "$CACHE/x"
  touch "$CACHE/.guest-done"
fi
log "ready: $CACHE"
