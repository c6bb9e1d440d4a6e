#!/bin/bash
# This round's measurements, in the order run (A = bench/ at 99d7c7b with the CPU report, B = at 6278047).
cd $(dirname $0)
PAIRS=8 ./ratios.sh validate-c64 validate --mix validate --concurrency 64 > validate-c64.txt
PAIRS=8 ./ab.sh ab-validate-c64 --mix validate --concurrency 64 > ab-validate-c64.txt
PAIRS=5 ./ratios.sh decision-c64 decision --mix validate --decision-only --concurrency 64 > decision-c64.txt
PAIRS=5 ./ab.sh ab-chain-sync-c64 --mix chain --durability sync --concurrency 64 > ab-chain-sync-c64.txt
