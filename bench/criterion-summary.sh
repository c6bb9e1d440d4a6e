#!/usr/bin/env bash
# Prints every criterion estimate of the last `cargo bench` runs of bench/ and
# bench/baselines/ (mean and median, µs), from criterion's estimates.json files.
set -euo pipefail
T="${CARGO_TARGET_DIR:-$HOME/.cache/writ-bench-target}"
for d in "$T"/criterion/*/*/ "$T"/baselines/criterion/*/*/; do
  f="$d/new/estimates.json"
  [[ -f $f ]] || continue
  name=$(sed -E "s|^$T/||; s|^baselines/||; s|^criterion/||; s|/$||" <<< "$d")
  printf "%-48s mean %10.3f µs   median %10.3f µs\n" "$name" \
    "$(jq '.mean.point_estimate/1000' "$f")" "$(jq '.median.point_estimate/1000' "$f")"
done
