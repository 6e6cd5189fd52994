#!/usr/bin/env bash
# Installs (once) libvirt-daemon-system and libvirt-clients in the cached x86 chroot of
# scripts/qemu-setup.sh (run that first), for crates/vgrace/tests/qemu_libvirt.rs. No service
# starts from the packages' scripts (policy-rc.d), and /proc and /dev are mounted for apt in a
# private mount namespace only.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
CACHE=${VGRACE_QEMU_CACHE:-$HOME/.cache/vgrace-qemu}
ROOT=$CACHE/root
log() { printf '[qemu-setup-libvirt] %s\n' "$*" >&2; }
[ -x "$ROOT/usr/bin/qemu-system-x86_64" ] || { log "no chroot at $ROOT (run scripts/qemu-setup.sh)"; exit 1; }
[ -x "$ROOT/usr/sbin/libvirtd" ] && [ -x "$ROOT/usr/bin/virsh" ] && exit 0

# Runs "$@" in the chroot, in a private mount namespace with its /proc and /dev mounted.
in_chroot() {
  # shellcheck disable=SC2016 # $1 and $@ belong to the inner shell
  unshare --mount --propagation private sh -c \
    'r=$1; shift; mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" && exec chroot "$r" "$@"' \
    sh "$ROOT" "$@"
}
log "installing libvirt-daemon-system and libvirt-clients in the chroot"
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"
rc=0
in_chroot apt-get update -qq && in_chroot apt-get install -y -qq --no-install-recommends \
  libvirt-daemon-system libvirt-clients >/dev/null || rc=$?
rm -f "$ROOT/usr/sbin/policy-rc.d"
[ $rc = 0 ] || { log "installing libvirt failed"; exit 1; }
log "ready"
