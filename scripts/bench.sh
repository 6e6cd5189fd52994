#!/usr/bin/env bash
# Builds in release mode and runs the benchmark suite: a human table, then one
# `ratio NAME VALUE` line per goal (every figure is relative to a baseline from the same run).
# --quick finishes in well under 5 minutes on 2 vCPUs.
# --fuzz-minutes N runs each fuzz target for N minutes instead (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fuzz-minutes" ]; then
  exec bash scripts/fuzz.sh "$@"
fi
cargo build --release -q -p vgrace -p vgrace-bench
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
exec target/release/vgrace-bench --vgrace target/release/vgrace "$@"
