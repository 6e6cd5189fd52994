#!/usr/bin/env bash
# The real driver as the oracle, crates/vgrace/tests/qemu_oracle.rs (its header lists the
# VGRACE_ORACLE_* settings: profile gh100, gb200 or gb200-cxl, kernel, Linux version): sets up the
# cached arm64 chroot and guest kernel, builds the aarch64 vgrace the L1 guest runs
# (qemu-oracle-build.sh; VGRACE_ORACLE_CLIENT=0 skips it), then runs the test.
set -euo pipefail
cd "$(dirname "$0")/.." && bash scripts/qemu-setup-arm64.sh
guest=""; [ "${VGRACE_ORACLE_CLIENT:-1}" = 0 ] || guest=$(bash scripts/qemu-oracle-build.sh)
VGRACE_QEMU_REQUIRED=1 VGRACE_ORACLE_GUEST_VGRACE=$guest exec cargo test -q -p vgrace \
  --test qemu_oracle -- --ignored --nocapture
