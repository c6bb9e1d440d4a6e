#!/usr/bin/env bash
# Floor and Validate with the server on its own core, driven by h2load (apt-get install nghttp2-client).
# Run from bench/ after `cargo build --release --bins`. Results and logs go to /tmp/bb/.
mkdir -p /tmp/bb
# usage: h2load-rate.sh NAME MIX RPS_PER_CONN [writ-load server args...]: open-loop-ish rate, p50/p99 from h2load's per-request log
B=${CARGO_TARGET_DIR:-$HOME/.cache/writ-bench-target}/release
name=$1; mix=$2; rps=$3; shift 3
taskset -c 0 $B/writ-load --mix $mix --tokens 10 --serve-only /tmp/bb/$name.bin "$@" > /tmp/bb/$name.srv 2>/tmp/bb/$name.srv.err &
pid=$!
for i in $(seq 50); do grep -q ^body /tmp/bb/$name.srv 2>/dev/null && break; sleep 0.2; done
url=$(grep ^url /tmp/bb/$name.srv | cut -d' ' -f2); caller=$(grep ^caller /tmp/bb/$name.srv | cut -d' ' -f2)
taskset -c 1 h2load -c ${CONNS:-4} -m ${STREAMS:-16} --rps $rps -D 10 --warm-up-time 2 --log-file /tmp/bb/$name.reqlog -H 'content-type: application/grpc' -H 'te: trailers' -H "x-writ-caller: $caller" -d /tmp/bb/$name.bin $url > /tmp/bb/$name.h2 2>&1
kill -INT $pid; wait $pid 2>/dev/null
python3 - /tmp/bb/$name.reqlog $name <<'PY'
import sys
d=sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
q=lambda p: d[min(len(d)-1,int(p*len(d)))]
print(f"{sys.argv[2]:<20} n={len(d)} rate={len(d)/10:.0f}/s p50={q(.5)}us p99={q(.99)}us p99.9={q(.999)}us max={d[-1]}us")
PY
