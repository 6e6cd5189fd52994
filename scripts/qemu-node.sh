#!/usr/bin/env bash
# A whole Grace node in an x86 q35 guest: one `vgrace serve --config` serves four 480 GiB GH100s
# (memfd backing, sparse), QEMU 11 (cached Debian sid chroot) boots a busybox guest under TCG with
# exactly the arguments `vgrace qemu-args --config ... --machine q35` prints, and the guest checks
# the node (each GPU alone at 00.0 behind a root port, BARs assigned and sized, memory through each
# BAR4, 8 SRAT generic initiators per GPU). A boot with a hand-made 64 GiB aperture (in a 4 TiB
# physical address space) must
# fail with BAR assignment errors. Prints boot and serve timings. Exits 0 only if all held.
#
# VGRACE_NODE_GPUS (default 4), VGRACE_NODE_MEM_SIZE (default 480G), VGRACE_NODE_GUEST_MEM (2G),
# VGRACE_NODE_RUNS: boots of each guest for the median boot time (3); VGRACE_NODE_KEEP=1 keeps
# the work directory (consoles, configs, arguments) in the chroot's /tmp/vgrace-node.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/qemu-lib.sh"
log() { printf '[qemu-node] %s\n' "$*" >&2; }
GPUS=${VGRACE_NODE_GPUS:-4}
MEM_SIZE=${VGRACE_NODE_MEM_SIZE:-480G}
GUEST_MEM=${VGRACE_NODE_GUEST_MEM:-2G}
SMALL_APERTURE=64G
SMALL_PHYS_BITS=42
RUNS=${VGRACE_NODE_RUNS:-3}

bash "$here/qemu-setup.sh"
log "building vgrace (release)"
qemu_build_vgrace

