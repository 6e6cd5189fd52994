#!/usr/bin/env bash
# libvirt's daemons for crates/vgrace/tests/qemu_libvirt.rs, without systemd:
#   libvirt-run.sh ROOT WORK
# runs virtlogd (in the background, its pid in WORK/virtlogd.pid) and libvirtd (in the
# foreground) in the Debian sid chroot ROOT, with libvirt installed by scripts/qemu-setup-libvirt.sh.
# Both get mount and network namespaces of their own: /proc, /dev and a read-only /sys (libvirt
# reads the host's CPUs there) are mounted in there only, so other runs' chroot mounts are left
# alone and nothing is left to unmount; no cgroup file system is mounted, and nothing libvirt does
# reaches the host's network. WORK/qemu.conf is bind-mounted over the chroot's qemu.conf (QEMU
# without a mount namespace of its own: libvirt cannot make one inside a chroot). Every step
# execs: the process the caller started becomes libvirtd, in the namespaces (nsenter -t PID -m
# reaches them), and virtlogd shares its process group.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 ROOT WORK" >&2; exit 2; }
[ -x "$1/usr/sbin/libvirtd" ] || { echo "$0: no libvirtd in $1 (run scripts/qemu-setup-libvirt.sh)" >&2; exit 2; }
# shellcheck disable=SC2016 # $1 and $2 belong to the inner shell
exec unshare --mount --net --propagation private -- sh -c \
  'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && mount -t sysfs -o ro sysfs "$1/sys" &&
   mount --bind "$2/qemu.conf" "$1/etc/libvirt/qemu.conf" || exit 1
   chroot "$1" /usr/sbin/virtlogd & echo $! >"$2/virtlogd.pid"
   exec chroot "$1" /usr/sbin/libvirtd' sh "$1" "$2"
