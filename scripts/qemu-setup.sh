#!/usr/bin/env bash
# Builds (once) the cached environment for the QEMU end-to-end test: a Debian sid chroot with
# QEMU 11.x (which has the vfio-user-pci client), a guest kernel and busybox. Idempotent: each
# finished step leaves a stamp, a half-made step is redone.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
CACHE=${VGRACE_QEMU_CACHE:-$HOME/.cache/vgrace-qemu}
ROOT=$CACHE/root
# The Debian mirror comes from this machine's own apt sources (deb822 .sources files or the
# classic sources.list), never from a host name written here; VGRACE_DEBIAN_MIRROR overrides.
machine_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
  if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list 2>/dev/null)
  fi
  printf '%s' "$uri"
}
MIRROR=${VGRACE_DEBIAN_MIRROR:-$(machine_mirror)}
if [ -z "$MIRROR" ]; then
  echo "[qemu-setup] no Debian mirror in /etc/apt/sources.list(.d); set VGRACE_DEBIAN_MIRROR" >&2
  exit 1
fi
mkdir -p "$CACHE"
log() { printf '[qemu-setup] %s\n' "$*" >&2; }

need_host=()
for tool in debootstrap cpio gzip zstd; do command -v "$tool" >/dev/null 2>&1 || need_host+=("$tool"); done
if [ ${#need_host[@]} -gt 0 ]; then
  log "installing host packages: ${need_host[*]}"
  apt-get update -qq
  apt-get install -y -qq debootstrap cpio gzip zstd >/dev/null
fi

cleanup_mounts() {
  for m in "$ROOT/proc" "$ROOT/dev/pts" "$ROOT/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
}
trap cleanup_mounts EXIT

if [ ! -f "$CACHE/.chroot-done" ]; then
  log "debootstrap sid into $ROOT (a few minutes)"
  cleanup_mounts
  rm -rf "$ROOT"
  debootstrap --variant=minbase sid "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  touch "$CACHE/.chroot-done"
fi

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
  rm -rf "$ROOT/tmp/debs" && mkdir -p "$ROOT/tmp/debs"
  kpkg=$(chroot "$ROOT" apt-cache search --names-only '^linux-binary-unsigned-.*-cloud-amd64$' | awk '{print $1}' | sort -V | tail -1)
  [ -n "$kpkg" ] || { log "no linux-binary-unsigned cloud kernel package found"; exit 1; }
  chroot "$ROOT" sh -c "cd /tmp/debs && apt-get download -qq $kpkg busybox-static"
  rm -rf "$CACHE/x" && mkdir -p "$CACHE/x"
  for d in "$ROOT"/tmp/debs/*.deb; do dpkg-deb -x "$d" "$CACHE/x"; done
  vmlinuz=$(find "$CACHE/x" -name 'vmlinuz*' | head -1)
  [ -n "$vmlinuz" ] || { log "no vmlinuz in $kpkg"; exit 1; }
  cp "$vmlinuz" "$CACHE/vmlinuz"
  cp "$CACHE/x/bin/busybox" "$CACHE/busybox" 2>/dev/null || cp "$CACHE/x/usr/bin/busybox" "$CACHE/busybox"
  rm -rf "$CACHE/x" "$ROOT/tmp/debs"
  touch "$CACHE/.guest-done"
fi
log "ready: $CACHE"
