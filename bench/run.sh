#!/usr/bin/env bash
# The whole benchmark harness of issue 4 in one command, from the repository root:
#
#   bash bench/run.sh            # everything, about 15 minutes after the first build
#   QUICK=1 bash bench/run.sh    # shorter runs, for checking the harness itself
#   REDIS=1 bash bench/run.sh    # issue 14 alone: the Redis Cluster backend (see below)
#   ISSUE15=1 bash bench/run.sh  # issue 15 alone: the hot tier A/B, the journey, the JWT check
#
# Builds bench/ (its own workspace: the main workspace is never built here) and
# bench/baselines/, runs the criterion benches, the writ-load sweeps and the growth
# measurements, and leaves JSON, logs and SVG charts in bench/results/.
# CARGO_TARGET_DIR defaults to ~/.cache/writ-bench-target: the first build compiles
# RocksDB's C++ (about 17 minutes on two cores), later ones reuse it.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/writ-bench-target}"
R=results

# A step of its own: build, and a results directory DIR with the machine's facts (and the
# commit) in DIR/machine.txt; any further arguments are a command whose output is added.
step_in() {
  local dir=$1; shift
  cargo build --release --bins
  BIN="$CARGO_TARGET_DIR/release"
  mkdir -p "$dir/load" "$dir/logs"
  { echo "nproc: $(nproc)"; grep -m1 'model name' /proc/cpuinfo; echo "loadavg: $(cat /proc/loadavg)"; date -u; \
    echo "commit: $(git rev-parse HEAD)"; if (($#)); then "$@"; fi; } | tee "$dir/machine.txt"
}

# One writ-load run: `load_in DIR NAME ARGS…` writes DIR/load/NAME.json and
# DIR/logs/NAME.log and appends the summary to DIR/load/summary.txt.
load_in() {
  local dir=$1 name=$2; shift 2
  echo "== writ-load $name: $*"
  "$BIN/writ-load" --duration "${DUR:-8}" --warmup "${WARM:-2}" \
    --out "$dir/load/$name.json" --label "$name" "$@" 2> "$dir/logs/$name.log" | tee -a "$dir/load/summary.txt"
}

# Issue 14's step, on its own: `REDIS=1 bash bench/run.sh` (needs redis-server and
# redis-cli: scripts/redis-cluster install). Starts a six-node Redis Cluster (three
# masters, three replicas) in a temporary directory on free ports, then back to back at
# concurrency 16 and 64: the empty-RPC floor, and Validate and Mint+Downscope on RocksDB
# (durability sync) and on the cluster through 1, 2 and 3 in-process Writ nodes (the
# connections spread over them); then memory per live token on the cluster
# (writ-growth redis-footprint). Results in $R14 (default results/issue14-<commit>);
# nothing else in results/ is touched. Every run uses 6 connections (2 per node at 3).
if [[ -n "${REDIS:-}" ]]; then
  R14="${R14:-$R/issue14-$(git rev-parse --short HEAD)}"
  step_in "$R14" redis-server --version
  CLUSTER_DIR="$(mktemp -d /tmp/writ-bench-redis.XXXXXX)"
  # The cluster's watchdog stops it (and removes its directory) when this script exits.
  ../scripts/redis-cluster start "$CLUSTER_DIR" --port 0 --owner $$ --clean > "$R14/logs/cluster.log"
  NODES="$(tail -1 "$CLUSTER_DIR/nodes")"
  trap '../scripts/redis-cluster stop "$CLUSTER_DIR" --clean || true' EXIT
  echo "cluster: $NODES"
  load14() { local name=$1; shift; load_in "$R14" "$name" --connections 6 "$@"; }
  : > "$R14/load/summary.txt"
  for c in ${CONCURRENCIES:-16 64}; do
    load14 "empty-c$c" --mix empty --concurrency "$c"
    for mix in validate chain; do
      load14 "$mix-rocksdb-c$c" --mix "$mix" --concurrency "$c" --durability sync
      for n in 1 2 3; do
        load14 "$mix-redis$n-c$c" --mix "$mix" --concurrency "$c" --backend redis --redis-nodes "$NODES" --nodes "$n"
      done
    done
  done
  bash tables-redis.sh "$R14/load" | tee "$R14/load/table.md"
  # Memory per live token: 100k then 1M tokens (roots and their children) in one namespace
  # (~900 tokens/s on two shared cores: the committed run used REDIS_SIZES=100000,300000,
  # on a cluster of its own, as the sweep leaves ~275k keys behind).
  "$BIN/writ-growth" redis-footprint --redis-nodes "$NODES" --cluster-dir "$CLUSTER_DIR" \
    --sizes "${REDIS_SIZES:-100000,1000000}" --out "$R14/redis-footprint.json" 2>&1 | tee "$R14/logs/redis-footprint.log"
  echo "done: results in bench/$R14"
  exit 0
fi

# Issue 15's step, on its own: `ISSUE15=1 bash bench/run.sh`. Back to back, each at
# c = 1, 16, 64 and 256: the empty-RPC floor, Validate with the hot tier off
# (--hot-tier-mib 0) and on (the default), then at c = 64 decision-only and without
# validation events, Mint+Downscope durable and buffered at c = 16 and 64, the four-hop
# journey (mint, three downscopes, a validate with the action at each hop; --depth 3),
# the floor and Validate open-loop at half the floor's rate at c = 64 (p99 at half of
# peak) and, at c = 1, the in-process EdDSA JWT verify-and-check timed in the same run
# (--jwt-baseline).
# Results in $R15 (default results/issue15-<commit>); `bash tables.sh` reads them with
# RESULTS=issue15-<commit>/load.
if [[ -n "${ISSUE15:-}" ]]; then
  R15="${R15:-$R/issue15-$(git rev-parse --short HEAD)}"
  step_in "$R15"
  load15() { load_in "$R15" "$@"; }
  : > "$R15/load/summary.txt"
  for c in ${CONCURRENCIES:-1 16 64 256}; do
    load15 "empty-c$c" --mix empty --concurrency "$c"
    load15 "validate-hotoff-c$c" --mix validate --concurrency "$c" --hot-tier-mib 0
    load15 "validate-c$c" --mix validate --concurrency "$c" $([[ $c == 1 ]] && echo --jwt-baseline)
  done
  load15 validate-decision_only-c64 --mix validate --concurrency 64 --decision-only
  load15 validate-audit_none-c64 --mix validate --concurrency 64 --audit-validations none
  for c in 16 64; do
    load15 "chain-sync-c$c" --mix chain --concurrency "$c" --durability sync
    load15 "chain-buffered-c$c" --mix chain --concurrency "$c" --durability buffered
  done
  load15 journey-sync-c16 --mix journey --depth 3 --concurrency 16 --durability sync
  # Open loop at half the floor's closed-loop rate at c=64: the floor, then Validate.
  for mix in empty validate; do
    load15 "$mix-half" --mix "$mix" --concurrency 256 --rate-from "$R15/load/empty-c64.json" --rate-fraction 0.5
  done
  (RESULTS="${R15#results/}/load" bash tables.sh empty-c1 validate-hotoff-c1 validate-c1 empty-c16 validate-hotoff-c16 validate-c16 \
    chain-sync-c16 chain-buffered-c16 empty-c64 validate-hotoff-c64 validate-c64 validate-decision_only-c64 validate-audit_none-c64 \
    chain-sync-c64 chain-buffered-c64 empty-c256 validate-hotoff-c256 validate-c256 empty-half validate-half) | tee "$R15/load/table.md"
  echo "done: results in bench/$R15"
  exit 0
fi

rm -rf "$R/load" "$R/logs"
mkdir -p "$R/load" "$R/logs"
DUR=${DUR:-8}
WARM=${WARM:-2}
SIZES=${SIZES:-10000,100000,1000000}  # the committed run used 10000,100000,1000000,3000000,10000000
if [[ -n "${QUICK:-}" ]]; then DUR=2; WARM=1; SIZES=10000,100000; CLEANUP_SIZES=10000,30000; fi

cargo build --release --bins
(cd baselines && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/baselines" cargo bench --no-run)
BIN="$CARGO_TARGET_DIR/release"

{ echo "nproc: $(nproc)"; grep -m1 'model name' /proc/cpuinfo; echo "loadavg: $(cat /proc/loadavg)"; date -u; } \
  | tee "$R/machine.txt"

load() { load_in "$R" "$@"; }
: > "$R/load/summary.txt"

# 1. Validate vs the empty RPC at the same concurrency (both servers set TCP_NODELAY, as
#    `writ_server::start` does), default multi-thread runtime, audit.validations = all.
for c in 1 16 64 256; do
  load "empty-c$c" --mix empty --concurrency "$c"
  load "validate-c$c" --mix validate --concurrency "$c"
done
# What recording every validation in the audit trail costs.
for a in actions none; do
  load "validate-audit_$a-c64" --mix validate --concurrency 64 --audit-validations "$a"
done
# The verdict without the token's context (ValidateRequest.decision_only).
load "validate-decision_only-c64" --mix validate --concurrency 64 --decision-only
# The server runtime: current-thread, and a one-worker multi-thread runtime.
for rt in "current --server-runtime current" "multi1 --server-workers 1"; do
  set -- $rt
  name=$1; shift
  load "empty-$name-c64" --mix empty --concurrency 64 "$@"
  load "validate-$name-c64" --mix validate --concurrency 64 "$@"
done
# p99 at half of the peak, open loop (latency from each request's scheduled start).
peak=$(for f in "$R"/load/validate-c*.json; do echo "$(jq -r .throughput_ops_s "$f") $f"; done | sort -g | tail -1 | cut -d' ' -f2)
load "validate-half-peak" --mix validate --concurrency 64 --rate-from "$peak" --rate-fraction 0.5
load "empty-at-validate-half-peak" --mix empty --concurrency 64 --rate-from "$peak" --rate-fraction 0.5
# Validate against chain depth over gRPC.
for d in 4 16 64; do
  load "validate-depth$d-c64" --mix validate --concurrency 64 --depth "$d" --tokens 200
done
# 2. Mint + Downscope chains, durable (fsync) and buffered.
for c in 1 16 64; do
  load "chain-sync-c$c" --mix chain --concurrency "$c" --durability sync
  load "chain-buffered-c$c" --mix chain --concurrency "$c" --durability buffered
done
# Validate while revoking 50 chains a second.
load "revoke-c64" --mix revoke --concurrency 64 --revoke-rate 50

"$BIN/writ-growth" plot-load --title "Validate vs empty RPC over gRPC (2 cores shared with the client)" \
  --svg "$R/load-validate.svg" "$R"/load/empty-c[0-9]*.json "$R"/load/validate-c[0-9]*.json \
  "$R"/load/empty-current-c*.json "$R"/load/validate-current-c*.json
"$BIN/writ-growth" plot-load --title "Mint+Downscope chains (RPC/s): fsync vs buffered" \
  --svg "$R/load-chain.svg" "$R"/load/chain-*-c*.json "$R"/load/empty-c[0-9]*.json

# 3. Micro-benchmarks (criterion) with the JWT and Biscuit baselines.
cargo bench --benches 2>&1 | grep -v '^\s*$' | tee "$R/criterion-bench.txt"
(cd baselines && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/baselines" cargo bench) 2>&1 | grep -v '^\s*$' \
  | tee "$R/criterion-baselines.txt"
bash criterion-summary.sh | tee "$R/criterion-summary.txt"

# 4. Growth: chain depth, stored tokens, disk, cleanup, claims, fan-out, footprint and startup.
FOOTPRINT_SIZES=${FOOTPRINT_SIZES:-100000,1000000}  # 10000000 adds 30-40 minutes (loading)
GROWTH_ITERS=${GROWTH_ITERS:-20000}
FANOUTS=${FANOUTS:-1,10,100,250,500,1000}
FANOUT_REPS=${FANOUT_REPS:-3}
if [[ -n "${QUICK:-}" ]]; then FOOTPRINT_SIZES=20000; GROWTH_ITERS=2000; FANOUTS=1,10,100; FANOUT_REPS=1; fi
"$BIN/writ-growth" depth --out "$R/depth.json" --svg "$R/depth.svg" 2>&1 | tee "$R/logs/depth.log"
"$BIN/writ-growth" tokens --sizes "$SIZES" --no-purge --out "$R/tokens.json" --svg "$R/tokens.svg" 2>&1 | tee "$R/logs/tokens.log"
# Cleanup on fresh stores (purging 1M tokens in one go takes many minutes: see BENCHMARKS.md).
"$BIN/writ-growth" cleanup --sizes "${CLEANUP_SIZES:-10000,30000,100000,200000}" --out "$R/cleanup.json" --svg "$R/cleanup.svg" 2>&1 | tee "$R/logs/cleanup.log"
# Validate against the number of claims on the token (1 to the limit of 32).
"$BIN/writ-growth" claims --iters "$GROWTH_ITERS" --out "$R/claims.json" --svg "$R/claims.svg" 2>&1 | tee "$R/logs/claims.log"
# Downscope against the tokens already in the transaction (siblings vs spread over 32 parents).
"$BIN/writ-growth" fanout --fanouts "$FANOUTS" --reps "$FANOUT_REPS" --out "$R/fanout.json" --svg "$R/fanout.svg" 2>&1 | tee "$R/logs/fanout.log"
# Memory, disk and startup (a server process on the loaded data directory) against live tokens.
"$BIN/writ-growth" footprint --sizes "$FOOTPRINT_SIZES" --out "$R/footprint.json" --svg "$R/footprint.svg" 2>&1 | tee "$R/logs/footprint.log"
echo "done: results in bench/$R"
