#!/usr/bin/env bash
# The guest initramfs of a QEMU test run (crates/vgrace/tests/qemu_*.rs):
#   qemu-guest.sh BUSYBOX OUT INIT [FILE...]
# packs the static BUSYBOX (from the qemu-setup*.sh cache) as /bin/busybox, INIT as /init and
# each FILE at the root (the scripts /init sources) into OUT/initrd.gz (newc cpio, gzip).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 BUSYBOX OUT INIT [FILE...]" >&2; exit 2; }
busybox=$1 out=$2 init=$3; shift 3
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/bin" "$tree/proc" "$tree/sys" "$tree/dev" "$tree/tmp"
cp "$busybox" "$tree/bin/busybox"
cp "$init" "$tree/init"
[ $# -eq 0 ] || cp "$@" "$tree/"
chmod +x "$tree/init" "$tree/bin/busybox"
(cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.gz"
