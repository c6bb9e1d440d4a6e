#!/bin/bash
# Alternated pairs: run A then run B, PAIRS times; name and extra args given.
# usage: pairs.sh NAME_A "ARGS_A" NAME_B "ARGS_B"
B=/work/targets/bench/release; OUT=/work/main/bench/results/issue15-4064743/ratios
PAIRS=${PAIRS:-5}
for i in $(seq 1 $PAIRS); do
  for side in A B; do
    if [ $side = A ]; then n=$1; a=$2; else n=$3; a=$4; fi
    $B/writ-load $a --duration 8 --warmup 2 --out $OUT/$n-$i.json > $OUT/$n-$i.txt 2>&1
  done
  x=$(grep -o '^[0-9]* ops/s' $OUT/$1-$i.txt | cut -d' ' -f1); y=$(grep -o '^[0-9]* ops/s' $OUT/$3-$i.txt | cut -d' ' -f1)
  echo "pair $i: $1 $x $3 $y ratio $(echo "scale=3; $y/$x" | bc)"
done
