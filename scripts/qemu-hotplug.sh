#!/usr/bin/env bash
# Hot-add of a vgrace GPU over QMP, and the watch on QEMU's known hot-unplug abort:
# crates/vgrace/tests/qemu_hotplug.rs (VGRACE_HOTPLUG_* settings in its header); sets up the
# cached chroot first.
set -euo pipefail
cd "$(dirname "$0")/.." && bash scripts/qemu-setup.sh
VGRACE_QEMU_REQUIRED=1 exec cargo test -q -p vgrace --test qemu_hotplug -- --ignored --nocapture
