#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/) for a bounded time each, on the stable toolchain, then folds
# what they found into the committed, minimized corpus (fuzz/corpus/TARGET). docs/fuzzing.md has the
# figures of the last run and what each target checks.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 240 s, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Stable has no sanitizers, so the targets are built
# with `-s none` (coverage instrumentation only; the code is safe Rust, so a bug shows as a panic).
# A crash stops its target; its input is in fuzz/artifacts/TARGET/ and goes to
# fuzz/regressions/TARGET/ once fixed, where the replay tests (tests/fuzz_replay.rs) keep it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-240}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +stable fuzz list)
fi
logs=${FUZZ_LOGS:-/tmp/roamtun-fuzz-logs}
mkdir -p "$logs"
nice cargo +stable fuzz build -s none -O
bin=target/x86_64-unknown-linux-gnu/release
for t in "${targets[@]}"; do
  mkdir -p "corpus-work/$t" "corpus/$t" "artifacts/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  [ -d "regressions/$t" ] && seeds+=("regressions/$t")
  # New inputs go to corpus-work (not committed); the committed corpus and the seeds only seed it.
  status=0
  nice "$bin/$t" -max_total_time="$secs" -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus-work/$t" "corpus/$t" "${seeds[@]}" \
    >"$logs/$t.log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' || echo "?")
  rate=$(grep -o 'exec/s: [0-9]*' "$logs/$t.log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$logs/$t.log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  crashes=$(find "artifacts/$t" -type f | wc -l)
  # Minimize: a smallest set of inputs that reaches every edge the run reached (set cover, hit
  # counts ignored, so that the committed corpus stays small) replaces the committed corpus. The
  # fuller working corpus stays in corpus-work/ for the next run.
  rm -rf "corpus-min/$t" && mkdir -p "corpus-min/$t"
  nice "$bin/$t" -set_cover_merge=1 -use_counters=0 -max_len=8192 "corpus-min/$t" "corpus/$t" "corpus-work/$t" \
    "${seeds[@]}" >>"$logs/$t.log" 2>&1
  rm -rf "corpus/$t" && mv "corpus-min/$t" "corpus/$t"
  echo "$t: ${secs} s, $runs executions, $rate exec/s, coverage $cov, corpus $(ls "corpus/$t" | wc -l) files, crashes $crashes (exit $status)"
done
