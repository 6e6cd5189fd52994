#!/usr/bin/env bash
# The QEMU guest end-to-end test, crates/vgrace/tests/qemu_e2e.rs (its header lists the
# VGRACE_E2E_* settings: profile gh100, gb200 or linkdown, memory size, live phase, reply delay);
# sets up the cached chroot first.
set -euo pipefail
cd "$(dirname "$0")/.." && bash scripts/qemu-setup.sh
VGRACE_QEMU_REQUIRED=1 exec cargo test -q -p vgrace --test qemu_e2e -- --ignored --nocapture
