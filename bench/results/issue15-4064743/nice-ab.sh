#!/bin/bash
# Alternated pairs: durable chain c=64 with the store's writer thread at nice 0 vs $1.
B=/work/targets/bench/release
N=${1:--10}; PAIRS=${2:-4}
for i in $(seq 1 $PAIRS); do
  for n in 0 $N; do
    $B/writ-load --mix chain --depth 1 --durability sync --concurrency 64 --duration 8 --warmup 2 > /tmp/nice-run.out 2>&1 &
    P=$!
    for t in $(seq 1 50); do
      T=$(for d in /proc/$P/task/*; do [ "$(cat $d/comm 2>/dev/null)" = "writ-store-writ" ] && basename $d; done | head -1)
      [ -n "$T" ] && break; sleep 0.1
    done
    [ "$n" != 0 ] && renice -n $n -p $T >/dev/null
    wait $P
    echo "pair $i nice $n: $(grep 'ops/s over' /tmp/nice-run.out) | $(grep downscope /tmp/nice-run.out | awk '{print $5,$6,$9,$10}')"
  done
done
