#!/bin/bash
# Alternated pairs against the floor: the empty RPC then NAME's run (ARGS), PAIRS times, with
# one build ($BIN, default B). usage: ratios.sh OUTDIR NAME ARGS...
OUT=$1; NAME=$2; shift 2; mkdir -p $OUT
BIN=${BIN:-/work/targets/B/writ-load}; PAIRS=${PAIRS:-5}
c=$(echo "$@" | grep -o -- '--concurrency [0-9]*' | cut -d' ' -f2)
for i in $(seq 1 $PAIRS); do
  $BIN --mix empty --concurrency $c --duration 8 --warmup 2 --out $OUT/empty-$i.json > $OUT/empty-$i.txt 2>&1
  $BIN "$@" --duration 8 --warmup 2 --out $OUT/$NAME-$i.json > $OUT/$NAME-$i.txt 2>&1
  e=$(grep -o '^[0-9]* ops/s' $OUT/empty-$i.txt | cut -d' ' -f1); v=$(grep -o '^[0-9]* ops/s' $OUT/$NAME-$i.txt | cut -d' ' -f1)
  echo "pair $i: empty $e $NAME $v ratio $(echo "scale=3; $v/$e" | bc)  | empty $(grep 'CPU µs' $OUT/empty-$i.txt | sed 's/CPU µs per op: //') | $NAME $(grep 'CPU µs' $OUT/$NAME-$i.txt | sed 's/CPU µs per op: //')"
done