# QEMU runs in the chroot and sees the sockets as /tmp/vgrace-node/...; vgrace runs outside and
# listens on $ROOT/tmp/vgrace-node/...: the same config twice, paths seen from each side.
inside=/tmp/vgrace-node
work=$ROOT$inside
vg_pid=""
cleanup() {
  [ -n "$vg_pid" ] && kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null || true
  qemu_umount_chroot
  [ -n "${VGRACE_NODE_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work" && mkdir -p "$work"
qemu_mount_chroot
qemu_make_guest "$work"

for side in guest host; do
  prefix=""; [ $side = host ] && prefix=$ROOT
  for i in $(seq 0 $((GPUS - 1))); do
    printf '[[device]]\nsocket = "%s/gpu%d.sock"\nprofile = "gh100"\nmem_size = "%s"\nbacking = "memfd"\n\n' \
      "$prefix$inside" "$i" "$MEM_SIZE"
  done >"$work/node-$side.toml"
done

# The arguments, one shell-quoted group per line; split each as the shell would.
"$VGRACE" qemu-args --config "$work/node-guest.toml" --machine q35 --guest-mem "$GUEST_MEM" >"$work/qemu-args.txt"
"$VGRACE" qemu-args --config "$work/node-guest.toml" --machine q35 --guest-mem "$GUEST_MEM" --json >"$work/qemu-args.json"
mapfile -t node_args < <(python3 -c '
import shlex, sys
for line in open(sys.argv[1]):
    if line.strip() and not line.startswith("#"):
        print("\n".join(shlex.split(line)))
' "$work/qemu-args.txt")
# Each GPU's BAR sizes and its number of NUMA nodes (generic initiators), from the node itself.
read -r BAR2 BAR4 GIS < <(python3 -c '
import json, sys
n = json.load(open(sys.argv[1]))["node"]
g = n["gpus"][0]
b = dict((x[0], x[1]) for x in g["bars"])
assert all(dict((x[0], x[1]) for x in h["bars"]) == b for h in n["gpus"])
print(b.get(2, 0), b.get(4, 0), g["numa_nodes"][1] - g["numa_nodes"][0] + 1)
' "$work/qemu-args.json")
log "qemu-args: ${#node_args[@]} arguments; each GPU: BAR2 $BAR2, BAR4 $BAR4, $GIS generic initiators"

# vgrace serve --config: the time from spawning it until every socket accepts a connection, and
# its RSS then (median of 5 starts, each stopped with SIGTERM), measured before the real server.
read -r serve_ms rss_start < <(python3 - "$VGRACE" "$work/node-host.toml" "$work" "$GPUS" <<'PY'
import os, signal, socket, subprocess, sys, time
vgrace, config, work, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
times, rss = [], []
for _ in range(5):
    t0 = time.monotonic_ns()
    p = subprocess.Popen([vgrace, "serve", "--config", config],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pending = [f"{work}/gpu{i}.sock" for i in range(n)]
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        for path in list(pending):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                pending.remove(path)
            except OSError:
                pass
            finally:
                s.close()
    if pending:
        p.kill(); print(-1, -1); sys.exit()
    times.append((time.monotonic_ns() - t0) / 1e6)
    with open(f"/proc/{p.pid}/status") as f:
        rss.append(next(int(l.split()[1]) for l in f if l.startswith("VmRSS")))
    p.send_signal(signal.SIGTERM)
    p.wait()
times.sort(); rss.sort()
print(f"{times[2]:.1f}", rss[2])
PY
)
[ -n "${serve_ms:-}" ] && [ "$serve_ms" != -1 ] || { log "vgrace serve --config did not listen on every socket"; exit 1; }
rm -f "$work"/gpu*.sock

RUST_LOG=${RUST_LOG:-info} "$VGRACE" serve --config "$work/node-host.toml" >"$work/vgrace.log" 2>&1 &
vg_pid=$!
for _ in $(seq 100); do
  n=0; for i in $(seq 0 $((GPUS - 1))); do [ -S "$work/gpu$i.sock" ] && n=$((n + 1)); done
  [ $n = "$GPUS" ] && break; sleep 0.1
done
[ $n = "$GPUS" ] || { log "vgrace serve did not start"; cat "$work/vgrace.log"; exit 1; }
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$vg_pid/status"; }

# Generic boot arguments: the only ones not from qemu-args (which gives -m with the backend).
boot() { # console-log append [qemu arguments...]
  local out=$1 append=$2; shift 2
  local t=$(date +%s%N) rc=0
  timeout 120 chroot "$ROOT" qemu-system-x86_64 -nodefaults -display none -serial stdio \
    -accel tcg,thread=multi -smp 2 \
    -kernel $inside/vmlinuz -initrd $inside/initrd.gz -append "$append" -no-reboot \
    "$@" </dev/null >"$out" 2>&1 || rc=$?
  wall_ms=$(( ($(date +%s%N) - t) / 1000000 ))
  return $rc
}
append="console=ttyS0 panic=-1 quiet vgrace.case=node vgrace.bar2=$BAR2 vgrace.bar4=$BAR4 vgrace.gis=$GIS"

log "booting the node guest (TCG, $GPUS GPUs)"
node_rc=0; boot "$work/node.log" "$append vgrace.gpus=$GPUS" "${node_args[@]}" || node_rc=$?
node_wall=$wall_ms
rss_after=$(rss)
tr -d '\r' <"$work/node.log" | grep -E 'VGRACE-|vfio|error|Kernel panic' || true
node_ok=0
[ $node_rc -eq 0 ] && tr -d '\r' <"$work/node.log" | grep -q '^VGRACE-RESULT PASS' && node_ok=1

# The same guest without GPUs, for the boot time: the machine, CPU, RAM and node 0 only.
base_args=()
skip=0
for a in "${node_args[@]}"; do
  if [ $skip = 1 ]; then
    skip=0
    case $a in
      pcie-root-port*|\{*vfio-user-pci*|acpi-generic-initiator*|node,nodeid=[1-9]*) unset 'base_args[-1]'; continue ;;
    esac
  fi
  case $a in -device|-object|-numa) skip=1 ;; esac
  base_args+=("$a")
done
log "booting the same guest without GPUs"
base_rc=0; boot "$work/base.log" "$append vgrace.gpus=0" "${base_args[@]}" || base_rc=$?
base_wall=$wall_ms
tr -d '\r' <"$work/base.log" | grep -E 'VGRACE-' || true
[ $base_rc -eq 0 ] && tr -d '\r' <"$work/base.log" | grep -q '^VGRACE-RESULT PASS' || {
  log "the guest without GPUs failed"; node_ok=0; }

# Negative: the same arguments with a hand-made aperture too small for the BARs; the guest must
# report BAR assignment failures (and so a failed result). On q35 pci-hole64-size alone does not
# bound the BARs: SeaBIOS places them at the top of the phys-bits address space and QEMU's _CRS
# grows the 64-bit hole to cover what the firmware programmed (with phys-bits 44 and a 64 GiB
# hole all four GPUs still get their BARs, at 12-16 TiB). So the small aperture is a 64 GiB hole
# in a 42-bit (4 TiB) address space: QEMU itself refuses a 4 TiB hole there.
small_args=("${node_args[@]/pci-hole64-size=*/pci-hole64-size=$SMALL_APERTURE}")
small_args=("${small_args[@]/phys-bits=*/phys-bits=$SMALL_PHYS_BITS}")
log "booting the node guest with a $SMALL_APERTURE aperture, phys-bits $SMALL_PHYS_BITS (must fail)"
small_rc=0; boot "$work/small.log" "$append vgrace.gpus=$GPUS" "${small_args[@]}" || small_rc=$?
neg_ok=0
if tr -d '\r' <"$work/small.log" | grep -q '^VGRACE-RESULT FAIL' &&
   tr -d '\r' <"$work/small.log" | grep -q '^VGRACE-CHECK no-bar-assignment-errors FAIL'; then
  neg_ok=1
  echo "qemu-node: the $SMALL_APERTURE aperture (phys-bits $SMALL_PHYS_BITS) correctly fails; the guest said:"
  tr -d '\r' <"$work/small.log" | grep -E '^VGRACE-(CHECK .* FAIL|DMESG|RESULT)' | sed 's/^/  /' || true
else
  echo "qemu-node: the $SMALL_APERTURE aperture (phys-bits $SMALL_PHYS_BITS) did NOT fail as it must (qemu exit $small_rc):"
  tr -d '\r' <"$work/small.log" | grep -E 'VGRACE-|error' | sed 's/^/  /' || true
fi

# Boot times: the median of $RUNS boots of each guest (the first node boot above is one of them),
# from kernel start to /init and to the result line (/proc/uptime in the guest).
for r in $(seq 2 "$RUNS"); do
  boot "$work/node$r.log" "$append vgrace.gpus=$GPUS" "${node_args[@]}" || true
  boot "$work/base$r.log" "$append vgrace.gpus=0" "${base_args[@]}" || true
done
cp "$work/node.log" "$work/node1.log"; cp "$work/base.log" "$work/base1.log"
median() { # key guest
  local f
  for f in "$work/$2"[0-9]*.log; do tr -d '\r' <"$f" | awk -v k="$1" '$1 == k { print $2 }'; done |
    sort -n | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "" }'
}
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
node_init=$(median VGRACE-INIT-UPTIME node); base_init=$(median VGRACE-INIT-UPTIME base)
node_up=$(median VGRACE-UPTIME node); base_up=$(median VGRACE-UPTIME base)
echo "qemu-node: guest boot, median of $RUNS (TCG): kernel start to /init ${node_init:-?} s with $GPUS GPUs, ${base_init:-?} s without: $(ratio "$node_init" "$base_init")x;" \
  "to the result line ${node_up:-?} s vs ${base_up:-?} s: $(ratio "$node_up" "$base_up")x (goal <= 1.15x; the node guest runs $(tr -d '\r' <"$work/node.log" | grep -c '^VGRACE-CHECK') checks, the other 2); QEMU wall (first boots) ${node_wall} ms vs ${base_wall} ms"
echo "qemu-node: vgrace serve --config ($GPUS x $MEM_SIZE): all sockets accept ${serve_ms} ms after the spawn (median of 5; goal <= 50 ms); VmRSS ${rss_start} KiB then, ${rss_after} KiB after serving the node guest (goal <= 16384 KiB)"

if [ $node_ok = 1 ] && [ $neg_ok = 1 ]; then
  echo "qemu-node: 1 passed, 0 failed"
  exit 0
fi
log "FAILED (node guest qemu exit $node_rc); consoles and vgrace log follow"
for f in node base small; do echo "--- $f console"; tr -d '\r' <"$work/$f.log"; done
echo "--- vgrace log"; cat "$work/vgrace.log"
echo "qemu-node: 0 passed, 1 failed"
exit 1
