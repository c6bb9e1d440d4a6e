#!/bin/bash
# Alternated pairs: the empty RPC then Validate (full answer, action check, audit on), at each concurrency.
B=/work/targets/bench/release; OUT=/work/main/bench/results/issue15-4064743/ratios
PAIRS=${PAIRS:-5}
for c in $@; do
  for i in $(seq 1 $PAIRS); do
    for m in empty validate; do
      $B/writ-load --mix $m --concurrency $c --duration 8 --warmup 2 --out $OUT/$m-c$c-$i.json > $OUT/$m-c$c-$i.txt 2>&1
    done
    e=$(grep -o '^[0-9]* ops/s' $OUT/empty-c$c-$i.txt | cut -d' ' -f1); v=$(grep -o '^[0-9]* ops/s' $OUT/validate-c$c-$i.txt | cut -d' ' -f1)
    echo "c=$c pair $i: empty $e validate $v ratio $(echo "scale=3; $v/$e" | bc)"
  done
done
