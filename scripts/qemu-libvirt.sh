#!/usr/bin/env bash
# libvirt end to end, crates/vgrace/tests/qemu_libvirt.rs (its header says what it checks and
# lists the VGRACE_LIBVIRT_* settings): sets up the cached chroot and libvirt in it first; the
# daemons run through scripts/libvirt-run.sh.
set -euo pipefail
cd "$(dirname "$0")/.." && bash scripts/qemu-setup.sh && bash scripts/qemu-setup-libvirt.sh
VGRACE_QEMU_REQUIRED=1 exec cargo test -q -p vgrace --test qemu_libvirt -- --ignored --nocapture
