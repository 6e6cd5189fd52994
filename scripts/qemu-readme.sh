#!/usr/bin/env bash
# README's copy-paste run in a real guest, crates/vgrace/tests/qemu_readme.rs (its header says
# what it checks; VGRACE_BLESS_DOCS=1 rewrites README's guest block, VGRACE_README_KEEP=1 keeps
# the console); sets up the cached chroot (and the host's pciutils, whose lspci the guest runs)
# first.
set -euo pipefail
cd "$(dirname "$0")/.." && bash scripts/qemu-setup.sh
VGRACE_QEMU_REQUIRED=1 exec cargo test -q -p vgrace --test qemu_readme -- --ignored --nocapture
