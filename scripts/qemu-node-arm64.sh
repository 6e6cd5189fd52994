#!/usr/bin/env bash
# A whole Grace node (four 480 GiB GPUs) in an arm64 virt guest with UEFI:
# crates/vgrace/tests/qemu_node.rs (settings in its header); sets up the cached arm64 chroot and
# guest kernel first.
set -euo pipefail
cd "$(dirname "$0")/.." && bash scripts/qemu-setup-arm64.sh
VGRACE_QEMU_REQUIRED=1 exec cargo test -q -p vgrace --test qemu_node -- --ignored --nocapture node_arm64
