#!/usr/bin/env bash
# The oracle against an older driver: the same L1 Grace host as scripts/qemu-oracle.sh, booted on
# a guest kernel built from Debian trixie's linux-source-6.12 (same config fragment,
# scripts/guest/kernel-arm64.config), whose nvgrace-gpu-vfio-pci has the 6.9 rules (no DVSEC, no
# readiness poll, no reset check): its transcript is diffed against `vgrace serve --linux 6.9`,
# and `vgrace check --vfio-device --linux 6.9` runs against it. Not in CI (a second kernel build
# is ~20 minutes on a fresh two-core machine); README names it.
#   VGRACE_ORACLE_PROFILE  gh100 (default) | gb200 (split the Hopper way before 6.14)
# The kernel is cached as $CACHE/Image-6.12, rebuilt when the fragment changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${VGRACE_QEMU_ARM64_CACHE:-$HOME/.cache/vgrace-qemu-arm64}
ROOT=$CACHE/root
JOBS=${VGRACE_KERNEL_JOBS:-2}
log() { printf '[qemu-oracle-6.12] %s\n' "$*" >&2; }
. "$here/qemu-setup-lib.sh"
setup_private_mounts "$@"

bash "$here/qemu-setup-arm64.sh"

frag=$here/guest/kernel-arm64.config
stamp=$CACHE/.kernel-6.12-$(sha256sum "$frag" | cut -c1-16)
if [ ! -f "$stamp" ] || [ ! -f "$CACHE/Image-6.12" ]; then
  mirror=${VGRACE_DEBIAN_MIRROR:-$(machine_mirror)}
  [ -n "$mirror" ] || { log "no Debian mirror in this machine's apt sources"; exit 1; }
  echo "deb $mirror trixie main" >"$ROOT/etc/apt/sources.list.d/vgrace-trixie.list"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  log "fetching linux-source-6.12 (trixie)"
  chroot "$ROOT" apt-get update -qq
  rm -rf "$ROOT/tmp/k612" && mkdir -p "$ROOT/tmp/k612"
  chroot "$ROOT" sh -c 'cd /tmp/k612 && apt-get download -qq linux-source-6.12' >/dev/null 2>&1
  build=$CACHE/kbuild-6.12
  rm -rf "$build" && mkdir -p "$build"
  dpkg-deb -x "$(find "$ROOT/tmp/k612" -name 'linux-source-6.12_*.deb' | head -1)" "$build/x"
  tar -xf "$(find "$build/x" -name 'linux-source-*.tar.*' | head -1)" -C "$build"
  rm -rf "$build/x" "$ROOT/tmp/k612"
  ksrc=$(find "$build" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -1)
  kmake() { make -C "$ksrc" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- -j"$JOBS" "$@"; }
  KCONFIG_ALLCONFIG="$frag" kmake allnoconfig >"$CACHE/kconfig-6.12.log" 2>&1
  check_kernel_config "$ksrc" "$frag"
  log "building the 6.12 guest kernel (make -j$JOBS Image)"
  start=$(date +%s)
  kmake Image >"$CACHE/kbuild-6.12.log" 2>&1 || { tail -40 "$CACHE/kbuild-6.12.log" >&2; exit 1; }
  log "kernel built in $(( $(date +%s) - start )) s"
  cp "$ksrc/arch/arm64/boot/Image" "$CACHE/Image-6.12"
  rm -rf "$build" "$CACHE"/.kernel-6.12-*
  touch "$stamp"
fi

VGRACE_ORACLE_KERNEL=$CACHE/Image-6.12 VGRACE_ORACLE_LINUX=${VGRACE_ORACLE_LINUX:-6.9} bash "$here/qemu-oracle.sh"
