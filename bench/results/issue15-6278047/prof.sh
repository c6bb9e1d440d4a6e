#!/bin/bash
# Profile one writ-load run (dwarf call graphs, 3 s in the measured window) and write perf script text.
# usage: prof.sh BIN OUT ARGS...
BIN=$1; OUT=$2; shift 2
$BIN "$@" --duration 10 --warmup 2 > $OUT.txt 2>&1 &
PID=$!
sleep 5
perf record -e cpu-clock -F 1000 --call-graph dwarf,16384 -p $PID -o $OUT.data -- sleep 3 > /dev/null 2>&1
wait
perf script -i $OUT.data -F comm,ip,sym,dso 2>/dev/null > $OUT.script
rm -f $OUT.data
