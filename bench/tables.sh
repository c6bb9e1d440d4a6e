#!/usr/bin/env bash
# Prints the writ-load results in bench/results/load/ as a Markdown table (one row per
# run, in the order given), with each Writ run's throughput as a fraction of the empty
# RPC run of the same setup and concurrency (see `base` below).
#   bash bench/tables.sh validate-c1 validate-c64 ...
#   RESULTS=issue15-9e1220e/load bash bench/tables.sh validate-c64 ...
set -euo pipefail
cd "$(dirname "$0")/results/${RESULTS:-load}"
echo "| run | mix | conc. | server | ops/s | p50 µs | p99 µs | p99.9 µs | vs empty RPC | load avg |"
echo "|---|---|---:|---|---:|---:|---:|---:|---:|---|"
for name in "$@"; do
  f="$name.json"
  [[ -f $f ]] || { echo "| $name | (missing) |"; continue; }
  # The floor of the same setup (validate-current-c64 → empty-current-c64), else of the
  # same concurrency or rate: NAME's last part (validate-hotoff-c64 → empty-c64).
  base=$(sed -E 's/-(sync|buffered)//; s/-depth[0-9]+//; s/-audit_[a-z]+//' <<< "empty-${name#*-}")
  [[ -f "$base.json" ]] || base="empty-${name##*-}"
  ratio="—"
  if [[ $name != empty-* && -f "$base.json" ]]; then
    ratio=$(jq -rn --slurpfile a "$f" --slurpfile b "$base.json" '($a[0].throughput_ops_s / $b[0].throughput_ops_s * 100 | floor | tostring) + " %"')
  fi
  jq -r --arg name "$name" --arg ratio "$ratio" '
    def r: (. * 10 | round / 10);
    "| \($name) | \(.args.mix)\(if .args.mix == "validate" or .args.mix == "revoke" then " d=\(.args.depth)" elif .args.mix == "chain" then " \(.args.durability) d=\(.args.depth)" else "" end) | \(.args.concurrency) | \(.server.runtime.flavor // "ext")\(if .server.runtime.workers then "×\(.server.runtime.workers)" else "" end)\(if .server.runtime.nodelay then ", nodelay" else "" end) | \(.throughput_ops_s | floor) | \(.latency.p50_us | r) | \(.latency.p99_us | r) | \(.latency.p999_us | r) | \($ratio) | \(.machine_before.loadavg) |"' "$f"
done
