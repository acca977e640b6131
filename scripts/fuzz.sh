#!/usr/bin/env bash
# Runs the cargo-fuzz targets of crates/herald-protocol/fuzz and crates/herald/fuzz, one after another, and prints
# per target the runs, seconds, corpus size, coverage (libFuzzer's final `cov:` and `ft:`) and crashes.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   # default: 60 seconds each, every target
#   bash scripts/fuzz.sh --runs N [TARGET...]               # N runs each instead of a time
#
# Each target starts from its committed seed corpus (crates/<crate>/fuzz/corpus/<target>/), copied into a work
# directory so the repository is not touched; what a run adds stays there for the next run. A crash or failed
# check is saved under the work directory's artifacts/<target>/, and the script exits non-zero.
#
# Environment: FUZZ_WORK_DIR (default target/fuzz-work), FUZZ_TARGET_DIR (the build's target directory, default
# target/fuzz), FUZZ_NICE (niceness of builds and runs, default 15), FUZZ_ARGS (more libFuzzer flags).
# cargo-fuzz is installed with `cargo install cargo-fuzz` when missing. The stable toolchain builds the targets
# (RUSTC_BOOTSTRAP=1 lets it take the sanitizer flags).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
crates=(herald-protocol herald)

seconds=60
runs=
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
    --runs=*) runs="${1#--runs=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *[!0-9]*) targets+=("$1"); shift ;;
    *) seconds="$1"; shift ;;
  esac
done

work="${FUZZ_WORK_DIR:-$repo/target/fuzz-work}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$repo/target/fuzz}"
export RUSTC_BOOTSTRAP=1
nice=(nice -n "${FUZZ_NICE:-15}")

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  "${nice[@]}" cargo install cargo-fuzz
fi

# The crate of every target, from the fuzz_targets/ file names.
declare -A crate_of=()
all=()
for crate in "${crates[@]}"; do
  for file in "$repo/crates/$crate/fuzz/fuzz_targets/"*.rs; do
    name="$(basename "$file" .rs)"
    crate_of[$name]="$crate"
    all+=("$name")
  done
done
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all[@]}")
fi
for target in "${targets[@]}"; do
  if [ -z "${crate_of[$target]:-}" ]; then
    echo "unknown target '$target'; the targets are: ${all[*]}" >&2
    exit 2
  fi
done

# Build each crate's targets once, so the seconds below are fuzzing only.
for crate in "${crates[@]}"; do
  for target in "${targets[@]}"; do
    if [ "${crate_of[$target]}" = "$crate" ]; then
      echo "== building crates/$crate/fuzz"
      (cd "$repo/crates/$crate" && "${nice[@]}" cargo fuzz build)
      break
    fi
  done
done

if [ -n "$runs" ]; then
  limit=(-runs="$runs")
else
  limit=(-max_total_time="$seconds")
fi

mkdir -p "$work/logs"
results=()
failed=0
for target in "${targets[@]}"; do
  crate="${crate_of[$target]}"
  corpus="$work/corpus/$target"
  artifacts="$work/artifacts/$target"
  log="$work/logs/$target.log"
  mkdir -p "$corpus" "$artifacts"
  seeds="$repo/crates/$crate/fuzz/corpus/$target"
  if [ -d "$seeds" ]; then
    cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
  fi
  crashes_before=$(find "$artifacts" -type f | wc -l)
  echo "== $target (crates/$crate/fuzz) ${limit[*]}, log $log"
  start=$(date +%s)
  status=0
  # shellcheck disable=SC2086
  (cd "$repo/crates/$crate" && "${nice[@]}" cargo fuzz run "$target" "$corpus" -- \
    "${limit[@]}" -artifact_prefix="$artifacts/" -print_final_stats=1 ${FUZZ_ARGS:-}) >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  size=$(find "$corpus" -type f | wc -l)
  crashes=$(( $(find "$artifacts" -type f | wc -l) - crashes_before ))
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1 # failed without an artifact (a build error, an out-of-memory): the log says why
  fi
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "!! $target failed (exit $status); see $log and $artifacts/"
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5 || true
  fi
  results+=("$(printf '%-28s %12s %8s %8s %7s %7s %8s' "$target" "${done_runs:-?}" "$elapsed" "$size" \
    "${cov:-?}" "${ft:-?}" "$crashes")")
done

echo
printf '%-28s %12s %8s %8s %7s %7s %8s\n' target runs seconds corpus cov ft crashes
printf '%s\n' "${results[@]}"
echo "(corpus: files in $work/corpus/<target>; $(date -u +%Y-%m-%d))"
exit "$failed"
