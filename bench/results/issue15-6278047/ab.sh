#!/bin/bash
# Alternated pairs of two builds: A/writ-load then B/writ-load, same args; throughput and
# CPU µs per op (server workers, client, whole process). usage: ab.sh OUTDIR ARGS...
OUT=$1; shift; mkdir -p $OUT
PAIRS=${PAIRS:-5}
for i in $(seq 1 $PAIRS); do
  for side in A B; do
    /work/targets/$side/writ-load "$@" --duration 8 --warmup 2 --out $OUT/$side-$i.json > $OUT/$side-$i.txt 2>&1
  done
  for side in A B; do
    t=$(grep -o '^[0-9]* ops/s' $OUT/$side-$i.txt | cut -d' ' -f1)
    c=$(grep 'CPU µs per op' $OUT/$side-$i.txt | sed 's/CPU µs per op: //')
    echo "pair $i $side: $t ops/s  cpu/op: $c"
  done
done
