#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, a workspace of its own) and runs each of them, one after
# the other, then prints one summary line per target:
#   fuzz TARGET runs=N seconds=S exec_per_s=R result=ok|CRASH|failed(rc=N)
#
#   scripts/fuzz.sh                      30 s per target (what CI runs; VGRACE_FUZZ_SECONDS)
#   scripts/fuzz.sh --seconds N          N seconds per target
#   scripts/fuzz.sh --fuzz-minutes N     N minutes per target (the long run)
#   scripts/fuzz.sh --runs N             until N executions per target
#   ... [TARGET...]                      only these targets (default: `cargo fuzz list`)
#
# A crash stops at once with libFuzzer's report and the reproducer under fuzz/artifacts/;
# the exit status is non-zero. Logs go to fuzz/target/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-max_total_time="${VGRACE_FUZZ_SECONDS:-30}")
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    --fuzz-minutes) limit=(-max_total_time="$(($2 * 60))"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# The machine has only a stable toolchain; cargo-fuzz needs nightly flags.
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
mkdir -p target/logs
summary=()
status=0
for target in "${targets[@]}"; do
  log="target/logs/$target.log"
  start=$(date +%s)
  set +e
  cargo fuzz run "$target" -- "${limit[@]}" -rss_limit_mb=4096 -print_funcs=0 \
    -print_final_stats=1 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  secs=$(($(date +%s) - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  result=ok
  if [ "$rc" -ne 0 ]; then
    # A finding leaves its reproducer; anything else (a build error, a signal) is a failure.
    if grep -q "^artifact_prefix=.*Test unit written to" "$log"; then
      result=CRASH
    else
      result="failed(rc=$rc)"
    fi
    status=1
  fi
  summary+=("fuzz $target runs=${runs:-?} seconds=$secs exec_per_s=${rate:-?} result=$result")
  [ "$rc" -eq 0 ] || break
done
printf '%s\n' "${summary[@]}"
exit "$status"
