#!/usr/bin/env bash
# The one QEMU launch line of the QEMU tests (crates/vgrace/tests/qemu_*.rs, through
# test-support's qemu harness):
#   qemu-run.sh ROOT QEMU-BINARY [ARGS...]
# runs QEMU-BINARY with ARGS in the Debian sid chroot ROOT (built by scripts/qemu-setup*.sh).
# QEMU needs /proc and /dev there: they are mounted in a private mount namespace (unshare
# --mount) that ends with QEMU, so there is nothing to unmount afterwards, not even after a
# SIGKILL, and no mount of the host or of a concurrent run is ever touched. Every step execs:
# the process the caller started is QEMU itself. No core files (QEMU's known hot-unplug abort).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ROOT QEMU-BINARY [ARGS...]" >&2; exit 2; }
root=$1; shift
[ -x "$root/usr/bin/$1" ] || { echo "$0: no $1 in $root (run scripts/qemu-setup*.sh)" >&2; exit 2; }
ulimit -c 0
# shellcheck disable=SC2016 # $0 and $@ belong to the inner shell
exec unshare --mount --propagation private -- /bin/sh -c \
  'mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" && exec chroot "$0" "$@"' "$root" "$@"
