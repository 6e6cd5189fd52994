#!/usr/bin/env bash
# A whole Grace node (four 480 GiB GPUs) in a q35 guest, and a too-small aperture that must fail:
# crates/vgrace/tests/qemu_node.rs (VGRACE_NODE_* settings in its header); sets up the cached
# chroot first.
set -euo pipefail
cd "$(dirname "$0")/.." && bash scripts/qemu-setup.sh
VGRACE_QEMU_REQUIRED=1 exec cargo test -q -p vgrace --test qemu_node -- --ignored --nocapture node_q35
