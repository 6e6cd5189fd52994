# Steps shared by the cached-environment builders (qemu-setup.sh, qemu-setup-arm64.sh); sourced,
# not run. Expects $CACHE, $ROOT and a log function to be set, and `set -euo pipefail`.

# The Debian mirror comes from this machine's own apt sources (deb822 .sources files or the
# classic sources.list), never from a host name written here; VGRACE_DEBIAN_MIRROR overrides.
machine_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
  if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list 2>/dev/null)
  fi
  printf '%s' "$uri"
}

# Installs the host packages named as arguments that are not installed yet.
setup_host_packages() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing host packages: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Runs the calling script again, once, in a private mount namespace (call it first, with the
# script's arguments): what the script mounts in the chroot (/proc for apt, bind mounts) ends with
# it, even when it is killed, and no mount of the host or of a concurrent run is ever touched.
setup_private_mounts() {
  [ -n "${VGRACE_PRIVATE_MOUNTS:-}" ] ||
    VGRACE_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private -- bash "$0" "$@"
}

# Detaches whatever is mounted in the chroot before it is made anew (rm -rf would follow a
# bind-mounted /dev). Only in the private namespace of setup_private_mounts: the host keeps its
# mounts.
unmount_in_chroot() {
  local m
  for m in "$ROOT/proc" "$ROOT/dev/pts" "$ROOT/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
}

# A minimal Debian sid chroot at $ROOT from the machine's mirror, made once (stamp
# $CACHE/.chroot-done); a half-made one is redone.
setup_sid_chroot() {
  local mirror=${VGRACE_DEBIAN_MIRROR:-$(machine_mirror)}
  if [ -z "$mirror" ]; then
    log "no Debian mirror in /etc/apt/sources.list(.d); set VGRACE_DEBIAN_MIRROR"
    exit 1
  fi
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/.chroot-done" ]; then
    log "debootstrap sid into $ROOT (a few minutes)"
    [ -n "${VGRACE_PRIVATE_MOUNTS:-}" ] || { log "setup_private_mounts first"; exit 1; }
    unmount_in_chroot
    rm -rf "$ROOT"
    debootstrap --variant=minbase sid "$ROOT" "$mirror" >"$CACHE/debootstrap.log" 2>&1 || {
      tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    touch "$CACHE/.chroot-done"
  fi
}

# Downloads the packages named as arguments in the chroot and unpacks them all into $CACHE/x
# (emptied first); the caller copies out what it needs and removes $CACHE/x.
setup_unpack_debs() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  rm -rf "$ROOT/tmp/debs" && mkdir -p "$ROOT/tmp/debs"
  chroot "$ROOT" sh -c "cd /tmp/debs && apt-get download -qq $*"
  rm -rf "$CACHE/x" && mkdir -p "$CACHE/x"
  local d
  for d in "$ROOT"/tmp/debs/*.deb; do dpkg-deb -x "$d" "$CACHE/x"; done
  rm -rf "$ROOT/tmp/debs"
}

# Copies the busybox binary out of an unpacked busybox-static package in $CACHE/x.
setup_copy_busybox() {
  cp "$CACHE/x/bin/busybox" "$CACHE/busybox" 2>/dev/null || cp "$CACHE/x/usr/bin/busybox" "$CACHE/busybox"
}

# check_kernel_config KSRC FRAGMENT: every line of FRAGMENT must have survived in KSRC/.config
# (kconfig drops an option whose dependency is missing, which makes a broken guest kernel).
check_kernel_config() {
  local bad=0 l
  while IFS= read -r l; do
    case $l in ''|'#'*) continue ;; esac
    grep -qx "$l" "$1/.config" || { log "kernel config lost: $l"; bad=1; }
  done <"$2"
  [ $bad = 0 ] || exit 1
}
