#!/usr/bin/env bash
#! Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30), one after another, on the
#! seed corpus in fuzz/corpus/TARGET plus what earlier runs found (kept outside the clone), and
#! prints each target's executions and the total. Fails on the first crash (libFuzzer leaves the
#! input under fuzz/artifacts/TARGET/). Needs ops/install-toolchain.sh (nightly, cargo-fuzz).
# Usage: ops/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
case "$seconds" in ''|*[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;; esac
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is missing: run ops/install-toolchain.sh" >&2; exit 1; }
# Built once per machine, like the main build (sanitizer none: cordon is safe Rust; what a fuzz
# run looks for is a panic, an abort or a hang).
target_dir=/root/.cache/cordon-fuzz-target
found=/root/.cache/cordon-fuzz-corpus
cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer none --target-dir "$target_dir" >/dev/null
total=0
printf '%-18s %12s %10s\n' target executions seconds
for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
  mkdir -p "$found/$target"
  log=$(mktemp)
  if ! cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none --target-dir "$target_dir" "$target" \
      "$found/$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rm -f "$log"
  printf '%-18s %12s %10s\n' "$target" "${runs:-0}" "$seconds"
  total=$((total + ${runs:-0}))
done
printf '%-18s %12s\n' total "$total"
