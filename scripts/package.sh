#!/usr/bin/env bash
# Builds the Debian package (cargo-deb) and installs it into a clean Debian sid chroot, where
# `vgrace --version` and `man vgrace-serve` must work. The chroot is an overlay on (or, where
# overlays are not allowed, a copy of) the cached sid chroot of the QEMU tests, which is never
# modified; it goes away at exit.
#
#   scripts/package.sh            build, install, check; print the package's file list
#   scripts/package.sh --build    only build target/debian/vgrace_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'package: %s\n' "$*" >&2; }

CACHE=${VGRACE_QEMU_CACHE:-$HOME/.cache/vgrace-qemu}
ROOT=$CACHE/root
build_only=false
[ "${1:-}" = --build ] && build_only=true

command -v cargo-deb >/dev/null || {
  log "installing cargo-deb"
  cargo install cargo-deb --locked --quiet
}

log "release build"
cargo build --release --locked -p vgrace
gen=target/generated
rm -rf "$gen"
target/release/vgrace generate man "$gen/man" >/dev/null
for shell in bash zsh fish; do
  target/release/vgrace generate completions "$shell" "$gen/completions" >/dev/null
done
# Stripped: the release profile keeps line tables (debug = 1) for backtraces in development.
deb=$(cargo deb -p vgrace --no-build --strip --quiet)
[ -f "$deb" ] || deb=$(ls -t target/debian/vgrace_*.deb | head -1)
log "built $deb"
dpkg-deb -c "$deb" | awk '{ print $1, $6 }'
$build_only && exit 0

# The QEMU tests' cached chroot (made by scripts/qemu-setup.sh) is the base.
if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
  log "no cached sid chroot at $ROOT: running scripts/qemu-setup.sh first"
  bash scripts/qemu-setup.sh
fi
work=$(mktemp -d /tmp/vgrace-pkg.XXXXXX)
chroot_dir=$work/merged
cleanup() {
  for m in "$chroot_dir/dev/pts" "$chroot_dir/dev" "$chroot_dir/proc" "$chroot_dir"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/upper" "$work/work" "$chroot_dir"
if ! mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$work/upper,workdir=$work/work" \
  "$chroot_dir" 2>/dev/null; then
  log "no overlay mount here: copying the chroot"
  rmdir "$chroot_dir"
  cp -a "$ROOT" "$chroot_dir"
fi
mount -t proc proc "$chroot_dir/proc"
mount --bind /dev "$chroot_dir/dev"
mount --bind /dev/pts "$chroot_dir/dev/pts"
cp "$deb" "$chroot_dir/tmp/"
in_root() { chroot "$chroot_dir" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

log "installing man-db and the package in the chroot"
in_root apt-get update -qq
in_root apt-get install -y -qq --no-install-recommends man-db >/dev/null
in_root apt-get install -y -qq --no-install-recommends "/tmp/$(basename "$deb")" >/dev/null
in_root dpkg -s vgrace | grep -E '^(Status|Version|Depends):'

log "vgrace --version in the chroot"
in_root vgrace --version
log "man vgrace-serve in the chroot"
page=$(in_root env MANPAGER=cat MANWIDTH=80 man vgrace-serve)
printf '%s\n' "$page" | head -12
grep -q -- '--socket-group' <<<"$page" || { log "man vgrace-serve lacks --socket-group"; exit 1; }
for unit in vgrace.service vgrace@.service vgrace@.socket; do
  [ -f "$chroot_dir/usr/lib/systemd/system/$unit" ] || { log "$unit missing"; exit 1; }
done
in_root vgrace layout --config /usr/share/doc/vgrace/node.example.toml >/dev/null
# README's links to docs/ must resolve next to the installed README.
for doc in $(grep -o '(docs/[a-z-]*\.md' README.md | tr -d '(' | sort -u); do
  [ -f "$chroot_dir/usr/share/doc/vgrace/$doc" ] || { log "README links $doc, not installed"; exit 1; }
done
log "ok: the package installs and runs in a clean sid chroot"
