#!/usr/bin/env bash
# Prints issue 14's writ-load results (run.sh's REDIS=1 step) as a Markdown table: for
# each concurrency, the empty-RPC floor, then Validate and Mint+Downscope on RocksDB and
# on the Redis Cluster through 1, 2 and 3 Writ nodes, each as a fraction of the floor and
# of RocksDB at the same concurrency. Chain rows count Mint and Downscope calls alike
# (RPC/s) and give each one's p50 and p99.
#   bash bench/tables-redis.sh bench/results/issue14-<commit>/load
set -euo pipefail
cd "$1"
concurrencies=$(ls empty-c*.json | sed -E 's/empty-c([0-9]+)\.json/\1/' | sort -n)
echo "| run | conc. | backend | Writ nodes | RPC/s | vs empty RPC | vs RocksDB | p50 µs | p99 µs | Mint p50 / p99 µs | Downscope p50 / p99 µs | errors | load avg |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|"
for c in $concurrencies; do
  for name in "empty-c$c" validate-{rocksdb,redis1,redis2,redis3}-c$c chain-{rocksdb,redis1,redis2,redis3}-c$c; do
    f="$name.json"
    [[ -f $f ]] || { echo "| $name | (missing) |"; continue; }
    rocks="${name%%-*}-rocksdb-c$c.json"; [[ $name == empty-* ]] && rocks="$f"
    jq -r --arg name "$name" --slurpfile e "empty-c$c.json" --slurpfile r "$rocks" '
      def r: (. * 10 | round / 10);
      def pct(b): if b == null then "—" else (. / b * 100 | round | tostring) + " %" end;
      def op(k): if .per_op[k] then "\(.per_op[k].latency.p50_us | r) / \(.per_op[k].latency.p99_us | r)" else "—" end;
      "| \($name) | \(.args.concurrency) | \(if .args.mix == "empty" then "—" else .server.backend end) | \(if .args.mix == "empty" then "—" else (.server.urls | length | tostring) end) | \(.throughput_ops_s | floor) | \(if .args.mix == "empty" then "—" else (.throughput_ops_s | pct($e[0].throughput_ops_s)) end) | \(if .args.mix == "empty" or .server.backend == "rocksdb" then "—" else (.throughput_ops_s | pct($r[0].throughput_ops_s)) end) | \(.latency.p50_us | r) | \(.latency.p99_us | r) | \(op("mint")) | \(op("downscope")) | \(.errors) | \(.machine_before.loadavg) |"' "$f" 2>/dev/null \
      || jq -r --arg name "$name" '"| \($name) | \(.args.concurrency) | — | — | \(.throughput_ops_s | floor) | — | — | \(.latency.p50_us) | \(.latency.p99_us) | — | — | \(.errors) | \(.machine_before.loadavg) |"' "$f"
  done
done
