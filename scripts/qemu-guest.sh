#!/usr/bin/env bash
# The guest initramfs of a QEMU test run (crates/vgrace/tests/qemu_*.rs):
#   qemu-guest.sh [--bin FILE]... [--host FILE]... [--acpi AML] BUSYBOX OUT INIT [FILE...]
# packs the static BUSYBOX (from the qemu-setup*.sh cache) as /bin/busybox, each --bin FILE in
# /bin, each --host FILE at its own absolute path (symlinks followed: a host binary's libraries,
# its data files), INIT as /init and each FILE at the root (the scripts /init sources) into
# OUT/initrd.gz (newc cpio, gzip). --acpi puts AML first, in an uncompressed cpio at
# kernel/firmware/acpi/, where the kernel's ACPI table upgrade (CONFIG_ACPI_TABLE_UPGRADE) looks.
set -euo pipefail
bins=() hosts=() acpi=""
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bins+=("$2"); shift 2 ;;
    --host) hosts+=("$2"); shift 2 ;;
    --acpi) acpi=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 3 ] || { echo "usage: $0 [--bin FILE]... [--host FILE]... [--acpi AML] BUSYBOX OUT INIT [FILE...]" >&2; exit 2; }
busybox=$1 out=$2 init=$3; shift 3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tree=$tmp/tree
mkdir -p "$tree/bin" "$tree/proc" "$tree/sys" "$tree/dev" "$tree/tmp"
cp "$busybox" "$tree/bin/busybox"
[ ${#bins[@]} -eq 0 ] || cp "${bins[@]}" "$tree/bin/"
for f in "${hosts[@]}"; do mkdir -p "$tree$(dirname "$f")" && cp -L "$f" "$tree$f"; done
cp "$init" "$tree/init"
[ $# -eq 0 ] || cp "$@" "$tree/"
chmod +x "$tree/init" "$tree/bin/busybox"
{
  if [ -n "$acpi" ]; then
    mkdir -p "$tmp/acpi/kernel/firmware/acpi"
    cp "$acpi" "$tmp/acpi/kernel/firmware/acpi/"
    (cd "$tmp/acpi" && find kernel | cpio -o -H newc --quiet)
  fi
  (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1)
} >"$out/initrd.gz"
