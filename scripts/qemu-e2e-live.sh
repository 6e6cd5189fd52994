# The host side of qemu-e2e.sh's live phase (gh100), sourced by it while QEMU runs in the
# background; the guest side is scripts/guest/live. Uses qemu-e2e.sh's $VGRACE, $work, $qemu_pid,
# $WAIT, $MBOX_OFF, $POKE_VAL, $GW_OFF, $GW_VAL, $REPLY_DELAY, log and host_check. At each
# "VGRACE-SYNC <step>?" line of the guest the host changes the device with `vgrace ctl` and then
# pokes the step's token into the BAR4 mailbox the guest polls. A step that does not come within
# $WAIT seconds is a FAIL and ends the phase (the guest gives up on its own; QEMU's `timeout`
# bounds the rest).

ctl() { "$VGRACE" ctl --control "$work/ctl.sock" "$@"; }
console() { tr -d '\r' <"$work/console.log"; }
# Waits until the console has a line starting with $1, or QEMU exits, or $2 seconds pass.
wait_line() {
  local i
  for i in $(seq $(( $2 * 5 ))); do
    grep -q "^$1" "$work/console.log" && return 0
    kill -0 "$qemu_pid" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
# Gives the guest the go for a step: its token in the mailbox.
go() {
  ctl poke --region bar4 --offset "$MBOX_OFF" --value "$1" >/dev/null ||
    { host_check ctl-poke-mailbox 0 "token $1"; return 1; }
}
# How many REGION_READ messages vgrace has answered so far.
region_reads() {
  ctl --json stats | python3 -c '
import json, sys
d = json.load(sys.stdin)["devices"][0]
print(sum(c["count"] for c in d["commands"] if c["cmd"] == "REGION_READ"))'
}
# A 32-bit word of a region, as the device has it (`ctl peek`), as 0x%08x.
peek32() { printf '0x%08x' "0x$(ctl peek --region "$1" --offset "$2" --count 4 --raw | od -An -tx4 | tr -d ' ')"; }
ctl_log() { sed 's/^/[qemu-e2e]   ctl: /' >&2; }
# Runs `vgrace ctl ARGS...` and logs what it says; a failure is a FAIL (and ends the phase).
act() {
  local out rc=0
  log "live: vgrace ctl $*"
  out=$(ctl "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | ctl_log
  [ $rc = 0 ] || host_check ctl-$1 0 "vgrace ctl $* exited $rc"
  return $rc
}

live_phase() {
  local v off reads0 reads1 ok
  if ! wait_line "VGRACE-SYNC link-down?" "$WAIT"; then
    host_check live-sync-link-down 0 "the guest did not ask for link-down within $WAIT s"; return
  fi
  # What the guest wrote before, seen from the host through the control socket.
  v=$(peek32 bar4 "$GW_OFF") || v="(peek failed)"
  [ "$v" = "$(printf '0x%08x' $(( GW_VAL )))" ] && ok=1 || ok=0
  host_check ctl-peek-guest-write $ok "ctl peek bar4+$(printf 0x%x "$GW_OFF") = $v (guest wrote $GW_VAL)"
  # --quiet: the guest is to see the link status, so QEMU must not stop it on the error
  # interrupt a real link-down raises (the default).
  act fault link-down --quiet || return
  v=$(peek32 bar0 0x1498) || v="(peek failed)"
  [ "$v" != 0x000000ff ] && ok=1 || ok=0
  host_check ctl-peek-link-status-down $ok "ctl peek bar0+0x1498 = $v"
  reads0=$(region_reads) || reads0=-1
  go 0x11ec0001 || return

  if ! wait_line "VGRACE-SYNC link-up?" "$WAIT"; then
    host_check live-sync-link-up 0 "the guest did not ask for link-up within $WAIT s"; return
  fi
  # Between the two sync lines the guest polled the mailbox (BAR4, mapped) and read BAR0 once.
  reads1=$(region_reads) || reads1=-1
  [ $(( reads1 - reads0 )) = 1 ] && ok=1 || ok=0
  host_check guest-bar0-read-is-one-region-read $ok "REGION_READ count $reads0 -> $reads1 across the guest's BAR0 read and its BAR4 mailbox polls (the BAR0 readiness page: REGION_READ, BAR4: mmap)"
  act fault link-down --clear || return
  go 0x11ec0002 || return

  if ! wait_line "VGRACE-SYNC poke? bar4+" "$WAIT"; then
    host_check live-sync-poke 0 "the guest did not name a BAR4 offset within $WAIT s"; return
  fi
  off=$(console | sed -n 's/^VGRACE-SYNC poke? bar4+\(0x[0-9a-fA-F]*\).*/\1/p' | head -1)
  act poke --region bar4 --offset "$off" --value "$POKE_VAL" || return
  go 0x11ec0003 || return

  if [ "$REPLY_DELAY" = 1 ]; then
    if ! wait_line "VGRACE-SYNC delay?" "$WAIT"; then
      host_check live-sync-delay 0 "the guest did not ask for the reply delay within $WAIT s"; return
    fi
    log "live: the next reply waits 6 s, past QEMU's x-msg-timeout (5 s)"
    act fault delay-replies --delay 6s --count 1 || return
    go 0x11ec0004 || return
  fi

  if ! wait_line "VGRACE-SYNC done" "$WAIT"; then
    host_check live-sync-done 0 "the guest did not finish its live phase within $WAIT s"; return
  fi
  act events || true
  act stats || true
}
live_phase || true

# After QEMU: what QEMU and vgrace made of the late reply (VGRACE_E2E_REPLY_DELAY=1).
reply_delay_host_checks() {
  local ok
  grep -q 'timed out waiting for reply' "$work/console.log" && ok=1 || ok=0
  host_check qemu-timed-out $ok "QEMU's vfio-user client gave up on the delayed REGION_READ (x-msg-timeout)"
  grep -q 'unexpected reply' "$work/console.log" && ok=1 || ok=0
  host_check qemu-late-reply-unexpected $ok "QEMU called vgrace's late reply unexpected"
  grep -E 'session ended|client disconnected' "$work/vgrace.log" | sed 's/^/[qemu-e2e]   vgrace: /' >&2 || true
  # vgrace outlives the broken session: a new client is served (identity and BAR0 rules pass).
  local out
  out=$("$VGRACE" check --socket "$work/gpu.sock" 2>&1) || true
  if echo "$out" | grep -qE '^[0-9]+ passed, [0-9]+ failed' && [ "$(echo "$out" | grep -cE '^PASS +(identity|bar0):')" -ge 3 ] &&
     ! echo "$out" | grep -qE '^FAIL +(identity|bar0):'; then ok=1; else ok=0; fi
  host_check vgrace-serves-after-late-reply $ok "vgrace check --socket: $(echo "$out" | grep -E '^[0-9]+ passed' || echo 'no summary')"
}

# The live phase in the protocol trace (`vgrace trace --list` output in $1).
live_trace_checks() {
  local n ok late
  n=$(grep -cE -- '-> REGION_READ +#[0-9]+ +region=0 offset=0x1498 ' "$1" || true)
  [ "$n" -ge 3 ] && ok=1 || ok=0
  host_check trace-guest-link-status-reads $ok "$n REGION_READs of BAR0+0x1498 in the trace (the guest's live reads)"
  [ "$REPLY_DELAY" = 1 ] || return 0
  # The held reply: its latency, and what the session did next until QEMU's connection ended.
  late=$(grep -nE -- '<- REGION_READ .* ([6-9][0-9]{6}|[0-9]{8,}) us' "$1" | head -1 | cut -d: -f1)
  [ -n "$late" ] && ok=1 || ok=0
  host_check trace-late-reply $ok "a REGION_READ reply sent after 6 s or more"
  [ -n "$late" ] && sed -n "$(( late - 1 )),/== disconnected/p" "$1" | sed 's/^/[qemu-e2e]   trace: /' >&2
  return 0
}
