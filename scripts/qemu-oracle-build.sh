#!/usr/bin/env bash
# Builds an aarch64 `vgrace` (static, release) for the oracle's L1 guest (scripts/qemu-oracle.sh)
# in the arm64 setup's Debian sid chroot, with sid's rustc/cargo, libstd-rust-dev:arm64 and the
# aarch64 cross gcc (the rustup toolchain cannot download targets here). The crates come from the
# host's cargo registry cache (bind-mounted; the build is --offline). Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CACHE=${VGRACE_QEMU_ARM64_CACHE:-$HOME/.cache/vgrace-qemu-arm64}
ROOT=$CACHE/root
registry=${CARGO_HOME:-$HOME/.cargo}/registry
log() { printf '[qemu-oracle-build] %s\n' "$*" >&2; }
. "$here/qemu-setup-lib.sh"
setup_private_mounts "$@"

[ -d "$ROOT/usr" ] || { log "no chroot at $ROOT: run scripts/qemu-setup-arm64.sh"; exit 1; }
if [ ! -f "$CACHE/.rust-arm64-done" ]; then
  log "installing rustc, cargo, libstd-rust-dev:arm64 and gcc-aarch64-linux-gnu in the chroot"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  chroot "$ROOT" apt-get install -y -qq --no-install-recommends rustc cargo libstd-rust-dev:arm64 \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
  touch "$CACHE/.rust-arm64-done"
fi

# Fetch on the host (its cargo knows the registry), then build offline in the chroot.
(cd "$repo" && cargo fetch --locked -q)
src=/tmp/vgrace-src
mkdir -p "$ROOT$src" "$ROOT/root/.cargo/registry"
mount --bind "$repo" "$ROOT$src"
mount --bind "$registry" "$ROOT/root/.cargo/registry"
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
start=$(date +%s)
chroot "$ROOT" env -C "$src" CARGO_TARGET_DIR=/tmp/vgrace-aarch64-target \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  RUSTFLAGS="-C target-feature=+crt-static -A linker_messages" CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo build --offline --locked --release -q --target aarch64-unknown-linux-gnu -p vgrace >&2
log "built in $(( $(date +%s) - start )) s"
echo "$ROOT/tmp/vgrace-aarch64-target/aarch64-unknown-linux-gnu/release/vgrace"
